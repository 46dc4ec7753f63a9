"""The online controller (``jigsaw watch``): measure demand, forecast it, replan and apply.

Every interval it scrapes the server's metrics (arrivals at the app's model, the variants the
stages routed to, each runner's batch times), feeds the measured rate to a forecaster and decides
with ``decide``:

- up at once when the forecast exceeds the demand the current plan was made for (under-provisioning
  costs SLO violations) by more than ``noise_z`` standard deviations of an interval's rate beyond
  Poisson's, or exceeds it at ``up_intervals`` steps running;
- down only when the forecast plus ``noise_z`` standard deviations of an interval's rate stays below
  ``down_ratio`` of it, the plan has served at least ``down_cooldown`` intervals, and the new plan's
  demand (for that forecast plus its noise) is at most ``down_ratio_target`` of the current one
  (hysteresis: no flapping on noise, no near-identical replans), and covers, while arrivals rise, the
  rate the surge check projects (below): a forecast that still trails a fall misses a rise that has
  begun, and the smaller plan would be outrun within an apply;
- between steps, every ``surge_poll_s``, up at once when the arrival rate projected to when a plan
  made now would be in place (the rate over the last ``surge_window_s``, plus its rise since the window
  before times half a window, the last apply's duration and one poll) exceeds the demand the plan was made for
  by more than ``noise_z`` standard deviations of the window's rate beyond Poisson's
  (``surge``): on a steep ramp the next step would come too late, and a plan for today's rate would be
  outrun by the time it is applied. Its plan takes ``surge_headroom`` over the projection when given
  (the projection already looks ahead; by default the headroom);
- between steps too, up at once by the headroom (the plan's demand x (1 + ``headroom``)) when the stages
  shed more than ``shed_limit`` of the requests that arrived over the last ``surge_window_s`` (drops at
  any stage plus late answers at the sinks), the arrivals under the plan's demand and the plan in force
  for that whole window (``shedding``): a plan that sheds below its demand delivers less than its
  profiles promised (runners slower on a busy GPU, batches that whole requests do not fill), which no
  forecast sees. Down replans then stop at the demand stepped up to while the forecast stays at or
  above the rate that shed (a smaller plan would shed again);
- the new plan is made for forecast x (1 + ``headroom``) and moved onto the server with
  ``control.apply`` (no failed requests; a failed load rolls back and the old plan keeps serving);
  while an apply blocks the controller, a thread keeps sampling the arrivals every ``surge_poll_s``
  (``sample_applies``), so that the surge checks after it measure the windows it spanned;
- the forecast looks as far ahead as a plan made now must last: until the one after it can be in
  place, one interval plus an apply later (the last apply's duration), so
  ``max(forecast(1), forecast(1 + ceil(apply_s / interval)))``: on a ramp, applies that take several
  intervals would otherwise always trail the demand.

Noise: the arrivals' index of dispersion (``forecast.Dispersion``: a count's variance over its mean, 1 for
Poisson arrivals) is measured from the arrival counts of every scrape at least ``DISPERSION_MIN_S`` apart.
Poisson noise is what these rules and the headroom were made on (a steady Poisson load keeps one plan); a
rate that fluctuates beyond it (the noisy-steady trace: 20% per second) made the surge check and the
steps go up on high draws and down on low ones, so the surge check's rise test scales Poisson's standard
deviation by the square root of the dispersion, and the margins above are in the measured noise.

Profile refinement: a runner whose measured mean batch time exceeds its profiled p95 at the same
batch (the batch that ran: rows requested plus the rows a runner padded its batches with up to a
size it captured, ``jigsaw_runner_padding_rows_total``) by more than ``refine_drift`` gets that
variant's profile rows for its segment scaled by the measured ratio, and the app is replanned. Only
slowdowns are folded in: a profile's latency also budgets Triton's per-call overhead, which a
runner's compute time does not show.

Fan-out refinement (typed apps, whose fan-out is the data's): per edge and parent variant, the child
items its adapter made per parent item since the controller's first scrape (``fanout.FanoutMeter`` over
the ``jigsaw_edge_*_items_total`` counters); once at least ``fanout_min_items`` parent items were seen and
the measured factor differs from the one the plan used by more than ``fanout_drift`` of it and by more
than ``fanout_z`` standard errors of the measurement (``fanout.drifted``), the app's
factor for that variant is replaced by the measured one (a ``fanout`` event per edge and variant every
interval, ``refined`` when it replaced it) and the app is replanned.

Standby (``standby``): beside the live plan, the runners of a plan for its demand x (1 + headroom)^2 (the
most the next up replan asks for while the forecast stays within one headroom of the plan) stay loaded and
ready in no route, as far as ``standby_slices`` allows (by default, on real MIG the GPUs' spare slices: a
standby segment needs a free MIG device of its size, which binding takes in inventory order, so there it
stands by only where the later plan binds alike; with MIG emulated by MPS the GPUs' slices, since a standby
runner is an idle process holding its memory only). An up replan
to a demand that plan covers takes it: every runner is loaded with the same config, so the apply is a
routing-file swap, with nothing on the critical path. Its runners are named apart from any model the server
holds under another config (``render.name_apart``), so loading them changes nothing that serves. After each
switch the models of the old plans stay until the next standby plan is loaded beside the new one (what
neither needs then drains and unloads). A cold apply still happens when the demand outruns the standby plan,
on down replans (a new, smaller plan: its runners load first; often already loaded), after a profile or
fan-out refinement (the standby was planned with the old figures), and when no standby fits.

Healing: a runner whose stub died stays dead (Triton 2.51 neither restarts it nor calls it unready); the
stages route around it and count it (``jigsaw_runner_down_total``), and at its next look (a step or a surge
check) the controller loads that runner of its plan again (``reload_runner``, a ``reload`` event).

Every decision is appended to ``events.jsonl`` (orchestrator/reporting/report.py reads it).
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jigsawserve.triton_backend.backlog import DOWN_METRIC
from jigsawserve.triton_backend.variants import PADDING_METRIC

from ..spec.appspec import AppSpec
from ..errors import InfeasibleError, UnreachableError
from .fanout import FanoutMeter, drifted, edge_counts, with_factors
from .forecast import Dispersion, Forecaster
from ..spec.gpus import GpuType
from ..serving.inventory import Inventory
from ..serving.metrics import Scrape, increase, requests_total, scrape
from ..planning.plan import Plan
from ..planning.planner import PlanOptions, make_plan
from ..spec.profiles import Profiles
from .refinement import batch_times_ms, scaled
from ..serving.render import (ADMISSION_RESERVE, Rendered, build_configs, name_apart, runner_name, with_standby,
                     write_repository)

STAGE_COUNTERS = {"requests": "jigsaw_stage_requests_total", "drops": "jigsaw_stage_drops_total",
                  "misses": "jigsaw_stage_deadline_misses_total"}
RUNNER_COUNTERS = {"batches": "nv_inference_exec_count_total", "rows": "nv_inference_count_total",
                   "requests": "nv_inference_request_success_total", "padding": PADDING_METRIC,
                   "compute_us": "nv_inference_compute_infer_duration_us_total",
                   "queue_us": "nv_inference_queue_duration_us_total"}


@dataclass(frozen=True)
class Policy:
    headroom: float = 0.30
    down_ratio: float = 0.70
    down_cooldown: int = 3
    down_ratio_target: float = 0.9   # a down replan must shrink the planned demand by at least 10%
    refine_drift: float = 0.25
    refine_min_batches: int = 20
    fallback: tuple[float, ...] = (0.85, 0.7, 0.55)   # of the demand, tried when it cannot be planned
    surge_poll_s: float = 2.0    # between steps, check this often whether arrivals will outrun the plan (0: never)
    surge_window_s: float = 6.0  # the surge checks' rate is over this long, its rise against the window before
    surge_rise_z: float = 1.0    # a rise within this many standard deviations of the arrivals' noise counts as none
    noise_z: float = 2.0         # a surge or a step goes up at once only this many standard deviations of the
    #                              arrivals' noise beyond Poisson's over the plan's demand, a down replan judges the
    #                              forecast plus this many of the whole noise (``rate_noise``, ``decide``; 0: off)
    up_intervals: int = 2        # ... or when the forecast stays over the plan's demand this many steps running
    shed_limit: float = 0.02     # between steps, step the plan up when the stages shed more than this share (0: never)
    shed_min: int = 20           # ... and at least this many requests, over the last surge window
    down_on_rise: bool = False   # allow a down replan below what rising arrivals project (``projection``)
    surge_headroom: float | None = None  # a surge's plan is for the projection x (1 + this); None: ``headroom``
    sample_applies: bool = True  # while an apply blocks the controller, sample arrivals every surge_poll_s (``sample``)
    admission_reserve: float = ADMISSION_RESERVE  # of a request's budget, held back by the stages' admission
    fanout_drift: float = 0.10   # replan when a measured fan-out differs from the planned by more than this share
    fanout_min_items: int = 20   # ... measured over at least this many parent items (0: never refine fan-out)
    fanout_z: float = 2.0        # ... and by more than this many standard errors of the measurement (fanout.drifted)
    standby: bool = False        # keep the runners of a plan for more demand loaded, in no route (``standby_plan``)
    standby_step: float | None = None  # ... for the plan's demand x (1 + this); None: (1 + headroom)^2 - 1
    standby_slices: int | None = None  # ... its runners beside the live plan's take at most this many slices;
    #                                    None: real MIG the GPUs' spare slices, emulated MIG all (``_standby_cap``)


DISPERSION_MIN_S = 1.0  # the arrivals' dispersion is measured over counts of at least this many seconds
MIN_PLANNED_RPS = 1.0  # with no traffic the controller plans for this much: the least plan, not an error


def decide(planned_rps: float, forecast_rps: float, intervals_in_plan: int, policy: Policy,
           noise_rps: float = 0.0, extra_rps: float = 0.0, intervals_over: int = 1) -> float | None:
    """The demand to replan for, or None to keep the current plan. ``noise_rps``: the standard deviation of
    an interval's measured rate at a steady demand; ``extra_rps``: its part beyond Poisson's (0 for Poisson
    arrivals); ``intervals_over``: the steps running, this one included, whose forecast exceeded the
    planned demand.

    Up when the forecast exceeds the planned demand by ``noise_z`` x ``extra_rps``, or exceeds it at all
    ``up_intervals`` steps running: one noisy interval is no ramp, and a forecast fed mostly by the last
    interval carries its noise; Poisson's is already borne by the headroom, and going up must not wait.
    Down judges the forecast plus ``noise_z`` x ``noise_rps`` and plans for that: a down replan taken at a
    low draw of the noise would plan for that draw, and the next high one would take the plan up again
    (going down is never urgent)."""
    if forecast_rps > planned_rps + policy.noise_z * extra_rps or (
            forecast_rps > planned_rps and intervals_over >= policy.up_intervals):
        return forecast_rps * (1 + policy.headroom)
    high = forecast_rps + policy.noise_z * noise_rps
    if high < planned_rps * policy.down_ratio and intervals_in_plan >= policy.down_cooldown:
        target = max(high * (1 + policy.headroom), MIN_PLANNED_RPS)
        # with (1 + headroom) x down_ratio >= 1 the target can be close to, or above, the current plan
        return target if target <= planned_rps * policy.down_ratio_target else None
    return None


class EventLog:
    """events.jsonl, times in seconds from ``origin`` (``time.time()``)."""

    def __init__(self, path: Path, origin: float) -> None:
        self.path, self.origin = Path(path), origin
        self._lock = threading.Lock()

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"t": round(time.time() - self.origin, 3), "kind": kind, **fields})
        with self._lock, self.path.open("a") as fh:
            fh.write(line + "\n")


class Controller:
    """Keeps one app's plan matched to its demand on one running server."""

    def __init__(self, app: AppSpec, profiles: Profiles, gpu: GpuType, opts: PlanOptions, inventory: Inventory,
                 repo: Path, metrics_url: str, forecaster: Forecaster, events: EventLog,
                 policy: Policy = Policy(), apply_plan: Callable[[Any], None] | None = None,
                 progress: Callable[[str], None] = print) -> None:
        self.app, self.profiles, self.gpu, self.opts = app, profiles, gpu, opts
        self.inventory, self.repo, self.metrics_url = inventory, Path(repo), metrics_url
        self.forecaster, self.events, self.policy = forecaster, events, policy
        self.apply_plan, self.progress = apply_plan, progress
        self.plan: Plan | None = None
        self.intervals_in_plan = 0
        self.last: Scrape | None = None
        self.refine_pending = False
        self.interval_s: float | None = None  # set by run()
        self.apply_s = 0.0                    # how long the last apply took
        self.observed = 0                     # rates the forecaster has seen
        self.dispersion = Dispersion()        # how much noisier than Poisson the arrivals are (``_arrived``)
        self.counted: tuple[float, float] | None = None  # (time, arrivals) last fed to ``dispersion``
        self.intervals_over = 0               # steps running whose forecast exceeded the plan's demand
        self.surge_failed = False             # a surge found no larger plan: not again until the next step
        self.arrivals: deque[tuple[float, float, float]] = deque()  # (time, requests, shed so far) per scrape
        self.plan_seen_since: float | None = None  # the first scrape under the plan in force
        # after a shedding step-up: (the arrival rate that shed, the demand stepped up to); down replans
        # stop at that demand while the forecast stays at or above that rate
        self.shed_floor: tuple[float, float] | None = None
        self.fanout = FanoutMeter()               # the edges' measured fan-out since the first scrape
        self.reload_runner: Callable[[str], None] | None = None  # loads a runner again (control.reload_runner)
        self.down_seen: dict[str, float] = {}     # per runner, the stages' down count when last healed
        self.rendered: Rendered | None = None     # what the server holds: the live plan's models and the standby's
        self.standby: Plan | None = None          # the plan whose runners stand by (``standby_plan``)

    # -- planning ---------------------------------------------------------------------------------

    def _make(self, demand: float) -> Plan:
        """A plan for ``demand`` whose paths fit what the stages' admission leaves of the SLO."""
        opts = replace(self.opts, latency_reserve=self.policy.admission_reserve)
        return make_plan(self.app, self.profiles, self.gpu, demand, opts)

    def _render(self, plan: Plan) -> Rendered:
        return build_configs(plan, self.inventory, admission_reserve=self.policy.admission_reserve)

    def _standby_cap(self, plan: Plan) -> float:
        """The slices standby runners may take beside ``plan``'s: ``standby_slices`` when given; on real MIG the
        GPUs' spare slices (a standby segment holds a MIG device); with MIG emulated by MPS the GPUs' whole
        slices (an idle standby process holds its memory only: on one H100 the spare slices left the traffic
        app's scale-ups past half the GPU cold); unbounded for CPU slices of unlimited GPUs."""
        if self.policy.standby_slices is not None:
            return self.policy.standby_slices
        gpus = self.opts.gpus or len(self.inventory.gpus)
        if not gpus:
            return math.inf
        emulated = self.gpu.mig and self.inventory.gpus and not any(d.mig_enabled for d in self.inventory.gpus)
        return gpus * self.gpu.slices if emulated else max(0, gpus * self.gpu.slices - plan.slices)

    def standby_plan(self, plan: Plan, live: Rendered) -> Plan | None:
        """The plan to keep standing by beside ``plan`` (rendered ``live``): for ``plan``'s demand x (1 +
        ``standby_step``), or the largest of the fallback fractions of that which can be planned and whose
        runners not already in ``live`` fit ``standby_slices``; its runners named apart from every model the
        server holds (``render.name_apart``). An up replan to a demand it covers then takes it with a routing
        swap: nothing loads on the critical path. None when no such plan exists."""
        step = self.policy.standby_step if self.policy.standby_step is not None else (1 + self.policy.headroom) ** 2 - 1
        cap = self._standby_cap(plan)
        taken = {**(self.rendered.configs if self.rendered else {}), **live.configs}
        for fraction in (1.0, *self.policy.fallback):
            target = plan.demand_rps * (1 + step) * fraction
            if target <= plan.demand_rps * (1 + step / 4):
                break
            try:
                candidate = name_apart(self._make(target), self.inventory, taken, self.policy.admission_reserve)
            except InfeasibleError:
                continue
            extra = sum(e.count * e.mig for e in candidate.entries if runner_name(self.app.name, e) not in live.configs)
            if extra <= cap:
                self.events.write("standby", demand_rps=round(target, 3), slices=candidate.slices, extra_slices=extra)
                return candidate
            self.events.write("standby_skipped", demand_rps=round(target, 3), extra_slices=extra, cap_slices=cap)
        return None

    def _with_standby(self, plan: Plan) -> Rendered:
        """``plan`` rendered, with a standby plan's runners beside it when the policy keeps one."""
        live = self._render(plan)
        self.standby = self.standby_plan(plan, live) if self.policy.standby else None
        return with_standby(live, self._render(self.standby)) if self.standby else live

    def initial(self, demand: float) -> Plan:
        """Plan for ``demand`` and write the repository the server will start from."""
        self.plan = self._make(demand)
        self.rendered = self._with_standby(self.plan)
        write_repository(self.rendered, self.repo)
        self.events.write("plan", plan=self.plan.to_json(), demand_rps=demand, capacity_rps=demand, reason="initial")
        self.progress(f"initial plan for {demand:.1f} req/s: {self.plan.slices} slices, "
                      f"accuracy {self.plan.accuracy:.3f}")
        return self.plan

    def _best_effort(self, demand: float, reason: str) -> tuple[Plan, float] | None:
        """A plan for ``demand``, else for the largest of a few lower demands still above the current
        plan's (the resources cap what can be served); None when even those fail."""
        assert self.plan is not None
        for fraction in (1.0, *self.policy.fallback):
            target = demand * fraction
            if fraction < 1.0 and target <= self.plan.demand_rps:
                break
            try:
                return self._make(target), target
            except InfeasibleError as exc:
                self.events.write("infeasible", demand_rps=target, reason=f"{reason}: {exc}")
                self.progress(f"no plan for {target:.1f} req/s ({exc.binding or exc})")
        return None

    def _replan(self, demand: float, reason: str) -> None:
        """Move to a plan for ``demand``: the standby plan when it is for more than the current plan and
        covers ``demand`` (its runners are loaded: a routing swap), else a new one. With standby on, every
        model the server holds stays through the switch (no unload, no reload of one the new plan may
        want), and the next standby plan is loaded after it, off the critical path."""
        assert self.plan is not None
        standby = self.standby
        if standby is not None and self.plan.demand_rps < demand <= standby.demand_rps:
            plan, demand, reason = standby, standby.demand_rps, f"{reason}; standby plan"
        else:
            found = self._best_effort(demand, reason)
            if found is None:
                self.progress("keeping the current plan")
                return
            plan, demand = found
        started = time.time()
        live = self._render(plan)
        rendered = with_standby(live, self.rendered) if self.policy.standby and self.rendered else live
        try:
            report = self._apply(rendered)
        except (RuntimeError, UnreachableError) as exc:  # rolled back, or not reached: the old plan stays
            self.events.write("apply_failed", demand_rps=demand, reason=str(exc))
            self.progress(f"apply failed, old plan keeps serving: {exc}")
            return
        self.plan, self.intervals_in_plan, self.intervals_over, self.plan_seen_since = plan, 0, 0, None
        self.rendered = rendered
        serving_s = getattr(report, "serving_s", None)  # the apply's own; waited_s before it (Applier)
        self.apply_s = getattr(report, "waited_s", 0.0) + serving_s if serving_s else time.time() - started
        self.events.write("plan", plan=plan.to_json(), demand_rps=demand, capacity_rps=demand, reason=reason,
                          apply_s=round(self.apply_s, 2), standby=plan is standby,
                          waited_s=round(getattr(report, "waited_s", 0.0), 2))
        self.progress(f"replanned for {demand:.1f} req/s ({reason}): {plan.slices} slices, accuracy "
                      f"{plan.accuracy:.3f}, serving in {self.apply_s:.1f} s")
        if self.policy.standby:
            self.restandby()

    def restandby(self) -> None:
        """Plan the next standby for the plan in force and load it beside it (what neither needs unloads
        after its drain)."""
        assert self.plan is not None
        rendered = self._with_standby(self.plan)
        try:
            self._apply(rendered)
        except (RuntimeError, UnreachableError) as exc:
            self.standby = None
            self.events.write("standby_failed", reason=str(exc))
            self.progress(f"standby not loaded: {exc}")
            return
        self.rendered = rendered

    def _apply(self, rendered: Rendered) -> Any:
        """``apply_plan``, while a thread samples the arrivals every ``surge_poll_s`` (``sample``): the
        surge checks after a long apply then see the windows it spanned, not a line drawn across them (on
        the H200 a rise that began during a 14 s apply fired the surge 7 s after it; the sampled windows
        would have shown it at the first check, bench/README.md)."""
        assert self.apply_plan is not None
        if not (self.policy.sample_applies and self.policy.surge_poll_s):
            return self.apply_plan(rendered)
        stop = threading.Event()

        def sampling() -> None:
            while not stop.wait(self.policy.surge_poll_s):
                try:
                    self.sample()
                except Exception:  # noqa: BLE001 (a missed sample: the checks interpolate across it, as before)
                    pass

        sampler = threading.Thread(target=sampling, name="arrival-sampler", daemon=True)
        sampler.start()
        try:
            return self.apply_plan(rendered)
        finally:
            stop.set()
            sampler.join()

    def sample(self) -> None:
        """Keep one scrape's arrival and shed counts for the surge checks, acting on nothing."""
        self._arrived(scrape(self.metrics_url, time.time()))

    # -- one interval -----------------------------------------------------------------------------

    def _refine(self, prev: Scrape, now: Scrape) -> list[str]:
        """Fold runner slowdowns into the profiles; the refined variants."""
        assert self.plan is not None
        refined = []
        for e in self.plan.entries:
            name = runner_name(self.app.name, e)
            d = {key: increase(prev.total(metric, model=name), now.total(metric, model=name))
                 for key, metric in RUNNER_COUNTERS.items()}
            if d["batches"] < self.policy.refine_min_batches:
                continue
            measured, expected = batch_times_ms(self.app, self.profiles, self.gpu.name, e, d) or (0.0, None)
            if expected and measured > expected * (1 + self.policy.refine_drift):
                ratio = measured / expected
                profile = self.app.task(e.task).variant(e.variant).profile
                self.profiles = scaled(self.profiles, profile, self.gpu.name, e.mig, e.mps, ratio)
                self.events.write("refine", variant=profile, mig=e.mig, mps=e.mps, measured_ms=round(measured, 3),
                                  profiled_ms=round(expected, 3), ratio=round(ratio, 3))
                refined.append(f"{profile} {e.mig}g x{e.mps} x{ratio:.2f}")
        return refined

    def _refine_fanout(self) -> list[str]:
        """Replace the app's edge factors by the measured fan-out where it differs from the planned by more
        than ``fanout_drift`` (over at least ``fanout_min_items`` parent items); the refined edges."""
        if not self.policy.fanout_min_items:
            return []
        changed, notes = {}, []
        edges = {(e.src, e.dst): e for e in self.app.edges}
        for key in sorted(self.fanout.totals):
            src, dst, variant = key
            measured, parents, children = self.fanout.factor(key)
            if (src, dst) not in edges or parents < self.policy.fanout_min_items:
                continue
            planned = edges[src, dst].factor_for(variant)
            refine = drifted(measured, planned, parents, self.policy.fanout_drift, self.policy.fanout_z)
            self.events.write("fanout", edge=f"{src}->{dst}", variant=variant, planned=planned,
                              measured=round(measured, 4), parents=parents, children=children, refined=refine)
            if refine:
                changed[key] = measured
                notes.append(f"{src}->{dst} after {variant} {planned:g} -> {measured:.3g}")
        if changed:
            self.app = with_factors(self.app, changed)
        return notes

    def record_metrics(self) -> Scrape:
        """Scrape the server and log, as counted so far: the variants the stages routed to, each stage's
        requests, drops and deadline misses, and the ``RUNNER_COUNTERS`` of each of the plan's runners
        and of the graph model (what a run's record needs to tell where capacity and time went;
        ``bench/refine_check.py`` reads them)."""
        now = scrape(self.metrics_url, time.time())
        app = self.app.name
        items = now.by_label("jigsaw_stage_variant_items_total", "task", "variant", app=app)
        stages = {key: {t: n for (t,), n in now.by_label(metric, "task", app=app).items()}
                  for key, metric in STAGE_COUNTERS.items()}
        names = sorted({runner_name(app, e) for e in self.plan.entries}) if self.plan else []
        runners = {name: {key: now.total(metric, model=name) for key, metric in RUNNER_COUNTERS.items()}
                   for name in names}
        # the graph model's own counters: its queue time is what a request waited before a graph
        # instance took it, which no stage sees (docs/runtime.md, task stages)
        graph = {key: now.total(metric, model=app) for key, metric in RUNNER_COUNTERS.items()}
        self.events.write("metrics", variant_items={f"{t}/{v}": n for (t, v), n in items.items()},
                          stages=stages, runners=runners, graph=graph)
        return now

    def heal(self, now: Scrape) -> list[str]:
        """Reload the plan's runners that the stages found down since the last look (their stubs died: the
        stages route around them meanwhile, ``DOWN_S``); the runners reloaded."""
        if self.plan is None or self.reload_runner is None:
            return []
        healed = []
        live = {runner_name(self.app.name, e) for e in self.plan.entries}
        for (model,), n in now.by_label(DOWN_METRIC, "model", app=self.app.name).items():
            seen, self.down_seen[model] = self.down_seen.get(model), n
            if model not in live or (seen is not None and n <= seen):
                continue
            try:
                self.reload_runner(model)
            except Exception as exc:  # noqa: BLE001 (tried again when the stages count it down again)
                self.events.write("reload_failed", model=model, reason=str(exc))
                self.progress(f"runner {model} is down; reloading it failed: {exc}")
                continue
            self.events.write("reload", model=model, down_count=n)
            self.progress(f"runner {model} was down (its stub died): reloaded")
            healed.append(model)
        return healed

    def step(self) -> None:
        """Measure the last interval, forecast the next, and replan if the policy says so."""
        assert self.plan is not None
        now = self.record_metrics()
        self.heal(now)
        self._arrived(now)
        self.fanout.update(edge_counts(now, self.app.name))
        prev, self.last, self.surge_failed = self.last, now, False
        if prev is None:
            return
        arrived = increase(requests_total(prev, self.app.name), requests_total(now, self.app.name))
        rate = arrived / (now.t - prev.t)
        self.forecaster.observe(rate)
        self.observed += 1
        steps = self.horizon()
        forecast = max(self.forecaster.forecast(1), self.forecaster.forecast(steps))
        self.intervals_in_plan += 1
        self.intervals_over = self.intervals_over + 1 if forecast > self.plan.demand_rps else 0
        noise, extra = self.rate_noise(rate, now.t - prev.t)
        self.events.write("interval", demand_rps=round(rate, 3), forecast_rps=round(forecast, 3),
                          horizon=steps, planned_rps=self.plan.demand_rps, noise_rps=round(noise, 3),
                          dispersion=round(self.dispersion.index(), 3))
        refined = self._refine(prev, now)
        fanned = self._refine_fanout()
        target = decide(self.plan.demand_rps, forecast, self.intervals_in_plan, self.policy, noise, extra,
                        self.intervals_over)
        if self.shed_floor is not None and forecast < self.shed_floor[0]:
            self.shed_floor = None
        if target is not None and target < self.plan.demand_rps and self.shed_floor is not None:
            target = self._down_to_at_least(target, self.shed_floor[1])  # a plan under it shed at this rate
        if target is not None and target < self.plan.demand_rps and not self.policy.down_on_rise:
            _, rise, _, projected = self.projection()
            if rise > 0:  # the forecast lags a rise that has begun: the smaller plan would meet it
                target = self._down_to_at_least(target, projected * (1 + self.policy.headroom))
        if refined or fanned:
            self.standby = None  # planned with the old profiles or fan-out
            reasons = ([f"profile refined: {', '.join(refined)}"] if refined else []) + (
                [f"fan-out measured: {', '.join(fanned)}"] if fanned else [])
            self._replan(max(target or 0.0, self.plan.demand_rps), "; ".join(reasons))
        elif target is not None:
            direction = "up" if target > self.plan.demand_rps else "down"
            self._replan(target, f"forecast {forecast:.1f} req/s, {direction} from {self.plan.demand_rps:.1f}")

    def _down_to_at_least(self, target: float, floor: float) -> float | None:
        """A down replan's target raised to ``floor``; None when that no longer shrinks the plan by
        ``1 - down_ratio_target``."""
        assert self.plan is not None
        target = max(target, floor)
        return None if target > self.plan.demand_rps * self.policy.down_ratio_target else target

    def _shed(self, now: Scrape) -> float:
        """Requests the stages shed so far: drops at any stage plus answers late at a sink (a request
        dropped at two parallel stages counts twice)."""
        app = self.app.name
        drops = now.total(STAGE_COUNTERS["drops"], app=app)
        late = sum(n for (task,), n in now.by_label(STAGE_COUNTERS["misses"], "task", app=app).items()
                   if task in self.app.sinks)
        return drops + late

    def _arrived(self, now: Scrape) -> None:
        """Keep the app's arrival and shed counts of a scrape for the surge checks (two windows back and
        one before), and feed the arrivals since the last count of at least ``DISPERSION_MIN_S`` to
        ``dispersion``: counted every poll, a ramp bends little between counts, and the noise is measured
        within a minute."""
        total = requests_total(now, self.app.name)
        if self.arrivals and total < self.arrivals[-1][1]:   # the counter restarted: history is void
            self.arrivals.clear()
            self.counted = None
        if self.counted is None:
            self.counted = (now.t, total)
        elif now.t - self.counted[0] >= DISPERSION_MIN_S:
            self.dispersion.observe(total - self.counted[1], now.t - self.counted[0])
            self.counted = (now.t, total)
        self.arrivals.append((now.t, total, self._shed(now)))
        if self.plan_seen_since is None:
            self.plan_seen_since = now.t
        while len(self.arrivals) > 2 and self.arrivals[1][0] <= now.t - 2 * self.policy.surge_window_s:
            self.arrivals.popleft()

    def rate_noise(self, rate: float, seconds: float) -> tuple[float, float]:
        """(noise, extra): the standard deviation of a rate measured over ``seconds`` at a steady ``rate``
        (Poisson's times the square root of the arrivals' measured ``Dispersion``), and its part beyond
        Poisson's (0 for Poisson arrivals, whose noise the checks' rules were made to bear)."""
        if seconds <= 0:
            return 0.0, 0.0
        poisson = max(rate, 0.0) / seconds
        d = self.dispersion.index()
        return math.sqrt(d * poisson), math.sqrt((d - 1) * poisson)

    def arrival_trend(self) -> tuple[float, float]:
        """(rate, rise): the arrival rate over the last ``surge_window_s`` (less when fewer seconds were
        seen), and how fast it rose, in req/s per s, against the window before: 0 until two windows were
        seen, for a fall, and when the later window's count exceeds the earlier's by no more than
        ``surge_rise_z`` standard deviations of the arrivals' noise (Poisson's, the square root of their
        sum, times that of the measured dispersion), so that noise at a steady rate, projected over an
        apply, does not look like a ramp. Counts between scrapes are interpolated linearly."""
        ts, counts, _ = zip(*self.arrivals)
        end, w = ts[-1], min(self.policy.surge_window_s, ts[-1] - ts[0])
        if w <= 0:
            return 0.0, 0.0
        c1, c2 = np.interp([end - w, end - 2 * w], ts, counts)
        now, before = counts[-1] - c1, c1 - c2
        noise = math.sqrt(self.dispersion.index() * (now + before))
        if end - ts[0] < 2 * w or now - before <= self.policy.surge_rise_z * noise:
            return float(now / w), 0.0
        return float(now / w), float((now - before) / w / w)

    def projection(self) -> tuple[float, float, float, float]:
        """(rate, rise, lead, projected): ``arrival_trend``'s rate and rise, and the rate projected to when a
        plan made now would be in place: ``lead`` seconds on, half a window (the rate's age), the last
        apply's duration and one poll."""
        rate, rise = self.arrival_trend()
        lead = self.policy.surge_window_s / 2 + self.apply_s + self.policy.surge_poll_s
        return rate, rise, lead, rate + rise * lead

    def surge(self) -> bool:
        """Between steps: project the arrival rate to when a plan made now would be in place (the rate over
        the last window, plus its rise times half a window, the last apply's duration and one poll); when
        that exceeds the demand the plan was made for by more than ``noise_z`` standard deviations of the
        window's rate beyond Poisson's (``rate_noise``: a check every poll meets every high draw of a noisy
        steady load), replan up at once rather than at the next step, for the larger of the projection and
        the forecast, plus headroom (``surge_headroom`` when given). The
        forecaster is not fed (it sees one rate per interval). Whether it replanned; after a surge that found
        no larger plan (the GPUs are full), none until the next step."""
        assert self.plan is not None
        if self.last is None or self.surge_failed or not self.policy.surge_poll_s:
            return False
        now = scrape(self.metrics_url, time.time())
        if now.t - self.arrivals[-1][0] < self.policy.surge_poll_s / 2:
            return False
        self.heal(now)
        self._arrived(now)
        rate, rise, lead, projected = self.projection()
        margin = self.policy.noise_z * self.rate_noise(rate, self.policy.surge_window_s)[1]
        if projected <= self.plan.demand_rps + margin:
            return self.shedding()
        forecast = max(projected, self.forecaster.forecast(self.horizon())) if self.observed else projected
        planned = self.plan.demand_rps
        self.events.write("surge", demand_rps=round(rate, 3), rise_rps_per_s=round(rise, 3), lead_s=round(lead, 2),
                          projected_rps=round(projected, 3), forecast_rps=round(forecast, 3), planned_rps=planned,
                          margin_rps=round(margin, 3))
        rising = f", rising {rise:.1f}/s: {projected:.1f} in {lead:.0f} s" if rise > 0 else ""
        headroom = self.policy.headroom if self.policy.surge_headroom is None else self.policy.surge_headroom
        return self._replan_up(forecast * (1 + headroom),
                               f"surge: {rate:.1f} req/s now{rising}, over the {planned:.1f} planned")

    def _replan_up(self, demand: float, reason: str) -> bool:
        """A check's replan up between steps; whether it changed the plan. One that found no larger plan
        (the GPUs are full) stops the checks until the next step."""
        assert self.plan is not None
        planned = self.plan.demand_rps
        self._replan(demand, reason)
        self.surge_failed = self.plan.demand_rps == planned
        return not self.surge_failed

    def shed_share(self) -> tuple[float, float] | None:
        """(share, requests): of the requests that arrived over the last ``surge_window_s``, the share the
        stages shed; None until the plan in force has been seen for a whole window."""
        ts, counts, shed = zip(*self.arrivals)
        w = self.policy.surge_window_s
        if self.plan_seen_since is None or ts[-1] - max(ts[0], self.plan_seen_since) < w:
            return None
        c0, s0 = np.interp(ts[-1] - w, ts, counts), np.interp(ts[-1] - w, ts, shed)
        arrived, lost = counts[-1] - c0, shed[-1] - s0
        return (float(lost / arrived) if arrived > 0 else 0.0), float(lost)

    def shedding(self) -> bool:
        """Step the plan up by the headroom when, under its demand, its stages shed more than ``shed_limit``
        of the requests over the last window (and at least ``shed_min``); whether it replanned."""
        assert self.plan is not None
        seen = self.shed_share() if self.policy.shed_limit else None
        if seen is None or seen[0] <= self.policy.shed_limit or seen[1] < self.policy.shed_min:
            return False
        share, lost = seen
        rate, _ = self.arrival_trend()
        planned = self.plan.demand_rps
        self.events.write("shed", share=round(share, 4), shed=lost, demand_rps=round(rate, 3), planned_rps=planned)
        self.shed_floor = (rate, planned * (1 + self.policy.headroom))
        return self._replan_up(self.shed_floor[1],
                               f"shedding: {100 * share:.1f}% of {rate:.1f} req/s dropped or late over "
                               f"{self.policy.surge_window_s:g} s, under the {planned:.1f} planned")

    def horizon(self) -> int:
        """Intervals ahead a plan made now must cover: 1 + the last apply's duration in intervals."""
        if not self.interval_s:
            return 1
        return 1 + math.ceil(self.apply_s / self.interval_s)

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Call ``step`` every ``interval_s`` seconds until ``stop`` is set; errors are logged, not fatal."""
        self.interval_s = interval_s
        next_t = time.monotonic()
        while not stop.is_set():
            try:
                self.step()
            except UnreachableError as exc:  # the server is down or restarting: the plan stays, retried next interval
                self.events.write("error", reason=str(exc))
                self.progress(f"controller step failed: {exc}; keeping the plan for "
                              f"{self.plan.demand_rps if self.plan else 0:g} req/s, retrying in {interval_s:g} s")
            except Exception as exc:  # a missed scrape or a solver error must not stop the controller
                self.events.write("error", reason=f"{type(exc).__name__}: {exc}")
                self.progress(f"controller step failed: {type(exc).__name__}: {exc}")
            next_t = max(next_t + interval_s, time.monotonic() + interval_s / 2)  # after a long apply: no burst of steps
            poll = self.policy.surge_poll_s or interval_s
            while not stop.wait(max(0.0, min(poll, next_t - time.monotonic()))) and time.monotonic() < next_t:
                try:
                    self.surge()
                except Exception as exc:  # as a step's: logged, not fatal
                    self.events.write("error", reason=f"surge check: {type(exc).__name__}: {exc}")
