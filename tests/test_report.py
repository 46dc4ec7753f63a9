"""Tests for orchestrator/reporting/report.py and ``jigsaw report`` on small synthetic run directories with real plans."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import ROOT, tiny_app, tiny_profiles

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.cli import main
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.reporting.report import REQUEST_COLUMNS, figures, format_summary, load_run, outcomes_per_bin, plot, summarize

PNGS = ["demand.png", "violations.png", "slices.png", "placement.png"]
# (scheduled_s, latency_ms, outcome): 6 ok, 1 late, 2 dropped, 1 error
REQUESTS = [(0.0, 10, "ok"), (1.0, 20, "ok"), (2.0, 30, "ok"), (3.0, 40, "ok"), (4.0, 50, "ok"),
            (5.0, 60, "ok"), (6.0, 300, "late"), (7.0, None, "dropped"), (8.0, 5, "dropped"),
            (9.0, None, "error")]
# cumulative items; the counter of cls_small resets between the 2nd and 3rd scrape
SCRAPES = [(5.0, {"det/det_large": 100, "cls/cls_small": 50, "cls/cls_large": 300, "cap/cap_large": 100}),
           (20.0, {"det/det_large": 600, "cls/cls_small": 2050, "cls/cls_large": 800, "cap/cap_large": 600}),
           (40.0, {"det/det_large": 1100, "cls/cls_small": 1000, "cls/cls_large": 1300, "cap/cap_large": 1100})]


@pytest.fixture(scope="module")
def plans() -> dict:
    """Real CPU-example plans: all large variants at 100 req/s; cls partly small at 600 req/s on 5 devices."""
    app = load_app(ROOT / "examples" / "cpu" / "app.yaml")
    profiles = load_profiles(ROOT / "examples" / "cpu" / "profiles.csv")
    low = make_plan(app, profiles, gpu_type("cpu"), 100, PlanOptions())
    high = make_plan(app, profiles, gpu_type("cpu"), 600, PlanOptions(gpus=5))
    assert {t: set(r) for t, r in low.routing.items()} == {
        "det": {"det_large"}, "cls": {"cls_large"}, "cap": {"cap_large"}}
    assert {t: set(r) for t, r in high.routing.items()} == {
        "det": {"det_large"}, "cls": {"cls_small", "cls_large"}, "cap": {"cap_large"}}
    return {"low": low.to_json(), "high": high.to_json()}


def write_run(path: Path, requests: list, events: list[dict], info: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_COLUMNS)
        for i, (sched, lat, outcome) in enumerate(requests):
            w.writerow([i, sched, sched + 0.001, "" if lat is None else lat, outcome, 3,
                        "boom, failed" if outcome == "error" else ""])
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if info is not None:
        (path / "run.json").write_text(json.dumps(info))
    return path


def events(plans: dict, scrapes: list = SCRAPES) -> list[dict]:
    out = [{"kind": "plan", "t": 0.0, "plan": plans["low"], "demand_rps": 100, "capacity_rps": 130.0,
            "reason": "initial"},
           {"kind": "plan", "t": 10.0, "plan": plans["high"], "demand_rps": 600, "capacity_rps": None,
            "reason": "forecast above capacity"},
           {"kind": "log", "t": 12.0, "text": "ignored"}]
    out += [{"kind": "interval", "t": float(t), "demand_rps": 100.0 + 50 * t, "forecast_rps": 120.0 + 50 * t}
            for t in (10, 20, 30, 40)]
    out += [{"kind": "metrics", "t": t, "variant_items": items} for t, items in scrapes]
    return out


INFO = {"app": "cpudemo", "slo_ms": 250, "device": "cpu", "emulated_mig": True, "system": "A+S+T", "notes": "t"}


@pytest.fixture
def run_dir(tmp_path: Path, plans: dict) -> Path:
    return write_run(tmp_path / "run", REQUESTS, events(plans), INFO)


def test_summary_numbers(run_dir: Path) -> None:
    s = summarize(run_dir)
    assert json.loads((run_dir / "summary.json").read_text()) == s
    assert s["requests"] == {"total": 10, "ok": 6, "late": 1, "dropped": 2, "error": 1}
    assert s["slo_violation_rate"] == pytest.approx(0.4)  # drops count as violations
    assert s["duration_s"] == 40.0  # the last event; the last request completes at 9.001 s
    assert s["goodput_rps"] == pytest.approx(6 / 40)
    # answered = ok + late: 10, 20, 30, 40, 50, 60, 300 ms (linear interpolation)
    assert s["latency_ms"] == {"answered": 7, "p50": pytest.approx(40.0), "p95": pytest.approx(60 + 0.7 * 240),
                               "p99": pytest.approx(60 + 0.94 * 240)}
    assert s["slices"]["timeline"] == [[0.0, 3], [10.0, 5]]
    assert s["slices"]["max"] == 5
    assert s["slices"]["mean"] == pytest.approx((3 * 10 + 5 * 30) / 40)
    assert s["initial_plan"]["reason"] == "initial" and s["initial_plan"]["capacity_rps"] == 130.0
    assert s["plan_changes"]["count"] == 1
    assert [(c["t"], c["reason"], c["capacity_rps"]) for c in s["plan_changes"]["changes"]] == [
        (10.0, "forecast above capacity", None)]
    assert s["run"] == INFO
    assert s["warnings"] == []
    # per tenth of the run (no trace duration in run.json: up to the last event, 40 s): 0-4, 4-8, 8-12 s, ...
    assert s["windows"]["edges_s"][:4] == [0.0, 4.0, 8.0, 12.0]
    assert s["windows"]["requests"] == [4, 4, 2] + [0] * 7
    assert s["windows"]["violations_pct"] == [0.0, 50.0, 100.0] + [0.0] * 7


def test_server_view_from_the_last_stage_counters(tmp_path: Path, plans: dict) -> None:
    evs = events(plans)
    assert summarize(write_run(tmp_path / "old", REQUESTS, evs, INFO))["server"] is None  # runs before 48029ac
    stages = {"requests": {"det": 9, "cls": 7, "cap": 7}, "drops": {"det": 2, "cls": 0, "cap": 1},
              "misses": {"det": 0, "cls": 1, "cap": 2}}
    evs[-2]["stages"] = {"requests": {"det": 1}, "drops": {}, "misses": {}}
    evs[-1]["stages"] = stages
    evs[-1]["graph"] = {"requests": 8.0, "queue_us": 4000.0, "batches": 5.0}
    server = summarize(write_run(tmp_path / "new", REQUESTS, evs, INFO))["server"]
    assert server["t"] == 40.0 and server["sinks"] == ["cls", "cap"] and server["graph_queue_ms_mean"] == 0.5
    assert server["sink_misses"] == 3 and server["drops"] == 3
    assert server["stages"]["det"] == {"requests": 9, "drops": 2, "misses": 0}
    evs[-1]["stages"] = {"misses": {"cls": "many"}}
    with pytest.raises(InputError, match=r"events.jsonl line 10: stages.misses.cls: expected a number"):
        summarize(write_run(tmp_path / "bad", REQUESTS, evs, INFO))


W_CLS, W_CAP = 0.9 * 0.8 / (0.9 * 0.8 + 0.9 * 0.75), 0.9 * 0.75 / (0.9 * 0.8 + 0.9 * 0.75)


def test_accuracy_from_variant_items(run_dir: Path) -> None:
    acc = summarize(run_dir)["accuracy"]
    assert acc["source"] == "variant_items"
    # cls: 2000 + 1000 (after the reset) small, 1000 large; cls_small is 0.7/0.8 of the best
    cls = 0.75 * (0.7 / 0.8) + 0.25 * 1.0
    assert acc["tasks"] == {"det": pytest.approx(1.0), "cls": pytest.approx(cls), "cap": pytest.approx(1.0)}
    assert acc["variant_shares"]["cls"] == {"cls_small": pytest.approx(0.75), "cls_large": pytest.approx(0.25)}
    # paths det -> cls and det -> cap weigh one half each, times their best raw products (the paper's mean)
    assert acc["pipeline"] == pytest.approx(W_CLS * cls + W_CAP)
    assert acc["max"] == pytest.approx(1.0)
    assert acc["ratio_to_max"] == pytest.approx(W_CLS * cls + W_CAP)
    assert acc["slo"] == 0.9


@pytest.mark.parametrize("scrapes", [[], SCRAPES[:1]], ids=["no-metrics", "one-metrics-event"])
def test_accuracy_from_routing_shares(tmp_path: Path, plans: dict, scrapes: list) -> None:
    s = summarize(write_run(tmp_path / "run", REQUESTS, events(plans, scrapes)))
    acc = s["accuracy"]
    assert acc["source"] == "plan_routing" and "time-weighted" in acc["note"]
    routed = plans["high"]["routing"]["cls"]
    small = 30 / 40 * routed["cls_small"] / (routed["cls_small"] + routed["cls_large"])  # low plan: all large
    cls = small * (0.7 / 0.8) + (1 - small)
    assert acc["variant_shares"]["cls"]["cls_small"] == pytest.approx(small)
    assert acc["pipeline"] == pytest.approx(W_CLS * cls + W_CAP)
    assert s["run"] == dict.fromkeys(INFO)  # no run.json


def test_plots_written(run_dir: Path) -> None:
    paths = plot(run_dir)
    assert [p.name for p in paths] == PNGS
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_titles_say_mig_emulated(run_dir: Path) -> None:
    figs = figures(load_run(run_dir))
    assert sorted(figs) == sorted(PNGS)
    assert all("MIG emulated" in f.get_suptitle() for f in figs.values())
    placement = figs["placement.png"].axes
    assert len(placement) == 2  # the first and the last plan
    assert [t.get_text() for t in placement[1].get_yticklabels()] == [f"CPU slice {i} (1/1)" for i in range(5)]


def test_mig_placement(tmp_path: Path) -> None:
    plan = make_plan(tiny_app(), tiny_profiles(), gpu_type("a100-80gb"), 2000, PlanOptions()).to_json()
    run = write_run(tmp_path / "run", [], [{"kind": "plan", "t": 0, "plan": plan, "demand_rps": 2000,
                                            "capacity_rps": 2500, "reason": "initial"}])
    ax = figures(load_run(run))["placement.png"].axes[0]
    labels = [t.get_text() for t in ax.texts]
    segments = [seg for gpu in plan["placement"]["gpus"] for seg in gpu]
    assert len(labels) == len(segments) and all(x.endswith("p") and x.split()[-1][:-1].isdigit() for x in labels)
    assert ax.get_xlim() == (0, 8)  # A100 memory slices
    assert len(ax.patches) == len(segments)
    assert plot(run)[-1].stat().st_size > 1000


def test_empty_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [], [])
    s = summarize(run)
    assert s["requests"]["total"] == 0 and s["slo_violation_rate"] is None and s["goodput_rps"] is None
    assert s["windows"] is None
    assert s["latency_ms"]["p99"] is None and s["slices"]["mean"] is None
    assert s["accuracy"]["source"] is None and "no plan" in s["accuracy"]["note"]
    assert s["plan_changes"] == {"count": 0, "changes": [], "applies": {"mean_s": None, "max_s": None},
                                 "during_applies": None}
    assert s["initial_plan"] is None
    assert all(p.stat().st_size > 0 for p in plot(run))


def test_truncated_last_lines_are_skipped(run_dir: Path) -> None:
    with (run_dir / "events.jsonl").open("a") as f:
        f.write('{"kind": "interval", "t": 50, "dem')
    with (run_dir / "requests.csv").open("a") as f:
        f.write("99,9.5,9.5,12")
    s = summarize(run_dir)
    assert s["requests"]["total"] == 10 and s["duration_s"] == 40.0
    assert [w.split(" line ")[0].rsplit("/", 1)[-1] for w in s["warnings"]] == ["requests.csv", "events.jsonl"]


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "requests.csv").unlink(), r"requests.csv: missing"),
    (lambda d: _edit(d / "requests.csv", "latency_ms,", "latency,"), r"requests.csv line 1: expected the header"),
    (lambda d: _edit(d / "requests.csv", ",late,", ",slow,"), r"requests.csv line 8: outcome: expected one of"),
    (lambda d: _edit(d / "requests.csv", ",10,ok,", ",,ok,"), r"requests.csv line 2: latency_ms: required"),
    (lambda d: _edit(d / "requests.csv", "\n1,1.0,", "\n1,soon,"), r"requests.csv line 3: scheduled_s: expected a number"),
    (lambda d: _edit(d / "events.jsonl", '"kind": "log"', '"kind": log'), r"events.jsonl line 3: invalid JSON"),
    (lambda d: _edit(d / "events.jsonl", '"routing"', '"routes"'), r"events.jsonl line 1: plan JSON: missing or bad"),
    (lambda d: _edit(d / "events.jsonl", '"capacity_rps": 130.0', '"capacity_rps": "lots"'),
     r"events.jsonl line 1: capacity_rps: expected a number or null"),
    (lambda d: _edit(d / "events.jsonl", '"t": 20.0, "demand_rps"', '"t": "x", "demand_rps"'),
     r"events.jsonl line 5: t: expected a number"),
    (lambda d: _edit(d / "events.jsonl", '"cls/cls_large": 300', '"cls/cls_huge": 300'),
     r"events.jsonl line 8: variant_items.cls/cls_huge: not a <task>/<variant>"),
    (lambda d: _edit(d / "run.json", '"emulated_mig": true', '"emulated_mig": "yes"'),
     r"run.json: emulated_mig: expected bool"),
])
def test_bad_input_names_file_and_field(run_dir: Path, damage, message: str) -> None:
    damage(run_dir)
    with pytest.raises(InputError, match=message):
        summarize(run_dir)


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a run directory"):
        summarize(tmp_path / "nope")


def test_cli_report(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == json.loads((run_dir / "summary.json").read_text())
    text = "\n".join(out[:-1])
    assert "2 dropped" in text and "SLO violations 40.00%" in text and "MIG emulated" in text
    assert all((run_dir / p).stat().st_size > 0 for p in PNGS)


def test_cli_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 1
    assert "requests.csv: missing" in capsys.readouterr().err


def test_outcomes_per_bin_and_archived_requests(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import gzip
    rows = outcomes_per_bin(run_dir, 4.0)
    assert [(r["start_s"], r["requests"], r["ok"], r["late"], r["dropped"], r["error"]) for r in rows] == [
        (0.0, 4, 4, 0, 0, 0), (4.0, 4, 2, 1, 1, 0), (8.0, 2, 0, 0, 1, 1)]
    assert [r["plans"] for r in rows] == [[], [], ["forecast above capacity"]]
    # an archived run keeps requests.csv gzipped: the same report
    csv_path = run_dir / "requests.csv"
    (run_dir / "requests.csv.gz").write_bytes(gzip.compress(csv_path.read_bytes()))
    csv_path.unlink()
    assert main(["report", str(run_dir), "--bins", "4"]) == 0
    out = capsys.readouterr().out
    assert "forecast above capacity" in out and "2 dropped" in out
    # ... or xz-compressed
    import lzma
    archived = run_dir / "requests.csv.gz"
    (run_dir / "requests.csv.xz").write_bytes(lzma.compress(gzip.decompress(archived.read_bytes())))
    archived.unlink()
    assert outcomes_per_bin(run_dir, 4.0) == rows
    with pytest.raises(InputError, match="--bins"):
        outcomes_per_bin(run_dir, 0)


def test_outcomes_per_bin_with_host_samples(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run with host.csv (orchestrator/reporting/hostload.py): each bin also has the mean host CPU busy % and GPU
    utilization % of the samples in it; a bin without samples has none; a bad cell names its line."""
    (run_dir / "host.csv").write_text("t_s,cpu_busy_pct,gpu0_util_pct,gpu0_mem_mib,gpu1_util_pct,gpu1_mem_mib\n"
                                      "1.0,20.0,10,500,30,500\n3.0,40.0,30,500,50,500\n5.0,,90,500,70,500\n")
    rows = outcomes_per_bin(run_dir, 4.0)
    assert [(r["cpu_pct"], r["gpu_pct"]) for r in rows] == [(30.0, 30.0), (None, 80.0), (None, None)]
    assert main(["report", str(run_dir), "--bins", "4"]) == 0
    out = capsys.readouterr().out
    assert "  cpu %   gpu %" in out and "   30.0    30.0" in out
    (run_dir / "host.csv").write_text("t_s,cpu_busy_pct\n1.0,busy\n")
    with pytest.raises(InputError, match="host.csv line 2: cpu_busy_pct"):
        outcomes_per_bin(run_dir, 4.0)


