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
from typing import Callable

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


def profile_cpu(apps: list, out: str, overhead_ms: float = 2.0, repeats: int = 50,
                progress: Callable[[str], None] = print) -> int:
    """Profile the numpy variants of ``apps`` (each profile once) into ``out``; the number of rows."""
    seen, rows = set(), 0
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "gpu", "mig", "mps", "batch", "latency_ms", "throughput_rps"])
        for app in apps:
            for task in app.tasks:
                for v in task.variants:
                    if v.profile in seen:
                        continue
                    seen.add(v.profile)
                    run = build(dict(v.runtime) or {"kind": "numpy_mlp"}, app.tensor_width)
                    for b in BATCHES:
                        lat = p95_ms(run, b, app.tensor_width, repeats) + overhead_ms
                        w.writerow([v.profile, "cpu", 1, 1, b, f"{lat:.3f}", f"{b / lat * 1000:.1f}"])
                        rows += 1
                        progress(f"{v.profile:12s} batch {b:3d}: {lat:7.3f} ms")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("app")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overhead-ms", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    profile_cpu([load_app(args.app)], args.out, args.overhead_ms, args.repeats)


if __name__ == "__main__":
    main()
