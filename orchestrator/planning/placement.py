"""Pack segments onto GPUs under MIG placement rules (first-fit decreasing, exact per-GPU layout).

A segment of shape ``s`` occupies memory slices ``[start, start + s.mem_slices)`` and must start
at one of ``s.starts``; segments on one GPU must not overlap and their compute sizes must sum to
at most ``gpu.slices``. Whether a multiset of sizes fits on one GPU is decided exactly by a small
backtracking search over a bitmask of the GPU's memory slices, so a GPU's segments are re-arranged
whenever that lets one more segment in.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InfeasibleError
from ..spec.gpus import GpuType, MigShape

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
    """Pack ``(label, size)`` segments onto as few GPUs as first-fit decreasing finds; where that takes more
    than ``max_gpus``, by the GPUs' maximal patterns (``pack_by_patterns``, exact).

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
        bins = pack_by_patterns([size for _, size in segments], gpu, max_gpus) or bins
    if max_gpus is not None and len(bins) > max_gpus:
        raise InfeasibleError(
            f"segments need {len(bins)} {gpu.name} GPUs but max_gpus is {max_gpus}",
            binding="placement")
    return _placement(segments, bins, gpu, cache)


def _placement(segments: Sequence[tuple[str, int]], bins: list[list[int]], gpu: GpuType,
               cache: _Layouts) -> Placement:
    placed = []
    for g, members in enumerate(bins):
        members = sorted(members, key=lambda i: (-segments[i][1], i))
        starts = _layout(tuple(segments[i][1] for i in members), gpu, cache)
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


def patterns(gpu: GpuType) -> tuple[tuple[int, ...], ...]:
    """Every maximal multiset of segment sizes (largest first) that one GPU holds: any GPU's segments are
    a subset of one of them, so covering each size's count with whole patterns is exactly a placement."""
    if gpu.name not in _PATTERNS:
        _PATTERNS[gpu.name] = _maximal_patterns(gpu)
    return _PATTERNS[gpu.name]


_PATTERNS: dict[str, tuple[tuple[int, ...], ...]] = {}


def _maximal_patterns(gpu: GpuType) -> tuple[tuple[int, ...], ...]:
    sizes = sorted(gpu.shapes, reverse=True)
    found: list[tuple[int, ...]] = []

    def grow(i: int, cur: tuple[int, ...]) -> None:
        if i == len(sizes):
            if cur and _layout(cur, gpu, {}) is not None:
                found.append(cur)
            return
        more = cur
        while sum(more) <= gpu.slices:
            grow(i + 1, more)
            more = more + (sizes[i],)
    grow(0, ())
    counts = [Counter(p) for p in found]
    return tuple(p for p, c in zip(found, counts)
                 if not any(d != c and all(d[s] >= c[s] for s in c) for d in counts))


def pack_by_patterns(sizes: Sequence[int], gpu: GpuType, gpus: int) -> list[list[int]] | None:
    """Segments (by index) on at most ``gpus`` GPUs, each GPU a maximal pattern's subset: how many GPUs take
    each pattern is a small integer program (exact); None when no such packing exists. First-fit
    decreasing is not exact: it can take more GPUs than a plan whose MIG layout fits needs."""
    from .formulation import Lin, Model  # the formulation imports this module
    pats = patterns(gpu)
    need = Counter(sizes)
    m = Model()
    P = m.cols(len(pats), 0.0, float(gpus), integer=True)
    m.add(Lin.dot(P, [1.0] * len(P)), hi=gpus)
    for size, n in need.items():
        m.add(Lin.dot(P, [p.count(size) for p in pats]), lo=n)
    status, values, _ = m.solve(-Lin.dot(P, [1.0] * len(P)), 10.0, {}, None)
    if values is None:
        return None
    queue = {size: [i for i, s in enumerate(sizes) if s == size] for size in need}
    bins = []
    for k, p in enumerate(pats):
        for _ in range(int(round(values[P[k]]))):
            members = [queue[s].pop() for s in p if queue.get(s)]
            if members:
                bins.append(members)
    return bins if not any(queue.values()) else None
