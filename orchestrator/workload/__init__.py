"""Demand and clients: traces, the load generator, the typed client."""
