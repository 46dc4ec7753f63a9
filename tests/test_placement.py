"""Tests for jigsawserve.orchestrator.planning.placement: MIG fit rules, first-fit decreasing packing, validity."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from jigsawserve.orchestrator.errors import InfeasibleError, InputError
from jigsawserve.orchestrator.spec.gpus import GpuType, gpu_type
from jigsawserve.orchestrator.planning.placement import Placement, PlacedSegment, fits_on_one_gpu, place

MIG_TYPES = ["a100-80gb", "h100-80gb", "h200-141gb"]


def segs(*sizes: int) -> list[tuple[str, int]]:
    return [(f"s{i}/{size}g", size) for i, size in enumerate(sizes)]


def assert_valid(p: Placement, segments: list[tuple[str, int]], gpu: GpuType) -> None:
    """Every segment placed once, at an allowed start, without overlap or compute overflow."""
    assert Counter((s.label, s.size) for s in p.segments) == Counter(segments)
    assert {s.gpu for s in p.segments} == set(range(p.gpus_used))
    for g in range(p.gpus_used):
        on_gpu = [s for s in p.segments if s.gpu == g]
        assert sum(s.size for s in on_gpu) <= gpu.slices
        used = 0
        for s in on_gpu:
            shape = gpu.shapes[s.size]
            assert s.shape == shape.name
            assert s.start in shape.starts
            assert s.start + shape.mem_slices <= gpu.mem_slices
            bits = ((1 << shape.mem_slices) - 1) << s.start
            assert not used & bits, f"overlap on gpu {g}: {on_gpu}"
            used |= bits
    assert p.slices_used == sum(size for _, size in segments)
    assert p.free_slices == p.gpus_used * gpu.slices - p.slices_used
    if p.gpus_used:
        assert p.fragmentation == pytest.approx(p.free_slices / (p.gpus_used * gpu.slices))


@pytest.mark.parametrize("name", MIG_TYPES)
@pytest.mark.parametrize("sizes, fits", [
    ([1] * 7, True),
    ([1] * 8, False),
    ([3, 3], True),
    ([4, 3], True),
    ([4, 2, 1], True),
    ([3, 3, 1], False),
    ([2, 2, 2, 1], True),
    ([3, 2, 1, 1], True),     # needs 3g at 4 and 2g, 1g, 1g in slices 0..3
    ([4, 3, 1], False),
    ([4, 3, 2], False),
    ([4, 3, 3], False),
    ([4, 4], False),
    ([7], True),
    ([7, 1], False),
    ([], True),
])
def test_fit_facts(name: str, sizes: list[int], fits: bool) -> None:
    gpu = gpu_type(name)
    assert fits_on_one_gpu(sizes, gpu) is fits
    assert fits_on_one_gpu(list(reversed(sizes)), gpu) is fits


def test_two_g_layout_uses_allowed_starts() -> None:
    gpu = gpu_type("a100-80gb")
    p = place(segs(1, 2, 2, 2), gpu)
    assert p.gpus_used == 1
    assert sorted((s.size, s.start) for s in p.segments) == [(1, 6), (2, 0), (2, 2), (2, 4)]


def test_rearranges_to_fit() -> None:
    gpu = gpu_type("h100-80gb")
    segments = segs(3, 2, 1, 1)
    p = place(segments, gpu)
    assert p.gpus_used == 1 and p.free_slices == 0
    assert next(s.start for s in p.segments if s.size == 3) == 4
    assert_valid(p, segments, gpu)


@pytest.mark.parametrize("sizes, gpus", [
    ([1] * 14, 2),
    ([1] * 15, 3),
    ([3] * 4, 2),
    ([3, 3, 3, 1], 2),          # 3g+3g leaves no room for the 1g: {3,3} {3,1}
    ([3, 3, 1], 2),
    ([4, 4, 3, 3], 2),          # {4,3} {4,3}
    ([4, 2, 1, 4, 2, 1], 2),
    ([2] * 6 + [1] * 2, 2),     # {2,2,2,1} x2
    ([7, 7, 1], 3),
    ([4] * 3, 3),
    ([], 0),
])
def test_fewest_gpus(sizes: list[int], gpus: int) -> None:
    gpu = gpu_type("h200-141gb")
    segments = segs(*sizes)
    p = place(segments, gpu)
    assert p.gpus_used == gpus
    assert_valid(p, segments, gpu)


def test_fragmentation_numbers() -> None:
    gpu = gpu_type("a100-80gb")
    p = place(segs(3, 3, 3, 1), gpu)
    assert (p.gpus_used, p.slices_used, p.free_slices) == (2, 10, 4)
    assert p.fragmentation == pytest.approx(4 / 14)
    full = place(segs(4, 3, 4, 2, 1), gpu)
    assert (full.gpus_used, full.free_slices, full.fragmentation) == (2, 0, 0.0)
    empty = place([], gpu)
    assert (empty.gpus_used, empty.slices_used, empty.free_slices, empty.fragmentation) == (0, 0, 0, 0.0)


def test_max_gpus() -> None:
    gpu = gpu_type("a100-80gb")
    assert place(segs(*[3] * 4), gpu, max_gpus=2).gpus_used == 2
    with pytest.raises(InfeasibleError) as err:
        place(segs(*[3] * 5), gpu, max_gpus=2)
    assert err.value.binding == "placement"
    assert "3" in str(err.value) and "max_gpus is 2" in str(err.value)


@pytest.mark.parametrize("name, size", [("a100-80gb", 5), ("h100-80gb", 6), ("l4-24gb", 2)])
def test_unknown_size(name: str, size: int) -> None:
    gpu = gpu_type(name)
    with pytest.raises(InputError, match=str(size)):
        place(segs(1, size), gpu)
    with pytest.raises(InputError, match=str(size)):
        fits_on_one_gpu([size], gpu)


def test_non_mig_one_segment_per_gpu() -> None:
    gpu = gpu_type("l4-24gb")
    segments = segs(1, 1, 1)
    p = place(segments, gpu)
    assert p.gpus_used == 3 and p.free_slices == 0 and p.fragmentation == 0.0
    assert [(s.label, s.gpu, s.start, s.shape) for s in p.segments] == [
        ("s0/1g", 0, 0, "whole"), ("s1/1g", 1, 0, "whole"), ("s2/1g", 2, 0, "whole")]
    assert fits_on_one_gpu([1], gpu) and not fits_on_one_gpu([1, 1], gpu)
    assert_valid(p, segments, gpu)


def test_to_json() -> None:
    gpu = gpu_type("a100-80gb")
    p = place([("det/r50/3g/mps2/b8#1", 3), ("a", 4), ("b", 1)], gpu)
    assert p.to_json() == {
        "gpu_type": "a100-80gb", "gpus_used": 2, "slices_used": 8, "free_slices": 6,
        "fragmentation": pytest.approx(6 / 14),
        "gpus": [
            [{"label": "a", "size": 4, "start": 0, "shape": "4g.40gb"},
             {"label": "det/r50/3g/mps2/b8#1", "size": 3, "start": 4, "shape": "3g.40gb"}],
            [{"label": "b", "size": 1, "start": 0, "shape": "1g.10gb"}],
        ],
    }
    assert p.segments[0] == PlacedSegment("a", 4, 0, 0, "4g.40gb")


@pytest.mark.parametrize("name", MIG_TYPES)
def test_random_placements_valid(name: str) -> None:
    gpu = gpu_type(name)
    rng = random.Random(1234)
    for _ in range(300):
        sizes = [rng.choice([1, 1, 1, 2, 2, 3, 4, 7]) for _ in range(rng.randint(0, 40))]
        segments = segs(*sizes)
        rng.shuffle(segments)
        p = place(segments, gpu)
        assert_valid(p, segments, gpu)
        assert p.gpus_used >= math.ceil(sum(sizes) / gpu.slices)
        assert p == place(list(segments), gpu)  # deterministic
        for g in range(p.gpus_used):
            assert fits_on_one_gpu([s.size for s in p.segments if s.gpu == g], gpu)


def test_900_segments_all_valid() -> None:
    gpu = gpu_type("h200-141gb")
    rng = random.Random(7)
    segments = segs(*[rng.choice([1, 1, 1, 2, 2, 3, 4]) for _ in range(900)])
    assert_valid(place(segments, gpu), segments, gpu)
