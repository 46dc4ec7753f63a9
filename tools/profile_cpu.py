"""Profile an app's numpy stand-in variants on this CPU into the canonical profile CSV.

    python3 -m tools.profile_cpu examples/cpu/app.yaml --out examples/cpu/profiles.csv

Each variant runs in-process at each batch size; latency_ms is the p95 of one batch plus a fixed
allowance for Triton's per-call overhead (--overhead-ms), throughput_rps = batch / latency. The
segment is the whole CPU device (gpu type "cpu", mig 1, mps 1).
"""
from __future__ import annotations

import argparse
import csv
import time

import numpy as np

from orchestrator.appspec import load_app
from triton_backend.variants import build

BATCHES = (1, 2, 4, 8, 16, 32)


def p95_ms(run, batch: int, width: int, repeats: int) -> float:
    x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
    run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("app")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overhead-ms", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    app = load_app(args.app)
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "gpu", "mig", "mps", "batch", "latency_ms", "throughput_rps"])
        for task in app.tasks:
            for v in task.variants:
                run = build(dict(v.runtime) or {"kind": "numpy_mlp"}, app.tensor_width)
                for b in BATCHES:
                    lat = p95_ms(run, b, app.tensor_width, args.repeats) + args.overhead_ms
                    w.writerow([v.profile, "cpu", 1, 1, b, f"{lat:.3f}", f"{b / lat * 1000:.1f}"])
                    print(f"{v.profile:12s} batch {b:3d}: {lat:7.3f} ms", flush=True)


if __name__ == "__main__":
    main()
