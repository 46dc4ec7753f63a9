#!/usr/bin/env python3
"""How much of the planned worst case real requests use: per answered request, its end-to-end latency
over the worst-case latency of the plan in force when it was sent (the largest path's), under the
planner's two latency models: ``batches`` (p95 x (1 + batches per request), the default) and ``paper``
(2 x p95). A ratio above 1 is a request slower than the model promised; far below 1, budget the model
holds back.

    python3 bench/budget_use.py RUN_DIR... [--out bench/results/budget-use.json]

A RUN_DIR holds ``events.jsonl`` (the controller's plans, ``t`` on the replay's clock) and
``requests.csv`` or ``requests.csv.xz`` (the load generator's outcomes, ``sent_s`` on the same clock),
as `jigsaw experiment` and `bench/h200_eval.py` write them.
"""
from __future__ import annotations

import argparse
import bisect
import csv
import io
import json
import lzma
import math
from pathlib import Path

from jigsawserve.orchestrator.planning.candidates import worst_case_ms


def _plans(run: Path) -> list[tuple[float, dict[str, float]]]:
    """(time, {model: worst-case path latency}) of every plan the run put in force."""
    out = []
    for line in (run / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev.get("kind") != "plan":
            continue
        plan = ev["plan"]
        worst = {}
        for model in ("batches", "paper"):
            wc = {t: max(worst_case_ms(e["latency_ms"], e["batch"], e.get("items", 1.0), model) for e in es)
                  for t, es in plan["tasks"].items() if es}
            worst[model] = max(sum(wc.get(t, 0.0) for t in p["tasks"]) for p in plan["paths"])
        out.append((float(ev["t"]), worst))
    return sorted(out, key=lambda x: x[0])


def _requests(run: Path) -> list[dict[str, str]]:
    path = run / "requests.csv"
    text = path.read_text() if path.exists() else lzma.open(run / "requests.csv.xz", "rt").read()
    return list(csv.DictReader(io.StringIO(text)))


def _quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": values[-1],
            "over_1": sum(v > 1 for v in values) / len(values)}


def measure(run: Path) -> dict:
    plans = _plans(run)
    times = [t for t, _ in plans]
    ratios: dict[str, list[float]] = {"batches": [], "paper": []}
    for row in _requests(run):
        if row["outcome"] != "ok":
            continue
        i = bisect.bisect_right(times, float(row["sent_s"])) - 1
        if i < 0:
            continue
        for model, worst in plans[i][1].items():
            if worst > 0 and math.isfinite(worst):
                ratios[model].append(float(row["latency_ms"]) / worst)
    return {"run": str(run), "answered": len(ratios["batches"]),
            **{model: _quantiles(vals) for model, vals in ratios.items() if vals}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = [measure(r) for r in args.runs]
    print("| run | answered | batches p50 / p99 / max (share > 1) | paper p50 / p99 / max (share > 1) |")
    print("|---|---:|---|---|")
    for r in results:
        cells = [f"{r[m]['p50']:.2f} / {r[m]['p99']:.2f} / {r[m]['max']:.2f} ({r[m]['over_1']:.2%})" for m in ("batches", "paper")]
        print(f"| {r['run']} | {r['answered']} | {cells[0]} | {cells[1]} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
