"""A controller policy or profile change, A/B, over many Poisson draws of the same simulated day
(``bench/ramp.py``'s closed loop: the real Controller and planner, a fake server). One run of a day on
the GPU is one draw: the H200's social runs of the same code went 0.4-1.5%; so is one simulated seed
(0.3-1.4% here). Per seed, the same arrivals under A (``Policy`` as ``bench/h200_eval.py`` runs it,
with ``--a`` overrides) and B (``--b`` overrides; ``--b-profiles`` and ``--b-efficiency`` where B plans
from other profiles, or its plans serve another share of their demand; ``--truth`` where both sides'
plans serve at the speed of other profiles' rows, the GPU as measured); per side the mean, median
and range of the requests over capacity ("excess", ramp.py's proxy), the mean slices and plan changes,
and the seeds on which B had less excess than A.

    python3 bench/ramp_ab.py --app examples/h200/social.yaml --peak 663.1 --efficiency 0.85 \\
        --a down_on_rise=true --seeds 20 --out bench/results/ramp-ab/social-down-guard.json
    python3 bench/ramp_ab.py --app examples/h200/social.yaml --peak 663.1 --efficiency 0.85 \\
        --b-profiles examples/h200/profiles.refined.csv --b-efficiency 1.0 --b headroom=0.4 ...
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ramp import Setup, simulate  # noqa: E402

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.loop.controller import Policy  # noqa: E402
from jigsawserve.orchestrator.planning.features import Features  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import from_file  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles  # noqa: E402
from jigsawserve.orchestrator.workload.trace import compress, scale_to_peak, synthetic_diurnal  # noqa: E402


def overridden(policy: Policy, items: list[str]) -> Policy:
    """``policy`` with ``field=value`` overrides (bool fields take true/false)."""
    kinds = {f.name: type(getattr(policy, f.name)) for f in fields(policy)}
    changes: dict[str, Any] = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in kinds:
            raise SystemExit(f"{item!r}: Policy has no field {name!r} (fields: {', '.join(kinds)})")
        kind = float if kinds[name] is type(None) else kinds[name]  # an optional number, None by default
        changes[name] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
    return replace(policy, **changes)


def summary(runs: list[dict[str, Any]], slices: int) -> dict[str, Any]:
    excess = np.array([r["excess_pct"] for r in runs])
    return {"excess_mean_pct": round(float(excess.mean()), 3), "excess_median_pct": round(float(np.median(excess)), 3),
            "excess_min_pct": round(float(excess.min()), 3), "excess_max_pct": round(float(excess.max()), 3),
            "slices_mean_pct": round(float(np.mean([r["mean_slices"] for r in runs])) / slices * 100, 2),
            "plan_changes_mean": round(float(np.mean([r["plan_changes"] for r in runs])), 2),
            "accuracy_mean": round(float(np.mean([r["accuracy"] for r in runs])), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", required=True)
    ap.add_argument("--profiles", default="examples/h200/profiles.csv")
    ap.add_argument("--inventory", default="examples/inventory/h200-nomig.json")
    ap.add_argument("--peak", type=float, required=True, help="req/s at the day's peak")
    ap.add_argument("--duration", type=float, default=450.0, help="the day replayed in this many seconds")
    ap.add_argument("--apply", type=float, default=12.0, help="seconds an apply takes")
    ap.add_argument("--b-apply", type=float, default=None,
                    help="seconds B's applies take (default: --apply), e.g. runners that capture fewer sizes")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--headroom", type=float, default=0.5)
    ap.add_argument("--efficiency", type=float, default=1.0, help="the share of its demand a plan really serves")
    ap.add_argument("--a", nargs="*", default=[], metavar="FIELD=VALUE", help="Policy overrides for A")
    ap.add_argument("--b", nargs="*", default=[], metavar="FIELD=VALUE", help="Policy overrides for B")
    ap.add_argument("--b-profiles", default=None, help="B plans from these profiles (default: --profiles)")
    ap.add_argument("--b-queueing", action="store_true", help="B plans with the queueing term (PlanOptions.queueing)")
    ap.add_argument("--b-efficiency", type=float, default=None,
                    help="B's plans serve this share of their demand (default: --efficiency)")
    ap.add_argument("--truth", default=None,
                    help="both sides' plans serve what these profiles give them (the GPU as measured), "
                         "times the efficiency")
    ap.add_argument("--seeds", type=int, default=20, help="Poisson seeds 1..N")
    ap.add_argument("--out", required=True, help="JSON; the table goes next to it as .md")
    args = ap.parse_args()
    profiles = load_profiles(ROOT / args.profiles)
    gpu = gpu_type(default_gpu(profiles))
    base = Policy(headroom=args.headroom)
    policies = {"A": overridden(base, args.a), "B": overridden(base, args.b)}
    a_setup = Setup(load_app(ROOT / args.app), profiles, gpu, PlanOptions(features=Features.parse("ast"), gpus=1),
                    from_file(ROOT / args.inventory), policies["A"], efficiency=args.efficiency,
                    truth=load_profiles(ROOT / args.truth) if args.truth else None)
    b_profiles = args.b_profiles or args.profiles
    b_efficiency = args.efficiency if args.b_efficiency is None else args.b_efficiency
    setups = {"A": a_setup, "B": replace(a_setup, profiles=load_profiles(ROOT / b_profiles), policy=policies["B"],
                                         efficiency=b_efficiency,
                                         opts=replace(a_setup.opts, queueing=args.b_queueing))}
    day = compress(scale_to_peak(synthetic_diurnal(), args.peak), args.duration)
    applies = {"A": args.apply, "B": args.apply if args.b_apply is None else args.b_apply}
    runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for seed in range(1, args.seeds + 1):
        for key, setup in setups.items():
            r = simulate(replace(setup, arrivals_seed=seed), day, args.interval, applies[key])
            runs[key].append({"seed": seed, **{k: r[k] for k in ("excess_pct", "strict_pct", "mean_slices",
                                                                 "plan_changes", "accuracy")}})
        a, b = runs["A"][-1], runs["B"][-1]
        print(f"seed {seed:>3}: excess A {a['excess_pct']:.2f}% B {b['excess_pct']:.2f}%, slices A "
              f"{a['mean_slices']:.2f} B {b['mean_slices']:.2f}", flush=True)
    sums = {key: summary(rs, gpu.slices) for key, rs in runs.items()}
    better = sum(b["excess_pct"] < a["excess_pct"] for a, b in zip(runs["A"], runs["B"]))
    worse = sum(b["excess_pct"] > a["excess_pct"] for a, b in zip(runs["A"], runs["B"]))
    command = shlex.join(["python3", "bench/ramp_ab.py", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                            check=False).stdout.strip()
    md = [f"# A/B over {args.seeds} Poisson draws of the simulated day ({a_setup.app.name})", "",
          f"Command: `{command}` (code {commit})", "",
          f"A: {policies['A']!r}; profiles {args.profiles}, plans serving {args.efficiency:g} of their demand", "",
          f"B: {policies['B']!r}; profiles {b_profiles}, plans serving {b_efficiency:g} of their demand"
          + ("; planned with the queueing term" if args.b_queueing else ""), "",
          f"Day replayed in {args.duration:g} s at a peak of {args.peak:g} req/s, applies of {applies['A']:g} s"
          + (f" (B: {applies['B']:g} s)." if applies["B"] != applies["A"] else ".")
          + (f" Plans serve at the speed of the rows of {args.truth} (``ramp.served_rps``)." if args.truth else ""),
          "",
          "| policy | excess mean | median | range | mean slices | plan changes | accuracy / max |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for key, s in sums.items():
        md.append(f"| {key} | {s['excess_mean_pct']:.2f}% | {s['excess_median_pct']:.2f}% | "
                  f"{s['excess_min_pct']:.2f}-{s['excess_max_pct']:.2f}% | {s['slices_mean_pct']:.1f}% | "
                  f"{s['plan_changes_mean']:.1f} | {s['accuracy_mean']:.4f} |")
    md += ["", f"B had less excess than A on {better} of {args.seeds} seeds, more on {worse}."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "git_commit": commit, "policies": {k: repr(p) for k, p in
                                                                                       policies.items()},
                               "profiles": {"A": args.profiles, "B": b_profiles},
                               "efficiency": {"A": args.efficiency, "B": b_efficiency}, "apply_s": applies,
                               "b_queueing": args.b_queueing,
                               "truth": args.truth,
                               "summary": sums, "b_better": better, "b_worse": worse, "runs": runs}, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
