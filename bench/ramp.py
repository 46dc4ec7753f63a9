"""Closed loop against the ramp, simulated: the real Controller and planner, a fake server.

Checks the claim that the H200 diurnal runs' SLO violations come from the compressed morning ramp
outrunning 20-31 s applies and would vanish at realistic replay speeds. Per run, the shipped
synthetic day (``jigsawserve.orchestrator.workload.trace.synthetic_diurnal``, scaled to ``--peak``) is replayed in D seconds
against ``jigsawserve.orchestrator.loop.controller.Controller`` (by default the traffic app, A+S+T, 1 GPU, HoltQuantile,
Policy(headroom=0.5), as ``bench/h200_eval.py`` runs it; ``--app``, ``--features``, ``--peak``, ``--headroom`` for the
others; the comparison with the measured H200 runs only for traffic A+S+T), with the server replaced:

- metrics: ``jigsawserve.orchestrator.loop.controller.scrape`` is patched (as tests/test_controller.py does) to return
  the cumulative arrivals at the app model, the exact integral of the trace's piecewise-constant
  rate up to the simulated time (deterministic, no Poisson noise, every arrival counted once), or with
  ``--poisson-seed`` the count of the arrivals the load generator would send (``jigsawserve.orchestrator.workload.trace.arrivals``,
  a Poisson process with that seed: the noise the controller's surge checks see on the GPU);
- apply: ``apply_plan`` returns at once, but the simulated apply takes ``apply_s`` (with
  ``Policy.sample_applies``, the arrivals are sampled every poll within it, as ``Controller._apply``
  does): the new plan
  takes effect ``apply_s`` after the decision (the old one serves until then), the controller's
  loop is blocked meanwhile and resumes as ``Controller.run`` schedules it
  (``max(next + interval, apply end + interval / 2)``). ``Controller._replan`` measures the apply with
  ``time.time()``; instead of patching time, ``controller.apply_s`` (what ``horizon()`` reads) is set
  to the simulated apply time after each step that changed the plan. Planner solve time counts as 0.

Capacity of the plan in effect = its ``demand_rps`` (what the planner sized it to serve within the
SLO) times ``--efficiency`` (1 by default; below 1 for plans that serve less than their profiles
promise, as traffic's on the H200); with ``Setup.truth`` (``bench/ramp_ab.py --truth``) also times
the least share of a variant's routed rate its entries serve at the truth's speed (``served_rps``).
The requests over that capacity are the shed ones: the fake metrics count them as one stage's drops,
which the controller's shedding check reads. Outcome proxies, integrated exactly over the pieces
where rate and capacity are constant (the limit of small time steps): "excess" = requests over
capacity, sum(max(0, rate - capacity) dt) / sum(rate dt); "strict" = every request arriving while
rate > capacity. Neither models queueing tails, backlog, refinement replans or a plan's true
(integer, measured) throughput.

    python3 bench/ramp.py [--out bench/results/ramp.json] [--app APP.yaml --features st --peak RPS]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.loop import controller as ctl  # noqa: E402
from jigsawserve.orchestrator.spec.appspec import AppSpec, load_app  # noqa: E402
from jigsawserve.orchestrator.loop.controller import Controller, EventLog, Policy  # noqa: E402
from jigsawserve.orchestrator.errors import InputError  # noqa: E402
from jigsawserve.orchestrator.planning.features import Features  # noqa: E402
from jigsawserve.orchestrator.loop.forecast import HoltQuantile  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import GpuType, gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import Inventory, from_file  # noqa: E402
from jigsawserve.orchestrator.serving.metrics import Scrape  # noqa: E402
from jigsawserve.orchestrator.planning.plan import Plan  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import Profiles, default_gpu, load_profiles  # noqa: E402
from jigsawserve.orchestrator.workload.trace import Trace, arrivals, compress, scale_to_peak, synthetic_diurnal  # noqa: E402

H200 = ROOT / "bench" / "results" / "h200-eval"
DAYS = (100.0, 200.0, 600.0, 1800.0, 3600.0, 86400.0)   # the day replayed in these seconds (86400: real time)
# Measured per 20 s of the 200 s replay, call 4 (graph-model queue timeout): bench/results/h200-eval/results.md
@dataclass(frozen=True)
class Setup:
    """What every run shares: the app, its profiles, the GPU type, planner options and inventory."""

    app: AppSpec
    profiles: Profiles
    gpu: GpuType
    opts: PlanOptions
    inventory: Inventory
    policy: Policy
    arrivals_seed: int | None = None   # count Poisson arrivals (jigsawserve.orchestrator.workload.trace.arrivals) instead of the integral
    efficiency: float = 1.0            # the share of its planned demand a plan really serves
    truth: Profiles | None = None      # the GPU as it really runs: plans serve what these profiles give them


def _latency(profiles: Profiles, key: tuple[str, str, int, int, int]) -> float:
    """The profiled p95 of one (variant, gpu, mig, mps, batch) row."""
    found = [p.latency_ms for p in profiles.points if (p.variant, p.gpu, p.mig, p.mps, p.batch) == key]
    if not found:
        raise InputError(f"truth profiles: no row for {key}")
    return found[0]


def served_rps(setup: Setup, plan: Plan) -> float:
    """The demand ``plan`` really serves: its planned demand times ``setup.efficiency``; with
    ``setup.truth``, times the least share of its routed rate a task's variant serves when each entry
    runs at the truth's speed for its row (profiled latency over the truth's)."""
    if setup.truth is None:
        return plan.demand_rps * setup.efficiency
    share = math.inf
    for task, routed in plan.routing.items():
        for variant, rate in routed.items():
            if rate <= 0:
                continue
            served = 0.0
            for e in (x for x in plan.entries if (x.task, x.variant) == (task, variant)):
                key = (setup.app.task(task).variant(variant).profile, plan.gpu_type, e.mig, e.mps, e.batch)
                served += e.count * e.throughput_rps * _latency(setup.profiles, key) / _latency(setup.truth, key)
            share = min(share, served / rate)
    return plan.demand_rps * setup.efficiency * (1.0 if share == math.inf else share)


class FakeServer:
    """Arrivals of a trace up to the simulated time ``now``, served as a metrics scrape, with the requests
    shed so far as one stage's drop counter: the arrivals over the capacity in effect (``timeline``),
    integrated in steps of ``SHED_STEP_S``."""

    SHED_STEP_S = 0.05

    def __init__(self, trace: Trace, app: AppSpec, timeline: list[tuple[float, float, int, float]],
                 seed: int | None = None) -> None:
        self.trace, self.now, self.timeline = trace, 0.0, timeline
        self.cum = np.concatenate([[0.0], np.cumsum(trace.rates * trace.interval_s)])
        self.times = None if seed is None else arrivals(trace, seed)
        self.key = ("nv_inference_request_success_total", (("model", app.name), ("version", "1")))
        self.shed_key = (ctl.STAGE_COUNTERS["drops"], (("app", app.name), ("task", app.tasks[0].name)))
        self.shed_t, self.shed = 0.0, 0.0

    def _advance_shed(self, t: float) -> None:
        while self.shed_t < min(t, self.trace.duration_s):
            dt_ = min(self.SHED_STEP_S, t - self.shed_t)
            mid = self.shed_t + dt_ / 2
            rate = self.trace.rates[min(int(mid // self.trace.interval_s), len(self.trace.rates) - 1)]
            cap = next(c for start, c, _, _ in reversed(self.timeline) if start <= mid)
            self.shed += max(0.0, rate - cap) * dt_
            self.shed_t += dt_

    def arrived(self, t: float) -> float:
        """Requests arrived in [0, t): the exact integral of the piecewise-constant rate, or the Poisson
        arrivals counted."""
        if self.times is not None:
            return float(np.searchsorted(self.times, t))
        t = min(max(t, 0.0), self.trace.duration_s)
        k = min(int(t // self.trace.interval_s), len(self.trace.rates) - 1)
        return float(self.cum[k] + self.trace.rates[k] * (t - k * self.trace.interval_s))

    def scrape(self, url: str, t: float) -> Scrape:
        """Stands in for ``jigsawserve.orchestrator.loop.controller.scrape``; ``t`` (wall time) is ignored."""
        self._advance_shed(self.now)
        return Scrape(self.now, {self.key: self.arrived(self.now), self.shed_key: self.shed})


def simulate(setup: Setup, trace: Trace, interval_s: float, apply_s: float,
             horizon_apply_s: float | None = None) -> dict[str, Any]:
    """One closed-loop run; ``horizon_apply_s`` overrides the apply time the controller is told
    (0: the controller before ``horizon()``, always one interval ahead)."""
    timeline: list[tuple[float, float, int, float]] = []  # (takes effect at, capacity, slices, accuracy)
    server = FakeServer(trace, setup.app, timeline, setup.arrivals_seed)
    applied: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="jigsaw-ramp-") as tmp, mock.patch.object(ctl, "scrape", server.scrape):
        events_path = Path(tmp) / "events.jsonl"
        c = Controller(setup.app, setup.profiles, setup.gpu, setup.opts, setup.inventory, Path(tmp) / "repo",
                       "sim://metrics", HoltQuantile(), EventLog(events_path, time.time()), setup.policy,
                       apply_plan=applied.append, progress=lambda line: None)
        c.interval_s = interval_s                                # as Controller.run sets it
        first_bins = trace.rates[:max(1, round(interval_s / trace.interval_s))]   # as experiment.run
        plan = c.initial(max(float(first_bins.mean()), 1.0) * (1 + setup.policy.headroom))
        timeline.append((0.0, served_rps(setup, plan), plan.slices, plan.accuracy))
        changes = []
        def applied_at(t: float, before: Any) -> float:
            """When the controller's call at ``t`` returns: after the simulated apply if it replanned."""
            if c.plan is before:
                return t
            if setup.policy.sample_applies and setup.policy.surge_poll_s:  # Controller._apply's sampler
                for at in np.arange(t + setup.policy.surge_poll_s, t + apply_s, setup.policy.surge_poll_s):
                    server.now = float(at)
                    c.sample()
                c.plan_seen_since = None  # as after a real apply: the new plan is seen from the next scrape
            c.apply_s = apply_s if horizon_apply_s is None else horizon_apply_s
            timeline.append((t + apply_s, served_rps(setup, c.plan), c.plan.slices, c.plan.accuracy))
            changes.append({"decided_s": round(t, 3), "effective_s": round(t + apply_s, 3),
                            "demand_rps": round(c.plan.demand_rps, 2), "slices": c.plan.slices})
            return t + apply_s

        poll = setup.policy.surge_poll_s
        t = next_t = 0.0
        while t < trace.duration_s:
            server.now, before = t, c.plan
            c.step()
            done = applied_at(t, before)
            next_t = max(next_t + interval_s, done + interval_s / 2)   # Controller.run's schedule
            while poll and done < next_t:  # and its surge checks until the next step
                check = done + min(poll, next_t - done)
                if check >= next_t or check >= trace.duration_s:
                    break
                server.now, before = check, c.plan
                c.surge()
                done = applied_at(check, before)   # a surge's apply may end after next_t: the step waits
            t = max(next_t, done)
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
    for change, e in zip(changes, [e for e in events if e["kind"] == "plan"][1:]):
        change["reason"] = e["reason"]
    out = integrate(trace, timeline, windows=10)
    out.update(plan_changes=len(changes), applies=len(applied), changes=changes,
               infeasible_solves=sum(e["kind"] == "infeasible" for e in events),
               steps=sum(e["kind"] == "metrics" for e in events), initial_rps=round(plan.demand_rps, 2))
    return out


