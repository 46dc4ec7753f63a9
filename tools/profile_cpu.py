"""Profile an app's variants on this CPU into the canonical profile CSV: numpy stand-ins, or the
variants of a typed app (model files, Python classes) on real items of a dataset.

    python3 -m jigsawserve.tools.profile_cpu examples/cpu/app.yaml --out examples/cpu/profiles.csv
    python3 -m jigsawserve.tools.profile_cpu examples/ocr/app.yaml --dataset DATASET --out examples/ocr/profiles.csv

Each variant runs in-process at each batch size; latency_ms is the p95 of one batch plus a fixed
allowance for Triton's per-call overhead (--overhead-ms), throughput_rps = batch / latency. The
segment is the whole CPU device (gpu type "cpu", mig 1, mps 1). A typed variant is timed on the items
its task gets when the dataset's requests run through the app (tools/evaluate.py), the first ``batch``
of them per batch. A variant's rows are screened (``jigsawserve.orchestrator.spec.profiles.screened``): rows that look
disturbed by other work on the machine are measured again, and a warning names those that stay so.
One progress line per variant.
"""
from __future__ import annotations

import argparse
import csv
import time
from typing import Callable

import numpy as np

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.spec.profiles import Sample, screened
from jigsawserve.triton_backend.variants import build

BATCHES = (1, 2, 4, 8, 16, 32)
TYPED_BATCHES = (1, 2, 4, 8)  # real models on 2 cores: larger batches only repeat the per-item cost


def timed(call: Callable[[], object], repeats: int) -> Sample:
    """The p95 and median of ``repeats`` calls (ms), after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return Sample(float(np.percentile(times, 95)), float(np.median(times)))


def stand_in_sample(run: Callable[[np.ndarray], object], batch: int, width: int, repeats: int) -> Sample:
    """A numpy stand-in's times on a batch of random rows."""
    x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
    return timed(lambda: run(x), repeats)


def typed_sample(variant, items: list, batch: int, repeats: int) -> Sample:
    """``variant.infer``'s times on a batch of the first ``batch`` of ``items`` (repeated when fewer)."""
    chosen = [items[i % len(items)] for i in range(batch)]
    return timed(lambda: variant.infer(chosen), repeats)


def _typed_timers(app, dataset: str | None) -> dict[str, Callable[[int, int], Sample]]:
    """Per variant profile name, ``(batch, repeats) -> Sample`` on the dataset's items of its task."""
    from jigsawserve.tools.evaluate import LocalPipeline, load_dataset, task_samples
    if dataset is None:
        raise ValueError(f"app {app.name} has typed variants: give a dataset of its requests to time them on")
    samples, pipeline = task_samples(app, load_dataset(app, dataset)), LocalPipeline(app)
    timers = {}
    for task in app.tasks:
        if not samples[task.name]:
            raise ValueError(f"the dataset's requests give task {task.name} no items to time")
        for v in task.variants:
            timers[v.profile] = (lambda b, r, t=task.name, n=v.name:
                                 typed_sample(pipeline.variant(t, n), samples[t], b, r))
    return timers


def profile_cpu(apps: list, out: str, overhead_ms: float = 2.0, repeats: int = 50,
                progress: Callable[[str], None] = print, dataset: str | None = None) -> int:
    """Profile the variants of ``apps`` (each profile once) into ``out``; the number of rows. Typed apps'
    variants are timed on the items of ``dataset``'s requests, at most 10 repeats per batch. ``progress``
    gets a line per variant (its rows' latencies) and the screening's warnings."""
    profiles = list(dict.fromkeys(v.profile for app in apps for task in app.tasks for v in task.variants))
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
                        run, batches, reps = timers[v.profile], TYPED_BATCHES, min(repeats, 10)
                    else:
                        model = build(dict(v.runtime) or {"kind": "numpy_mlp"}, app.tensor_width)
                        run, batches, reps = ((lambda b, r, m=model: stand_in_sample(m, b, app.tensor_width, r)),
                                              BATCHES, repeats)
                    samples = screened(batches, lambda b: run(b, reps), f"{v.profile} on the cpu",
                                       lambda line: progress(f"warning: {line}"))
                    line = []
                    for b, sample in samples.items():
                        lat = sample.p95_ms + overhead_ms
                        w.writerow([v.profile, "cpu", 1, 1, b, f"{lat:.3f}", f"{b / lat * 1000:.1f}"])
                        rows += 1
                        line.append(f"b{b} {lat:.1f}")
                    progress(f"[{len(seen)}/{len(profiles)}] {v.profile}: {', '.join(line)} ms")
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
