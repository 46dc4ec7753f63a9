"""End-to-end closed loop on a real tritonserver (CPU app): demand steps up, the controller replans
and applies the new plan while the load generator keeps sending, and no request fails.

``jigsawserve.orchestrator.loop.experiment.run`` starts tritonserver inside an ExitStack (``TritonServer`` stops it
through its process group on exit, also when the run raises), replays the trace with
orchestrator/workload/loadgen.py and runs the controller in a thread; the report is written into the run dir.

Drops (a stage gave up on a request it could not finish before its deadline) and late answers are
SLO matters on a shared 2-core machine, not failures: only the outcome ``error`` is.

The trace: 6 s at 5 req/s, then 14 s at 40 req/s. The controller (every 2 s) sees the step at
t ~ 8 s and applies a plan for it; on 2 cores apply (runners loaded four at a time, then the graph model) takes ~5-10 s,
so the requests go on through the apply and for a few seconds on the new plan.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from conftest import ROOT

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.loop.controller import Policy
from jigsawserve.orchestrator.loop.experiment import Experiment, run
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import detect
from jigsawserve.orchestrator.planning.planner import PlanOptions
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.workload.trace import Trace

CPU = ROOT / "examples" / "cpu"
LOW, HIGH = 5.0, 40.0


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_demand_step_replans_and_applies_without_failed_requests(tmp_path: Path) -> None:
    inventory = detect(None)
    assert inventory.is_cpu_only, f"this test serves the CPU app; found GPUs: {inventory}"
    out = tmp_path / "run"
    lines: list[str] = []
    exp = Experiment(app=load_app(CPU / "app.yaml"), profiles=load_profiles(CPU / "profiles.csv"),
                     gpu=gpu_type("cpu"), opts=PlanOptions(), inventory=inventory,
                     trace=Trace(1.0, [LOW] * 6 + [HIGH] * 14), interval_s=2.0, out=out,
                     policy=Policy(headroom=0.5), notes="tests/test_closed_loop.py")
    summary = run(exp, progress=lines.append)
    log = "\n".join(lines)

    events = _events(out / "events.jsonl")
    plans = [e for e in events if e["kind"] == "plan"]
    assert len(plans) >= 2, f"expected the controller to replan after the step; events:\n{events}\n{log}"
    assert plans[0]["reason"] == "initial"
    assert plans[0]["demand_rps"] == LOW * 1.5
    # (a down-replan in the noisy low phase is allowed by the policy, so look for the first one up)
    ups = [p for p in plans[1:] if p["demand_rps"] > plans[0]["demand_rps"]]
    assert ups, [(p["t"], p["demand_rps"], p["reason"]) for p in plans]
    # applied on the live server: the apply began while the load generator was still sending
    assert ups[0]["t"] - ups[0]["apply_s"] < exp.trace.duration_s, (ups[0]["t"], ups[0]["apply_s"])
    assert not [e for e in events if e["kind"] in ("apply_failed", "error")], log

    with (out / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    outcomes = Counter(r["outcome"] for r in rows)
    errors = [r["error"] for r in rows if r["outcome"] == "error"]
    assert rows and outcomes["error"] == 0, (f"outcomes {dict(outcomes)} (dropped/late are SLO matters); "
                                             f"errors: {errors[:5]}\n{log}")

    assert (out / "summary.json").is_file()
    assert json.loads((out / "summary.json").read_text()) == summary
    # the host's CPU was sampled every second of the run (no GPU columns on a CPU-only machine)
    host = list(csv.DictReader((out / "host.csv").open()))
    assert len(host) >= exp.trace.duration_s - 2 and all(0.0 <= float(r["cpu_busy_pct"]) <= 100.0 for r in host)
    assert summary["plan_changes"]["count"] >= 1
    assert summary["requests"]["total"] == len(rows), summary["requests"]
