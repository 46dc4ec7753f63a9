"""Profile an app's variants on this CPU into the canonical profile CSV: numpy stand-ins, or the
variants of a typed app (model files, Python classes) on real items of a dataset.

    python3 -m tools.profile_cpu examples/cpu/app.yaml --out examples/cpu/profiles.csv
    python3 -m tools.profile_cpu examples/ocr/app.yaml --dataset DATASET --out examples/ocr/profiles.csv

Each variant runs in-process at each batch size; latency_ms is the p95 of one batch plus a fixed
allowance for Triton's per-call overhead (--overhead-ms), throughput_rps = batch / latency. The
segment is the whole CPU device (gpu type "cpu", mig 1, mps 1). A typed variant is timed on the items
its task gets when the dataset's requests run through the app (tools/evaluate.py), the first ``batch``
of them per batch.
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
TYPED_BATCHES = (1, 2, 4, 8)  # real models on 2 cores: larger batches only repeat the per-item cost


def p95_ms(run, batch: int, width: int, repeats: int) -> float:
    x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
    run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 95))


def typed_p95_ms(variant, items: list, batch: int, repeats: int) -> float:
    """p95 of ``variant.infer`` on a batch of the first ``batch`` of ``items`` (repeated when fewer)."""
    chosen = [items[i % len(items)] for i in range(batch)]
    variant.infer(chosen)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        variant.infer(chosen)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 95))


def _typed_timers(app, dataset: str | None) -> dict[str, Callable[[int, int], float]]:
    """Per variant profile name, ``(batch, repeats) -> p95 ms`` on the dataset's items of its task."""
    from tools.evaluate import LocalPipeline, load_dataset, task_samples
    if dataset is None:
        raise ValueError(f"app {app.name} has typed variants: give a dataset of its requests to time them on")
    samples, pipeline = task_samples(app, load_dataset(app, dataset)), LocalPipeline(app)
    timers = {}
    for task in app.tasks:
        if not samples[task.name]:
            raise ValueError(f"the dataset's requests give task {task.name} no items to time")
        for v in task.variants:
            timers[v.profile] = (lambda b, r, t=task.name, n=v.name:
                                 typed_p95_ms(pipeline.variant(t, n), samples[t], b, r))
    return timers


def profile_cpu(apps: list, out: str, overhead_ms: float = 2.0, repeats: int = 50,
                progress: Callable[[str], None] = print, dataset: str | None = None) -> int:
    """Profile the variants of ``apps`` (each profile once) into ``out``; the number of rows. Typed apps'
    variants are timed on the items of ``dataset``'s requests, at most 10 repeats per batch."""
    seen, rows = set(), 0
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "gpu", "mig", "mps", "batch", "latency_ms", "throughput_rps"])
        for app in apps:
            timers = _typed_timers(app, dataset) if app.typed else {}
            for task in app.tasks:
                for v in task.variants:
                    if v.profile in seen:
                        continue
                    seen.add(v.profile)
                    if app.typed:
                        run, batches = timers[v.profile], TYPED_BATCHES
                    else:
                        model = build(dict(v.runtime) or {"kind": "numpy_mlp"}, app.tensor_width)
                        run, batches = (lambda b, r, m=model: p95_ms(m, b, app.tensor_width, r)), BATCHES
                    for b in batches:
                        lat = run(b, min(repeats, 10) if app.typed else repeats) + overhead_ms
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
    ap.add_argument("--dataset", default=None, help="typed apps: the requests whose items the variants run on")
    args = ap.parse_args()
    profile_cpu([load_app(args.app)], args.out, args.overhead_ms, args.repeats, dataset=args.dataset)


if __name__ == "__main__":
    main()