def test_host_sampler_writes_cpu_busy_share(tmp_path: Path) -> None:
    """The sampler's rows: time from the origin, the host's CPU busy % (Linux /proc/stat)."""
    import time

    from jigsawserve.orchestrator.reporting.hostload import HostSampler, cpu_times
    assert cpu_times(tmp_path / "missing") is None
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 100 0 50 800 50 0 0 0 0 0\n")
    assert cpu_times(stat) == (150, 1000)
    with HostSampler(tmp_path / "host.csv", time.time(), period_s=0.05) as sampler:
        time.sleep(0.3)
    lines = (tmp_path / "host.csv").read_text().splitlines()
    assert lines[0].startswith("t_s,cpu_busy_pct") and len(lines) - 1 == sampler.rows >= 3
    t, cpu = zip(*((float(x) for x in line.split(",")[:2]) for line in lines[1:]))
    assert list(t) == sorted(t) and 0.0 < t[0] < 0.3 and all(0.0 <= c <= 100.0 for c in cpu)


def test_host_sampler_reads_only_its_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run sharing its machine samples only its GPUs (NVML's indices), in columns named by index."""
    import sys
    import time
    from types import SimpleNamespace

    from jigsawserve.orchestrator.reporting.hostload import HostSampler
    fake = SimpleNamespace(NVMLError=RuntimeError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                           nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
                           nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=10 * (h + 1)),
                           nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=(h + 1) * 2**30))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with HostSampler(tmp_path / "host.csv", time.time(), period_s=0.05, gpus=[1]):
        time.sleep(0.2)
    header, first = (tmp_path / "host.csv").read_text().splitlines()[:2]
    assert header == "t_s,cpu_busy_pct,gpu1_util_pct,gpu1_mem_mib" and first.endswith(",20,2048")


