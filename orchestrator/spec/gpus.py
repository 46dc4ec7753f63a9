"""GPU catalogue: each GPU type's segment shapes (MIG sizes), their cost in slices and placement rules.

MIG placement follows NVIDIA's published GPU-instance placements (``nvidia-smi mig -lgipp``) for
the A100/H100/H200 family: 8 memory slices, and each profile may start only at the listed
memory-slice offsets and covers ``mem_slices`` consecutive slices. A GPU without MIG has a single
"whole" shape of one slice.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class MigShape:
    """One segment shape of a GPU type: ``size`` compute slices (the planner's cost unit)."""

    size: int
    name: str
    sms: int
    memory_gb: float
    mem_slices: int
    starts: tuple[int, ...]


@dataclass(frozen=True)
class GpuType:
    """A GPU model: its segment shapes keyed by size; ``slices`` is the size of the whole GPU."""

    name: str
    mig: bool
    slices: int
    mem_slices: int
    shapes: dict[int, MigShape]

    @property
    def whole(self) -> MigShape:
        """The shape that covers the whole GPU."""
        return self.shapes[self.slices]

    def shape(self, size: int) -> MigShape:
        """The shape of ``size`` slices, or an InputError naming the valid sizes."""
        try:
            return self.shapes[size]
        except KeyError:
            raise InputError(
                f"gpu type {self.name!r} has no segment of {size} slices "
                f"(valid: {sorted(self.shapes)})") from None


def _mig_gpu(name: str, sms: dict[int, int], mem: dict[int, float]) -> GpuType:
    layout = {1: (1, (0, 1, 2, 3, 4, 5, 6)), 2: (2, (0, 2, 4)), 3: (4, (0, 4)), 4: (4, (0,)), 7: (8, (0,))}
    shapes = {
        g: MigShape(size=g, name=f"{g}g.{int(round(mem[g]))}gb", sms=sms[g], memory_gb=mem[g],
                    mem_slices=span, starts=starts)
        for g, (span, starts) in layout.items()
    }
    return GpuType(name=name, mig=True, slices=7, mem_slices=8, shapes=shapes)


def _whole_gpu(name: str, sms: int, memory_gb: float) -> GpuType:
    shape = MigShape(size=1, name="whole", sms=sms, memory_gb=memory_gb, mem_slices=1, starts=(0,))
    return GpuType(name=name, mig=False, slices=1, mem_slices=1, shapes={1: shape})


CATALOGUE: dict[str, GpuType] = {
    "a100-80gb": _mig_gpu("a100-80gb", {1: 14, 2: 28, 3: 42, 4: 56, 7: 98},
                          {1: 10, 2: 20, 3: 40, 4: 40, 7: 80}),
    "h100-80gb": _mig_gpu("h100-80gb", {1: 16, 2: 32, 3: 60, 4: 64, 7: 132},
                          {1: 10, 2: 20, 3: 40, 4: 40, 7: 80}),
    "h200-141gb": _mig_gpu("h200-141gb", {1: 16, 2: 32, 3: 60, 4: 64, 7: 132},
                           {1: 18, 2: 35, 3: 71, 4: 71, 7: 141}),
    "l4-24gb": _whole_gpu("l4-24gb", 58, 24),
    "cpu": _whole_gpu("cpu", 0, 0),
}


def gpu_type(name: str) -> GpuType:
    """Look up a GPU type by name (case-insensitive)."""
    try:
        return CATALOGUE[name.lower()]
    except KeyError:
        raise InputError(f"unknown gpu type {name!r} (known: {', '.join(sorted(CATALOGUE))})") from None
