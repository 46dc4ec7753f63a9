"""Tests for jigsawserve.orchestrator.spec.profiles (CSV loading, coverage, default GPU, screening a profiler's rows) and
jigsawserve.orchestrator.spec.gpus lookups."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from jigsawserve.orchestrator.spec.appspec import parse_app
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import CATALOGUE, gpu_type
from jigsawserve.orchestrator.spec.profiles import (COLUMNS, ProfilePoint, Profiles, Sample, Screen, check_coverage, default_gpu,
                                   load_profiles, screened, suspects)

ROOT = Path(__file__).resolve().parents[1]
A100_CSV = ROOT / "examples" / "a100" / "profiles.csv"
HEADER = ",".join(COLUMNS)


def write_csv(path: Path, *lines: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def one_task_app(*variants: str, profile: dict[str, str] | None = None):
    profile = profile or {}
    vs = {v: ({"accuracy": 0.5 + 0.1 * i, "profile": profile[v]} if v in profile else {"accuracy": 0.5 + 0.1 * i})
          for i, v in enumerate(variants)}
    return parse_app({"name": "cov", "latency_slo_ms": 100, "accuracy_slo": 0.9,
                      "tasks": {"scene": {"variants": vs}}})


# ---------------------------------------------------------------- the shipped A100 profiles

@pytest.fixture(scope="module")
def a100() -> Profiles:
    return load_profiles(A100_CSV)


def test_shipped_a100_profiles_skip_rows_that_did_not_run(a100: Profiles) -> None:
    with A100_CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    runnable = [r for r in rows if float(r["latency_ms"]) > 0 and float(r["throughput_rps"]) > 0]
    assert 0 < len(runnable) < len(rows)  # the file does record some out-of-memory configurations
    assert len(a100.points) == len(runnable)
    assert all(p.latency_ms > 0 and p.throughput_rps > 0 for p in a100.points)
    assert a100.gpus() == ["a100-80gb"]
    assert {p.variant for p in a100.points} == {r["variant"] for r in runnable}


def test_shipped_a100_profile_point_values(a100: Profiles) -> None:
    with A100_CSV.open(newline="") as fh:
        first = next(r for r in csv.DictReader(fh) if float(r["latency_ms"]) > 0)
    rows = [p for p in a100.for_variant(first["variant"], "a100-80gb")
            if (p.mig, p.mps, p.batch) == (int(first["mig"]), int(first["mps"]), int(first["batch"]))]
    assert len(rows) == 1
    p = rows[0]
    assert isinstance(p, ProfilePoint)
    assert (p.latency_ms, p.throughput_rps) == (float(first["latency_ms"]), float(first["throughput_rps"]))
    assert p.memory_mb is None
    assert isinstance(p.mig, int) and isinstance(p.batch, int)


def test_for_variant_filters_by_variant_and_gpu(a100: Profiles) -> None:
    rows = a100.for_variant("resnet50", "a100-80gb")
    assert rows and all(p.variant == "resnet50" and p.gpu == "a100-80gb" for p in rows)
    assert {p.mig for p in rows} <= set(gpu_type("a100-80gb").shapes)
    assert a100.for_variant("resnet50", "h100-80gb") == []
    assert a100.for_variant("no-such-model", "a100-80gb") == []


def test_shipped_profiles_cover_the_tagging_example(a100: Profiles) -> None:
    from jigsawserve.orchestrator.spec.appspec import load_app
    check_coverage(load_app(ROOT / "examples" / "tagging.yaml"), a100, gpu_type("a100-80gb"))


# ---------------------------------------------------------------- CSV parsing

def test_load_directory_of_csvs(tmp_path: Path) -> None:
    write_csv(tmp_path / "one.csv", "m1,a100-80gb,1,1,1,5,100", "m1,a100-80gb,7,1,8,9,900")
    write_csv(tmp_path / "two.csv", "m2,a100-80gb,2,1,4,7,300", "m2,a100-80gb,3,1,4,0,0")
    (tmp_path / "notes.txt").write_text("not a profile\n")
    prof = load_profiles(tmp_path)
    assert len(prof.points) == 3
    assert {p.variant for p in prof.points} == {"m1", "m2"}
    assert len(prof.for_variant("m1", "a100-80gb")) == 2
    assert load_profiles(str(tmp_path)).points == prof.points  # str paths work too


def test_directory_without_csvs(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(InputError, match=r"no \*\.csv"):
        load_profiles(tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such profile"):
        load_profiles(tmp_path / "missing.csv")


def test_only_zero_rows_is_an_error(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "oom.csv", "m,a100-80gb,1,1,1,0,0", "m,a100-80gb,1,1,2,0.0,0.0")
    with pytest.raises(InputError, match="no runnable"):
        load_profiles(p)


def test_zero_latency_or_zero_throughput_alone_skips_the_row(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "p.csv", "m,a100-80gb,1,1,1,0,50", "m,a100-80gb,1,1,2,10,0",
                  "m,a100-80gb,1,1,4,10,50")
    assert [pt.batch for pt in load_profiles(p).points] == [4]


@pytest.mark.parametrize("column", ["throughput_rps", "mig", "variant"])
def test_missing_column_is_named(tmp_path: Path, column: str) -> None:
    cols = [c for c in COLUMNS if c != column]
    p = tmp_path / "p.csv"
    p.write_text(",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n")
    with pytest.raises(InputError) as info:
        load_profiles(p)
    msg = str(info.value)
    assert "missing column" in msg and column in msg
    assert str(p) in msg


def test_bad_number_names_file_line_and_column(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "p.csv", "m,a100-80gb,1,1,1,5,100", "m,a100-80gb,1,1,2,fast,100")
    with pytest.raises(InputError) as info:
        load_profiles(p)
    msg = str(info.value)
    assert f"{p}:3" in msg  # header is line 1, the bad row is line 3
    assert "latency_ms" in msg and "fast" in msg


@pytest.mark.parametrize("row, column", [
    ("m,a100-80gb,1,1,1.5,5,100", "batch"),         # non-integer batch
    ("m,a100-80gb,0,1,1,5,100", "mig"),             # segment size < 1
    ("m,a100-80gb,1,0,1,5,100", "mps"),             # no processes
    ("m,a100-80gb,1,1,1,-5,100", "latency_ms"),     # negative latency
    ("m,a100-80gb,1,1,1,5,inf", "throughput_rps"),  # non-finite throughput
    ("m,a100-80gb,1,1,,5,100", "batch"),            # empty cell
])
def test_bad_values_name_the_column(tmp_path: Path, row: str, column: str) -> None:
    p = write_csv(tmp_path / "p.csv", row)
    with pytest.raises(InputError) as info:
        load_profiles(p)
    msg = str(info.value)
    assert f"{p}:2" in msg and repr(column) in msg, msg


def test_empty_variant_or_gpu(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "p.csv", ",a100-80gb,1,1,1,5,100")
    with pytest.raises(InputError, match="variant"):
        load_profiles(p)


def test_gpu_names_are_lowercased(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "p.csv", "m, A100-80GB ,1,1,1,5,100")
    assert load_profiles(p).gpus() == ["a100-80gb"]


def test_optional_memory_column(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "p.csv", "m,a100-80gb,1,1,1,5,100,2048", "m,a100-80gb,1,1,2,8,150,",
                  header=HEADER + ",memory_mb")
    by_batch = {pt.batch: pt for pt in load_profiles(p).points}
    assert by_batch[1].memory_mb == 2048.0
    assert by_batch[2].memory_mb is None


def test_bad_memory_value(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "p.csv", "m,a100-80gb,1,1,1,5,100,lots", header=HEADER + ",memory_mb")
    with pytest.raises(InputError, match="memory_mb"):
        load_profiles(p)


def test_columns_in_any_order(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text("throughput_rps,latency_ms,batch,mps,mig,gpu,variant\n100,5,4,2,3,a100-80gb,m\n")
    (pt,) = load_profiles(p).points
    assert (pt.variant, pt.gpu, pt.mig, pt.mps, pt.batch, pt.latency_ms, pt.throughput_rps) == \
        ("m", "a100-80gb", 3, 2, 4, 5.0, 100.0)


# ---------------------------------------------------------------- coverage and GPU selection

def test_check_coverage_passes_with_profile_alias(a100: Profiles) -> None:
    app = one_task_app("fast", "slow", profile={"fast": "resnet50", "slow": "resnet152"})
    check_coverage(app, a100, gpu_type("a100-80gb"))


def test_check_coverage_names_the_uncovered_variant(a100: Profiles) -> None:
    app = one_task_app("resnet50", "resnet9000")
    with pytest.raises(InputError) as info:
        check_coverage(app, a100, gpu_type("a100-80gb"))
    msg = str(info.value)
    assert "tasks.scene.variants.resnet9000" in msg
    assert "a100-80gb" in msg


def test_check_coverage_on_another_gpu_mentions_which_gpus_it_has(a100: Profiles) -> None:
    app = one_task_app("resnet50")
    with pytest.raises(InputError) as info:
        check_coverage(app, a100, gpu_type("h100-80gb"))
    msg = str(info.value)
    assert "tasks.scene.variants.resnet50" in msg
    assert "h100-80gb" in msg
    assert "has rows for a100-80gb" in msg


def test_check_coverage_rejects_segment_sizes_the_gpu_lacks(tmp_path: Path) -> None:
    prof = load_profiles(write_csv(tmp_path / "p.csv", "m,a100-80gb,5,1,1,5,100"))
    with pytest.raises(InputError, match="5 slices"):
        check_coverage(one_task_app("m"), prof, gpu_type("a100-80gb"))


def test_default_gpu_single_type(a100: Profiles) -> None:
    assert default_gpu(a100) == "a100-80gb"


def test_default_gpu_several_types(tmp_path: Path) -> None:
    prof = load_profiles(write_csv(tmp_path / "p.csv", "m,a100-80gb,1,1,1,5,100", "m,h100-80gb,1,1,1,4,120"))
    assert prof.gpus() == ["a100-80gb", "h100-80gb"]
    with pytest.raises(InputError) as info:
        default_gpu(prof)
    msg = str(info.value)
    assert "a100-80gb" in msg and "h100-80gb" in msg and "--gpu-type" in msg


def test_gpu_type_lookup() -> None:
    a100 = gpu_type("a100-80gb")
    assert a100.name == "a100-80gb" and a100.mig and a100.slices == 7
    assert gpu_type("A100-80GB") is a100  # case-insensitive
    assert sorted(a100.shapes) == [1, 2, 3, 4, 7]
    assert a100.whole.size == 7
    assert gpu_type("l4-24gb").slices == 1 and not gpu_type("l4-24gb").mig


def test_gpu_type_unknown() -> None:
    with pytest.raises(InputError) as info:
        gpu_type("nope")
    msg = str(info.value)
    assert "'nope'" in msg
    for known in CATALOGUE:
        assert known in msg


def test_gpu_shape_unknown_size() -> None:
    with pytest.raises(InputError) as info:
        gpu_type("a100-80gb").shape(5)
    assert "5 slices" in str(info.value) and "[1, 2, 3, 4, 7]" in str(info.value)


@pytest.mark.parametrize("app", ["social", "traffic", "ar"])
def test_shipped_h200_profile_plans_every_h200_app(app: str) -> None:
    """examples/h200/profiles.csv covers every variant of the H200 apps (the AR app's TTS included),
    and each app has a plan on one H200 at a modest demand."""
    from jigsawserve.orchestrator.spec.appspec import load_app
    from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
    spec = load_app(ROOT / "examples" / "h200" / f"{app}.yaml")
    profiles = load_profiles(ROOT / "examples" / "h200" / "profiles.csv")
    check_coverage(spec, profiles, gpu_type("h200-141gb"))
    plan = make_plan(spec, profiles, gpu_type("h200-141gb"), 50.0, PlanOptions(gpus=1))
    assert {e.task for e in plan.entries} == {t.name for t in spec.tasks}


# ---------------------------------------------------------------- screening a profiler's rows

class FakeBench:
    """A measurement function: per batch, the samples it returns in turn (the last one from then on), and
    how often each batch was measured."""

    def __init__(self, **per_batch: list[Sample]) -> None:
        self.queued = {int(k[1:]): list(v) for k, v in per_batch.items()}
        self.calls: dict[int, int] = {}

    def __call__(self, batch: int) -> Sample:
        self.calls[batch] = self.calls.get(batch, 0) + 1
        queue = self.queued[batch]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def calm(ms: float) -> Sample:
    return Sample(ms, ms * 0.9)


def test_a_noisy_outlier_is_measured_again_and_replaced_without_a_warning() -> None:
    """The case seen on a busy 2-core machine: 127.9 ms at batch 1 against 34.4 ms at batch 2."""
    bench = FakeBench(b1=[calm(127.9), calm(30.0)], b2=[calm(34.4)], b4=[calm(40.0)])
    warnings: list[str] = []
    rows = screened([1, 2, 4], bench, "det_large 1g x1", warnings.append)
    assert {b: s.p95_ms for b, s in rows.items()} == {1: 30.0, 2: 34.4, 4: 40.0}
    assert bench.calls == {1: 2, 2: 2, 4: 1}     # both rows of the falling pair again, once: then all is well
    assert warnings == []


def test_rows_that_stay_non_monotone_get_a_warning_naming_variant_segment_batch_and_numbers() -> None:
    bench = FakeBench(b1=[calm(127.9)], b2=[calm(34.4)], b4=[calm(40.0)])
    warnings: list[str] = []
    rows = screened([1, 2, 4], bench, "det_large 1g x1", warnings.append, Screen(retries=2))
    assert bench.calls == {1: 3, 2: 3, 4: 1}     # bounded: two more measurements, then it gives up
    assert rows[1].p95_ms == 127.9
    assert len(warnings) == 1
    line = warnings[0]
    assert line.startswith("det_large 1g x1: latency falls from 127.9 ms at batch 1 to 34.4 ms at batch 2")
    assert "batch 1 measured 3x, p95 127.9, 127.9, 127.9 ms" in line and "batch 2 measured 3x, p95 34.4" in line


def test_a_throughput_collapse_and_a_wide_spread_are_suspects_an_even_profile_is_not() -> None:
    even = {1: calm(10.0), 2: calm(11.0), 4: calm(13.0), 8: calm(20.0), 16: calm(45.0)}
    assert suspects(even) == []   # throughput falls 10%, from 8 to 16: a larger batch may cost more per item
    collapsed = {**even, 16: calm(90.0)}        # 400/s at batch 8, 178/s at batch 16
    assert [rows for rows, _ in suspects(collapsed)] == [(8, 16)]
    spread = {**even, 2: Sample(35.0, 11.0)}    # p95 over 3x its median; and 35 > 13 at batch 4
    found = dict(suspects(spread))
    assert "3.2x its median" in found[(2,)] and "latency falls from 35.0 ms" in found[(2, 4)]


def test_no_retries_measures_once_and_still_warns() -> None:
    bench = FakeBench(b1=[calm(50.0)], b2=[calm(10.0)])
    warnings: list[str] = []
    screened([1, 2], bench, "v cpu", warnings.append, Screen(retries=0))
    assert bench.calls == {1: 1, 2: 1} and len(warnings) == 1
