"""What the controller's profile refinement saw in a run: per step and runner, the mean batch time
against the profiled p95 at the batch that ran, and how many refinements each drift threshold would
have made. Reads the runner counters the controller's metrics events keep (runs since 48029ac) and
judges them with the controller's own ``batch_times_ms`` (``tools/runner_speed.py``); the profiles
are the run's, unrefined; the app is the plans' own unless ``--app`` is given.

    python3 bench/refine_check.py RUN --profiles examples/h200/profiles.csv [--app APP.yaml] \
        [--thresholds 0.1,0.15,0.25] [--min-batches 20]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import load_profiles  # noqa: E402
from jigsawserve.tools.runner_speed import observations  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--app", type=Path, default=None, help="the app (default: the plans' own)")
    ap.add_argument("--profiles", type=Path, required=True)
    ap.add_argument("--thresholds", default="0.1,0.15,0.25", help="refine_drift values to count refinements for")
    ap.add_argument("--min-batches", type=int, default=20)
    args = ap.parse_args()
    rows = observations(args.run, load_profiles(args.profiles), load_app(args.app) if args.app else None,
                        args.min_batches)
    # batch: the rows that ran (padding included); rows: the items requested; queue: the mean wait of a
    # request in the runner's queue (ms); busy: the share of the step its processes spent in batches
    print(f"{'t (s)':>7} {'batches':>8} {'batch':>6} {'rows':>6} {'queue':>6} {'measured':>9} {'profiled':>9} "
          f"{'ratio':>6} {'busy':>5}  runner")
    for r in rows:
        print(f"{r.t:>7.1f} {r.batches:>8.0f} {r.batch:>6.1f} {r.rows:>6.1f} {r.queue_ms:>6.1f} "
              f"{r.measured_ms:>9.2f} {r.profiled_ms:>9.2f} {r.ratio:>6.2f} {r.busy:>5.2f}  {r.runner}")
    for x in map(float, args.thresholds.split(",")):
        over = [r for r in rows if r.ratio > 1 + x]
        print(f"drift {x:g}: {len(over)} of {len(rows)} runner-steps over ({len({r.runner for r in over})} runners)")


if __name__ == "__main__":
    main()
