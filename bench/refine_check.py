"""What the controller's profile refinement saw in a run: per step and runner, the mean batch time
against the profiled p95 at the batch that ran, and how many refinements each drift threshold would
have made. Reads the runner counters the controller's metrics events keep (runs since 48029ac) and
judges them with the controller's own ``batch_times_ms``; the profiles are the run's, unrefined.

    python3 bench/refine_check.py RUN --app examples/h200/social.yaml --profiles examples/h200/profiles.csv \
        [--thresholds 0.1,0.15,0.25] [--min-batches 20]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.appspec import load_app  # noqa: E402
from orchestrator.controller import RUNNER_COUNTERS, batch_times_ms  # noqa: E402
from orchestrator.metrics import increase  # noqa: E402
from orchestrator.plan import Plan  # noqa: E402
from orchestrator.profiles import load_profiles  # noqa: E402
from orchestrator.render import runner_name  # noqa: E402


def judged(run: Path, app_path: Path, profiles_path: Path, min_batches: int) -> list[dict]:
    """One row per step and runner of the plan in force that ran at least ``min_batches`` batches."""
    app, profiles = load_app(app_path), load_profiles(profiles_path)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    plan, prev, rows = None, None, []
    for e in sorted(events, key=lambda e: e["t"]):
        if e["kind"] == "plan":
            plan = Plan.from_json(e["plan"])
        if e["kind"] != "metrics" or "runners" not in e:
            continue
        for name, now in e["runners"].items():
            entry = next((x for x in plan.entries if runner_name(app.name, x) == name), None) if plan else None
            before = (prev or {}).get(name)
            if entry is None or before is None:  # a runner the step before did not count
                continue
            d = {k: increase(before.get(k, 0.0), now.get(k, 0.0)) for k in RUNNER_COUNTERS}
            times = batch_times_ms(app, profiles, plan.gpu_type, entry, d) if d["batches"] >= min_batches else None
            if times is None or not times[1]:
                continue
            rows.append({"t": e["t"], "runner": name, "batches": d["batches"],
                         "batch": (d["rows"] + d["padding"]) / d["batches"], "rows": d["rows"] / d["batches"],
                         "queue_ms": d["queue_us"] / d["requests"] / 1000, "measured_ms": times[0],
                         "profiled_ms": times[1], "ratio": times[0] / times[1]})
        prev = e["runners"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--app", type=Path, required=True)
    ap.add_argument("--profiles", type=Path, required=True)
    ap.add_argument("--thresholds", default="0.1,0.15,0.25", help="refine_drift values to count refinements for")
    ap.add_argument("--min-batches", type=int, default=20)
    args = ap.parse_args()
    rows = judged(args.run, args.app, args.profiles, args.min_batches)
    # batch: the rows that ran (padding included); rows: the items requested; queue: the mean wait of a
    # request in the runner's queue (ms)
    print(f"{'t (s)':>7} {'batches':>8} {'batch':>6} {'rows':>6} {'queue':>6} {'measured':>9} {'profiled':>9} "
          f"{'ratio':>6}  runner")
    for r in rows:
        print(f"{r['t']:>7.1f} {r['batches']:>8.0f} {r['batch']:>6.1f} {r['rows']:>6.1f} {r['queue_ms']:>6.1f} "
              f"{r['measured_ms']:>9.2f} "
              f"{r['profiled_ms']:>9.2f} {r['ratio']:>6.2f}  {r['runner']}")
    for x in map(float, args.thresholds.split(",")):
        over = [r for r in rows if r["ratio"] > 1 + x]
        print(f"drift {x:g}: {len(over)} of {len(rows)} runner-steps over "
              f"({len({r['runner'] for r in over})} runners)")


if __name__ == "__main__":
    main()
