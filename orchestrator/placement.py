"""Pack segments onto GPUs under MIG placement rules (first-fit decreasing, exact per-GPU layout).

A segment of shape ``s`` occupies memory slices ``[start, start + s.mem_slices)`` and must start
at one of ``s.starts``; segments on one GPU must not overlap and their compute sizes must sum to
at most ``gpu.slices``. Whether a multiset of sizes fits on one GPU is decided exactly by a small
backtracking search over a bitmask of the GPU's memory slices, so a GPU's segments are re-arranged
whenever that lets one more segment in.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InfeasibleError
from .gpus import GpuType, MigShape

_Layouts = dict[tuple[int, ...], tuple[int, ...] | None]


@dataclass(frozen=True)
class PlacedSegment:
    """One segment placed on a GPU: ``start`` is its memory-slice offset."""

    label: str
    size: int
    gpu: int
    start: int
    shape: str


@dataclass(frozen=True)
class Placement:
    """Segments packed onto ``gpus_used`` GPUs; ``free_slices`` are the compute slices left unused
    on those GPUs and ``fragmentation`` is that as a fraction of their slices."""

    gpu_type: str
    segments: tuple[PlacedSegment, ...]
    gpus_used: int
    slices_used: int
    free_slices: int
    fragmentation: float

    def to_json(self) -> dict:
        """A JSON-ready dict, with the segments grouped per GPU in start order."""
        gpus: list[list[dict]] = [[] for _ in range(self.gpus_used)]
        for seg in sorted(self.segments, key=lambda s: (s.gpu, s.start)):
            gpus[seg.gpu].append({"label": seg.label, "size": seg.size, "start": seg.start,
                                  "shape": seg.shape})
        return {"gpu_type": self.gpu_type, "gpus_used": self.gpus_used,
                "slices_used": self.slices_used, "free_slices": self.free_slices,
                "fragmentation": self.fragmentation, "gpus": gpus}


def _longest_free_run(mask: int, width: int) -> int:
    best = run = 0
    for bit in range(width):
        run = 0 if mask >> bit & 1 else run + 1
        best = max(best, run)
    return best


def _search(shapes: list[MigShape], mask: int, width: int) -> list[int] | None:
    """Starts for ``shapes`` (in order) on a GPU whose occupied memory slices are ``mask``."""
    if not shapes:
        return []
    shape, rest = shapes[0], shapes[1:]
    span = (1 << shape.mem_slices) - 1
    options = []
    for start in shape.starts:
        bits = span << start
        if start + shape.mem_slices <= width and not mask & bits:
            # Prefer starts that leave the largest contiguous free region, then the lowest start.
            options.append((-_longest_free_run(mask | bits, width), start, bits))
    for _, start, bits in sorted(options):
        tail = _search(rest, mask | bits, width)
        if tail is not None:
            return [start, *tail]
    return None


def _layout(sizes: tuple[int, ...], gpu: GpuType, cache: _Layouts) -> tuple[int, ...] | None:
    """Starts for segments of ``sizes`` (largest first) on one empty GPU, or None if they don't fit."""
    if sizes not in cache:
        starts = None
        if sum(sizes) <= gpu.slices:
            starts = _search([gpu.shapes[s] for s in sizes], 0, gpu.mem_slices)
        cache[sizes] = None if starts is None else tuple(starts)
    return cache[sizes]


def fits_on_one_gpu(sizes: Sequence[int], gpu: GpuType) -> bool:
    """Whether segments of these sizes can all be placed on one GPU of type ``gpu``."""
    for size in sizes:
        gpu.shape(size)
    return _layout(tuple(sorted(sizes, reverse=True)), gpu, {}) is not None


def place(segments: Sequence[tuple[str, int]], gpu: GpuType,
          max_gpus: int | None = None) -> Placement:
    """Pack ``(label, size)`` segments onto as few GPUs as first-fit decreasing finds.

    Raises InputError for a size ``gpu`` has no shape for, and InfeasibleError (binding
    "placement") when more than ``max_gpus`` GPUs are needed. The result is deterministic.
    """
    for _, size in segments:
        gpu.shape(size)
    order = sorted(range(len(segments)), key=lambda i: (-segments[i][1], i))
    cache: _Layouts = {}
    bins: list[list[int]] = []        # segment indices per GPU, largest size first
    bin_sizes: list[tuple[int, ...]] = []
    first_open = 0                    # GPUs before this one cannot take the current size
    current = None
    for i in order:
        size = segments[i][1]
        if size != current:
            current, first_open = size, 0
        # A GPU that rejects a size keeps rejecting it, so the scan resumes where it stopped.
        while first_open < len(bins) and _layout(bin_sizes[first_open] + (size,), gpu, cache) is None:
            first_open += 1
        if first_open == len(bins):
            bins.append([])
            bin_sizes.append(())
        bins[first_open].append(i)
        bin_sizes[first_open] += (size,)
    if max_gpus is not None and len(bins) > max_gpus:
        raise InfeasibleError(
            f"segments need {len(bins)} {gpu.name} GPUs but max_gpus is {max_gpus}",
            binding="placement")
    placed = []
    for g, (members, sizes) in enumerate(zip(bins, bin_sizes)):
        starts = _layout(sizes, gpu, cache)
        assert starts is not None
        for i, start in sorted(zip(members, starts), key=lambda m: m[1]):
            label, size = segments[i]
            placed.append(PlacedSegment(label=label, size=size, gpu=g, start=start,
                                        shape=gpu.shapes[size].name))
    slices_used = sum(size for _, size in segments)
    capacity = len(bins) * gpu.slices
    free = capacity - slices_used
    return Placement(gpu_type=gpu.name, segments=tuple(placed), gpus_used=len(bins),
                     slices_used=slices_used, free_slices=free,
                     fragmentation=free / capacity if capacity else 0.0)
