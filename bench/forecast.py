"""Demand forecasting: the paper's moving-average baseline vs HoltQuantile on the shipped trace.

Both forecasters replay the trace one interval at a time (observe the interval, forecast the next).
Scored on the intervals from index WARMUP on (the baseline's window is full), per forecaster:
MAPE; under-provisioned intervals (forecast < actual); shortfall max(0, actual - forecast) as a mean
in req/s, as a mean % of actual and as a total in requests; over-provisioning max(0, forecast -
actual) as a mean % of actual. As a check against fitting one trace, the same metrics are averaged
over the synthetic days of seeds 1..20 (generated, not shipped), with the seeds on which the second
forecaster is no worse than the first on all of under-provisioned bins, total shortfall and
over-provisioning.

Run from the repository root:  python3 -m bench.forecast [--trace FILE] [--out bench/results/forecast.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
from pathlib import Path
from collections.abc import Callable

import numpy as np

from jigsawserve.orchestrator.loop.forecast import Forecaster, HoltQuantile, MovingAverage, one_step_forecasts
from jigsawserve.orchestrator.workload.trace import Trace, load_trace, synthetic_diurnal

WARMUP = 5
SEEDS = range(1, 21)
FORECASTERS: dict[str, Callable[[], Forecaster]] = {
    "MovingAverage(window=5, slack=0.05) [paper baseline]": MovingAverage,
    "HoltQuantile(alpha=0.7, beta=0.1, window=24, quantile=0.8)": HoltQuantile,
}
COLUMNS = [("mape_pct", "MAPE (%)"), ("under_bins", "under-provisioned bins"),
           ("under_frac_pct", "under-provisioned (% of bins)"), ("shortfall_rps", "mean shortfall (req/s)"),
           ("shortfall_pct", "mean shortfall (% of actual)"), ("shortfall_requests", "total shortfall (requests)"),
           ("over_pct", "mean over-provisioning (% of actual)")]


def score(forecast: np.ndarray, actual: np.ndarray, interval_s: float) -> dict[str, float]:
    """The metrics of one forecast series against the actual rates of the same intervals."""
    short, over = np.maximum(actual - forecast, 0), np.maximum(forecast - actual, 0)
    return {"mape_pct": float(np.mean(np.abs(forecast - actual) / actual) * 100),
            "under_bins": int(np.sum(forecast < actual)),
            "under_frac_pct": float(np.mean(forecast < actual) * 100),
            "shortfall_rps": float(short.mean()), "shortfall_pct": float(np.mean(short / actual) * 100),
            "shortfall_requests": float(short.sum() * interval_s),
            "over_pct": float(np.mean(over / actual) * 100)}


def evaluate(trace: Trace) -> dict[str, dict[str, float]]:
    """Every forecaster's metrics on one trace."""
    actual = trace.rates[WARMUP:]
    return {name: score(one_step_forecasts(make(), trace.rates)[WARMUP - 1:], actual, trace.interval_s)
            for name, make in FORECASTERS.items()}


def table(results: dict[str, dict[str, float]]) -> str:
    rows = ["| forecaster | " + " | ".join(label for _, label in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS)]
    for name, m in results.items():
        rows.append(f"| {name} | " + " | ".join(f"{m[key]:g}" if key == "under_bins" else f"{m[key]:.2f}"
                                                 for key, _ in COLUMNS) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="examples/traces/diurnal-synthetic.csv")
    ap.add_argument("--out", default="bench/results/forecast.json")
    args = ap.parse_args()
    trace = load_trace(args.trace)
    print(f"replaying {args.trace}: {len(trace.rates)} intervals of {trace.interval_s:g} s, "
          f"scored on {len(trace.rates) - WARMUP}", flush=True)
    shipped = evaluate(trace)
    per_seed = [evaluate(synthetic_diurnal(seed)) for seed in SEEDS]
    seeds_mean = {name: {key: float(np.mean([r[name][key] for r in per_seed])) for key, _ in COLUMNS}
                  for name in FORECASTERS}
    base, new = FORECASTERS
    no_worse = [seed for seed, r in zip(SEEDS, per_seed)
                if all(r[new][k] <= r[base][k] for k in ("under_bins", "shortfall_requests", "over_pct"))]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    command = "python3 -m bench.forecast" + "".join(
        f" --{k} {v}" for k, v, d in (("trace", args.trace, ap.get_default("trace")),
                                       ("out", args.out, ap.get_default("out"))) if v != d)
    md = (f"# Demand forecasting ({args.trace})\n\nCommand: `{command}`\n\n"
          f"Intervals {WARMUP}..{len(trace.rates) - 1} of {len(trace.rates)} ({trace.interval_s:g} s each); "
          f"forecast for interval i made after observing intervals 0..i-1.\n\n## Shipped trace\n\n"
          f"{table(shipped)}\n\n## Mean over synthetic_diurnal seeds {SEEDS.start}..{SEEDS.stop - 1}\n\n"
          f"{table(seeds_mean)}\n\nSeeds where the second forecaster has no more under-provisioned bins, "
          f"total shortfall and over-provisioning than the first: {len(no_worse)} of {len(SEEDS)} "
          f"(not: {', '.join(str(x) for x in SEEDS if x not in no_worse) or 'none'}).\n")
    print(md)
    Path(args.out).write_text(json.dumps({
        "command": command, "trace": args.trace, "interval_s": trace.interval_s, "intervals": len(trace.rates),
        "warmup": WARMUP, "shipped": shipped, "seeds": list(SEEDS), "seeds_mean": seeds_mean, "seeds_no_worse": no_worse,
        "seeds_per_seed": per_seed, "git_commit": commit, "date": dt.datetime.now(dt.UTC).isoformat(),
        "python": platform.python_version(), "numpy": np.__version__}, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