def test_apply_times_are_summarized(tmp_path: Path, plans: dict) -> None:
    evs = events(plans)
    evs[1]["apply_s"] = 12.5
    evs.append({"kind": "plan", "t": 30.0, "plan": plans["low"], "demand_rps": 100, "capacity_rps": 130.0,
                "reason": "forecast down", "apply_s": 7.5})
    s = summarize(write_run(tmp_path / "run", REQUESTS, evs, INFO))
    assert [c["apply_s"] for c in s["plan_changes"]["changes"]] == [12.5, 7.5]
    assert s["plan_changes"]["applies"] == {"mean_s": 10.0, "max_s": 12.5}


def test_violations_during_applies_are_counted(tmp_path: Path, plans: dict) -> None:
    """The requests scheduled from t - apply_s to t of a plan change (6-10 s here: the late one at 6 s,
    both drops, and the error) against the rest."""
    evs = events(plans)
    evs[1]["apply_s"] = 4.0
    s = summarize(write_run(tmp_path / "run", REQUESTS, evs, INFO))
    assert s["plan_changes"]["during_applies"] == {"seconds": 4.0, "requests": 4, "late": 1, "dropped": 2}
    assert ("during applies (4.0 s in all): 4 requests scheduled, 1 of the 1 late answers and 2 of the 2 drops"
            in format_summary(s))
    assert summarize(write_run(tmp_path / "older", REQUESTS, events(plans), INFO))["plan_changes"]["during_applies"] is None