def integrate(trace: Trace, timeline: list[tuple[float, float, int, float]], windows: int) -> dict[str, Any]:
    """The proxies, mean slices and the plans' accuracy (per request) over the trace, exactly, in total
    and per window of D / windows."""
    end, rates = trace.duration_s, trace.rates
    starts = np.array([p[0] for p in timeline])
    caps, slices, accuracy = (np.array([p[i] for p in timeline], dtype=float) for i in (1, 2, 3))
    edges = np.linspace(0.0, end, windows + 1)
    pts = np.unique(np.concatenate([np.arange(len(rates) + 1) * trace.interval_s, starts, edges]))
    pts = pts[(pts >= 0) & (pts <= end)]
    dt_, mid = np.diff(pts), (pts[:-1] + pts[1:]) / 2
    r = rates[np.minimum((mid // trace.interval_s).astype(int), len(rates) - 1)]
    plan = np.searchsorted(starts, mid, side="right") - 1
    cap = caps[plan]
    arrived, excess, strict = r * dt_, np.maximum(r - cap, 0) * dt_, np.where(r > cap, r, 0) * dt_
    win = np.minimum(np.searchsorted(edges, mid, side="right") - 1, windows - 1)

    def per_window(x: np.ndarray) -> np.ndarray:
        return np.bincount(win, weights=x, minlength=windows)

    total = arrived.sum()
    return {"requests": round(float(total), 1), "excess_pct": round(100 * float(excess.sum() / total), 2),
            "strict_pct": round(100 * float(strict.sum() / total), 2),
            "mean_slices": round(float((slices[plan] * dt_).sum() / end), 3),
            "accuracy": round(float((accuracy[plan] * arrived).sum() / total), 4),
            "windows": {"edges_s": [round(float(e), 3) for e in edges],
                        "requests": [round(float(x), 1) for x in per_window(arrived)],
                        "excess_pct": [round(100 * float(e / a), 1) if a else 0.0
                                       for e, a in zip(per_window(excess), per_window(arrived))],
                        "strict_pct": [round(100 * float(s / a), 1) if a else 0.0
                                       for s, a in zip(per_window(strict), per_window(arrived))]}}


def measured() -> dict[str, dict[str, Any]]:
    """The two H200 runs' summaries (traffic, A+S+T) and their plans' apply times."""
    runs = {200: json.loads((H200 / "traffic-200s.json").read_text()),
            100: json.loads((H200 / "traffic-100s.json").read_text())[0]["summary"]}
    files = {200: "traffic-200s-events.jsonl", 100: "traffic-100s-ast-events.jsonl"}
    out = {}
    for d, s in runs.items():
        events = [json.loads(x) for x in (H200 / files[d]).read_text().splitlines()]
        out[d] = {"violations_pct": round(100 * s["slo_violation_rate"], 2), "mean_slices": round(s["slices"]["mean"], 3),
                  "plan_changes": s["plan_changes"]["count"], "requests": s["requests"]["total"],
                  "plans": [{"effective_s": e["t"], "demand_rps": round(e["demand_rps"], 1), "apply_s": e["apply_s"],
                             "reason": e["reason"]} for e in events if e["kind"] == "plan" and "apply_s" in e],
                  "windows": s.get("windows")}
    return out


def fmt_row(r: dict[str, Any], slices: int) -> str:
    return (f"| {r['duration_s']:g} | {86400 / r['duration_s']:g}x | {r['interval_s']:g} | {r['apply_s']:g} | "
            f"{r['excess_pct']:.2f} | {r['strict_pct']:.2f} | {100 * r['mean_slices'] / slices:.1f} | {r['accuracy']:.3f} | "
            f"{r['plan_changes']} | {r['infeasible_solves']} | {r['wall_s']:.1f} |")


def validation_md(v200: dict[str, Any], v100: dict[str, Any], v100_no_horizon: dict[str, Any],
                  meas: dict[str, Any], slices: int) -> list[str]:
    """The simulated 200 s and 100 s days (apply 25 s) next to the measured H200 runs."""
    head = ("| run | measured SLO violations | sim excess | sim strict | measured mean slices | sim mean slices "
            "| measured plan changes | sim plan changes |")
    lines = ["## Validation against the measured H200 runs (apply 25 s, interval 10 s, no surge checks as there)",
             "", head,
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, m, s in (("day in 200 s (call 4)", meas[200], v200), ("day in 100 s (call 2)", meas[100], v100),
                        ("day in 100 s, controller told apply 0 (no horizon, as in call 2)", meas[100], v100_no_horizon)):
        lines.append(f"| {label} | {m['violations_pct']:.1f}% | {s['excess_pct']:.1f}% | {s['strict_pct']:.1f}% | "
                     f"{100 * m['mean_slices'] / slices:.1f}% | {100 * s['mean_slices'] / slices:.1f}% | "
                     f"{m['plan_changes']} | {s['plan_changes']} |")
    w, mw = v200["windows"], meas[200]["windows"]
    if mw and len(mw["requests"]) == len(w["requests"]):
        lines += ["", "Per tenth of the 200 s replay:", "",
                  "| replay s | measured requests | sim requests | measured violations | sim excess | sim strict |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {w['edges_s'][i]:g}-{w['edges_s'][i + 1]:g} | {mw['requests'][i]} | {w['requests'][i]:.0f} | "
                  f"{mw['violations_pct'][i]:.1f}% | {w['excess_pct'][i]:.1f}% | {w['strict_pct'][i]:.1f}% |"
                  for i in range(len(w["requests"]))]
    lines += ["", "Plan changes (time the plan took effect: demand planned for):", ""]
    for d, v in ((200, v200), (100, v100)):
        real = "; ".join(f"{p['effective_s']:.0f} s: {p['demand_rps']:.0f} req/s (apply {p['apply_s']:g} s)"
                         for p in meas[d]["plans"])
        lines += [f"- {d} s measured: {real}", f"- {d} s simulated: "
                  + "; ".join(f"{c['effective_s']:.0f} s: {c['demand_rps']:.0f} req/s" for c in v["changes"])]
    return [*lines, ""]


def report(runs: list[dict[str, Any]], validation: dict[str, Any] | None, meas: dict[str, Any], command: str,
           day: Trace, slices: int, setup: Setup) -> str:
    """ramp.md: the validation against the H200 runs (when the grid has their runs) and the grid; the reading
    is in bench/README.md."""
    by = {(r["duration_s"], r["apply_s"]): r for r in runs}
    lines = ["# Closed loop against the ramp (simulated)", "", f"Command: `{command}`", "",
             (f"App {setup.app.name}, {setup.opts.features.label}, 1 {setup.gpu.name} GPU ({slices} slices), "
              f"HoltQuantile, {setup.policy}; the "
              f"shipped synthetic day scaled to a peak of {day.peak_rps:g} req/s. Real Controller and planner; fake "
              "metrics and applies (bench/ramp.py docstring). Capacity in effect = the plan's demand_rps."), ""]
    if validation is not None:
        lines += validation_md(validation["200"], validation["100"], validation["100_no_horizon"], meas, slices)
    lines += ["## Replay speed x apply time", "",
              ("| day replayed in (s) | compression | interval (s) | apply (s) | excess violations (%) | "
               "strict violations (%) | mean slices (% of 7) | accuracy / max | plan changes | infeasible solves | wall (s) |"),
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *(fmt_row(r, slices) for r in runs)]
    wall = sum(r["wall_s"] for r in runs) + (validation["wall_s"] if validation else 0.0)
    lines += ["", f"Simulation wall time: {wall:.0f} s in all (real HiGHS solves, 2-CPU container; varies with load)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/ramp.json", help="JSON; the table goes next to it as .md")
    ap.add_argument("--app", default="examples/h200/traffic.yaml")
    ap.add_argument("--profiles", default="examples/h200/profiles.csv")
    ap.add_argument("--inventory", default="examples/inventory/h200-nomig.json", help="for rendering the plans")
    ap.add_argument("--peak", type=float, default=317.37275390625,
                    help="req/s; default 0.5 x the A+S+T capacity 634.7455 of the H200 runs (not recomputed)")
    ap.add_argument("--durations", default=",".join(f"{d:g}" for d in DAYS), help="day replayed in these seconds")
    ap.add_argument("--applies", default="0,10,25", help="apply times in seconds")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--coarse", default="", help="DURATION:INTERVAL,... controller intervals overriding --interval")
    ap.add_argument("--features", default="ast", help="system: ast (JigsawServe), at, st, as")
    ap.add_argument("--surge-poll", type=float, default=Policy().surge_poll_s,
                    help="the controller's surge checks between steps, every this many seconds (0: none)")
    ap.add_argument("--surge-rise-z", type=float, default=Policy().surge_rise_z,
                    help="the surge checks take a rise within this many standard deviations of the arrivals' "
                         "noise (Poisson's times the square root of their measured dispersion) for none")
    ap.add_argument("--noise-z", type=float, default=Policy().noise_z,
                    help="the controller's margins for noise beyond Poisson's, in standard deviations (0: none)")
    ap.add_argument("--headroom", type=float, default=0.5, help="plan for forecast x (1 + headroom), as h200_eval.py")
    ap.add_argument("--shed-limit", type=float, default=Policy().shed_limit,
                    help="the controller steps a plan up when this share of the requests was shed (0: never)")
    ap.add_argument("--down-on-rise", action="store_true",
                    help="let a down replan go below what rising arrivals project (the rule before fb699cd)")
    ap.add_argument("--efficiency", type=float, default=1.0,
                    help="the share of its planned demand a plan really serves (capacity = plan x this)")
    ap.add_argument("--time-limit", type=float, default=PlanOptions().time_limit,
                    help="seconds a plan's solve may take (a loaded machine may need more than the default)")
    ap.add_argument("--poisson-seed", type=int, default=None,
                    help="the controller counts Poisson arrivals with this seed (as the load generator sends them)")
    args = ap.parse_args()
    profiles = load_profiles(ROOT / args.profiles)
    gpu = gpu_type(default_gpu(profiles))
    features = Features.parse(args.features)
    setup = Setup(load_app(ROOT / args.app), profiles, gpu,
                  PlanOptions(features=features, gpus=1, time_limit=args.time_limit),
                  from_file(ROOT / args.inventory),
                  Policy(headroom=args.headroom, surge_poll_s=args.surge_poll, surge_rise_z=args.surge_rise_z,
                         noise_z=args.noise_z, shed_limit=args.shed_limit, down_on_rise=args.down_on_rise),
                  arrivals_seed=args.poisson_seed, efficiency=args.efficiency)
    day = scale_to_peak(synthetic_diurnal(), args.peak)
    coarse = {float(d): float(i) for d, i in (x.split(":") for x in args.coarse.split(",") if x)}
    runs = []
    for duration in map(float, args.durations.split(",")):
        interval = coarse.get(duration, args.interval)
        for apply_s in map(float, args.applies.split(",")):
            started = time.time()
            r = simulate(setup, compress(day, duration), interval, apply_s)
            r = {"duration_s": duration, "interval_s": interval, "apply_s": apply_s,
                 "wall_s": round(time.time() - started, 1), **r}
            runs.append(r)
            print(fmt_row(r, gpu.slices), flush=True)
    validation, meas = None, {}
    if setup.app.name == "traffic" and features.label == "A+S+T":  # the H200 runs to compare with
        # as the controller ran there: no surge checks; the 100 s run (call 2) also before horizon()
        started = time.time()
        as_measured = replace(setup, policy=replace(setup.policy, surge_poll_s=0.0))
        validation = {"200": simulate(as_measured, compress(day, 200.0), args.interval, 25.0),
                      "100": simulate(as_measured, compress(day, 100.0), args.interval, 25.0),
                      "100_no_horizon": simulate(as_measured, compress(day, 100.0), args.interval, 25.0,
                                                 horizon_apply_s=0.0),
                      "policy": repr(as_measured.policy), "wall_s": round(time.time() - started, 1)}
        meas = measured()
    command = shlex.join(["python3", "bench/ramp.py", *sys.argv[1:]])
    md = report(runs, validation, meas, command, day, gpu.slices, setup)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                            check=False).stdout.strip()
    out = Path(args.out)
    out.write_text(json.dumps({
        "command": command, "app": args.app, "profiles": args.profiles, "peak_rps": args.peak, "gpu_type": gpu.name,
        "features": features.label, "gpus": 1, "forecaster": "HoltQuantile()", "policy": repr(setup.policy),
        "runs": runs, "validation": validation, "measured": meas,
        "git_commit": commit,
        "date": dt.datetime.now(dt.UTC).isoformat(), "python": platform.python_version(),
        "total_wall_s": round(sum(r["wall_s"] for r in runs) + (validation["wall_s"] if validation else 0.0), 1)},
        indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
