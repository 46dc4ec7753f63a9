"""Planned fan-out against measured, and how many controller intervals the refinement takes to settle:
the OCR app's closed loop (``jigsawserve.orchestrator.loop.experiment.run``: a real tritonserver, the synthetic day replayed
with the app's ground-truth requests, the controller every ``--interval`` s) once per spec factor of the
det -> rec edge given (``--factors``: the shipped 2.28 and wrong guesses), the spec's factor replaced by it.
Per run: the report's fan-out rows (spec, measured, planned last, refinements, the interval it settled
at), the plans' det -> rec factors over time and the requests' outcomes. Writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typed_bench import machine  # noqa: E402

from jigsawserve.orchestrator.spec.appspec import load_app, parse_app  # noqa: E402
from jigsawserve.orchestrator.loop.controller import Policy  # noqa: E402
from jigsawserve.orchestrator.loop.experiment import Experiment, run  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import detect  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.orchestrator.workload.trace import compress, scale_to_peak, synthetic_diurnal  # noqa: E402


def one(app_path: Path, profiles: Path, factor: float, peak: float, duration: float, interval: float,
        out: Path) -> dict:
    base = load_app(app_path)
    doc = copy.deepcopy(dict(base.doc))
    doc["edges"][0] = {**{k: v for k, v in doc["edges"][0].items() if k != "factors"}, "factor": factor}
    app = parse_app(doc, origin=f"{app_path} with det->rec factor {factor}")
    exp = Experiment(app=app, profiles=load_profiles(profiles), gpu=gpu_type("cpu"), opts=PlanOptions(gpus=4),
                     inventory=detect(None), trace=compress(scale_to_peak(synthetic_diurnal(), peak), duration),
                     interval_s=interval, out=out, policy=Policy(), notes=f"bench/fanout_refine.py factor {factor}")
    summary = run(exp, progress=lambda line: print(line, file=sys.stderr, flush=True))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    plans = [{"t": e["t"], "reason": e["reason"], "factors": e["plan"]["app_spec"]["edges"][0].get("factors", {}),
              "factor": e["plan"]["app_spec"]["edges"][0]["factor"]} for e in events if e["kind"] == "plan"]
    return {"spec_factor": factor, "fanout": summary["fanout"], "requests": summary["requests"],
            "intervals": sum(e["kind"] == "interval" for e in events), "plans": plans, "run_dir": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", type=Path, default=Path("examples/ocr/app.yaml"))
    ap.add_argument("--profiles", type=Path, default=Path("examples/ocr/profiles.csv"))
    ap.add_argument("--factors", type=float, nargs="+", default=[2.28, 1.0])
    ap.add_argument("--peak", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fanout-refine"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = [one(args.app, args.profiles, f, args.peak, args.duration, args.interval, args.work / f"factor-{f:g}")
            for f in args.factors]
    result = {"command": "python3 " + " ".join(sys.argv), "machine": machine(),
              "policy": {"fanout_drift": Policy().fanout_drift, "fanout_min_items": Policy().fanout_min_items},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in runs:
        print(json.dumps({"spec_factor": r["spec_factor"], "fanout": r["fanout"], "requests": r["requests"]}))


if __name__ == "__main__":
    main()
