"""Errors raised for bad input and for plans that cannot meet their SLOs."""


class InputError(ValueError):
    """Bad user input (app spec, profiles, options). The message names the field or line."""


class InfeasibleError(RuntimeError):
    """No plan meets the SLOs; ``binding`` names the constraint that cannot be met."""

    def __init__(self, message: str, binding: str = "") -> None:
        super().__init__(message)
        self.binding = binding


class UnreachableError(ConnectionError):
    """A server endpoint (gRPC address, metrics URL) that nothing answers at. The message names it."""
