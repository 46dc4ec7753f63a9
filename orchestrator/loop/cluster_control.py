"""The cluster's controller: keep the split of the demand across nodes matched to what arrives at the front door.

Every interval it reads the front door's arrival count (every inference request the cluster received, whether a
node took it or not), feeds the rate to a forecaster and decides with the one-node controller's rule
(``controller.decide``: up at once, down with hysteresis and a cooldown, the plan for forecast x (1 + headroom);
without the one-node controller's noise margins, surge, shedding, refinement and standby checks, which it does
not run);
a new demand is planned over the live nodes (``plan_cluster``, then at least ``spread`` nodes: ``spread_plan``)
and applied node by node (``ClusterServing.apply``: no failed request, rolled back across the cluster when a
node's apply fails). The front door's shares come with each apply.

Between steps it watches the nodes every ``poll_s``:

- a node lost (its Ray node dead or its ``NodeServer`` actor gone: ``ClusterServing.lost``) is dropped from the
  front door at once (``forget``: no new request goes there; the front door's own probe has usually done so
  already, the node's server being gone too), its capacity lost is logged, and the demand is replanned over the
  nodes left. A lost node is not planned on again under the same Ray node id: a machine that comes back rejoins
  with a new one, and is then a node added;
- a node added (a jigsaw node Ray counts live that was not seen before) is logged and the demand replanned over
  all live nodes, the new one included.

Decisions go to an ``EventLog`` (``cluster-events.jsonl``: ``interval`` with each node's requests so far,
``plan`` with the whole cluster plan, ``node_lost``, ``node_added``, ``infeasible``, ``apply_failed``,
``error``); ``orchestrator/reporting/cluster_report.py`` reads it.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

from ..spec.appspec import AppSpec
from ..planning.checker import TOL
from ..planning.cluster import ClusterPlan, NodeSpec, _whole_accuracy, plan_cluster
from .controller import MIN_PLANNED_RPS, EventLog, Policy, decide
from ..errors import InfeasibleError
from .forecast import Forecaster, HoltQuantile
from ..spec.gpus import GpuType
from ..planning.planner import PlanOptions, make_plan
from ..spec.profiles import Profiles
from ..serving.ray_cluster import ClusterApplyError, ClusterServing, cluster_nodes, live_nodes


def spread_plan(app: AppSpec, profiles: Profiles, gpu: GpuType, demand: float, nodes: list[NodeSpec], spread: int,
                opts: PlanOptions = PlanOptions()) -> ClusterPlan:
    """``plan_cluster``'s plan when it puts the demand on at least ``spread`` nodes (or all there are); else the
    demand over the ``spread`` nodes of the largest capacity, in proportion to their capacities, each node
    planned for its part. More slices than the fewest (every node serving holds every task), bought so that a
    node lost leaves others serving while the controller replans (with one node serving, its loss fails every
    request until another node's server has started). Falls back to ``plan_cluster``'s plan where that split's
    whole misses the accuracy SLO or a node's part has no plan."""
    best = plan_cluster(app, profiles, gpu, demand, nodes, opts)
    count = min(spread, len(nodes))
    if len(best.nodes) >= count:
        return best
    began = time.perf_counter()
    caps = best.capacity_rps
    chosen = sorted(nodes, key=lambda n: (-caps.get(n.name, 0.0), n.name))[:count]
    total = sum(caps.get(n.name, 0.0) for n in chosen)
    try:
        plans = {n.name: make_plan(app, profiles, gpu, demand * caps[n.name] / total, dataclasses.replace(opts, gpus=n.gpus))
                 for n in chosen}
    except InfeasibleError:
        return best
    accuracy = _whole_accuracy(app, list(plans.values()))
    if accuracy < app.accuracy_slo - TOL:
        return best
    return dataclasses.replace(
        best, nodes={n.name: plans[n.name] for n in nodes if n.name in plans}, accuracy=accuracy,
        solve_seconds=best.solve_seconds + time.perf_counter() - began,
        solver={**best.solver, "spread": {"nodes": count, "fewest_slices": best.slices}})


class ClusterController:
    """Keeps ``serving``'s cluster plan matched to the demand at its front door (module docstring). ``run`` in a
    thread of the driver, or ``step`` and ``watch`` by hand."""

    def __init__(self, app: AppSpec, profiles: Profiles, gpu: GpuType, serving: ClusterServing, events: EventLog,
                 opts: PlanOptions = PlanOptions(), policy: Policy = Policy(), forecaster: Forecaster | None = None,
                 spread: int = 1, poll_s: float = 0.5, progress: Callable[[str], None] = print) -> None:
        if serving.plan is None:
            raise RuntimeError("the cluster serves nothing: start it first")
        self.app, self.profiles, self.gpu, self.serving, self.events = app, profiles, gpu, serving, events
        self.opts = dataclasses.replace(opts, latency_reserve=policy.admission_reserve)  # as the one-node controller
        self.policy, self.spread, self.poll_s, self.progress = policy, spread, poll_s, progress
        self.forecaster = forecaster or HoltQuantile()
        self.demand_rps = serving.plan.demand_rps  # the demand the plan in force was made for
        self.intervals_in_plan = 0
        self.observed = 0  # rates the forecaster has seen
        self.seen = live_nodes()  # name -> Ray node id of every node known live
        self.quarantined: set[str] = set()  # Ray node ids of nodes lost: not planned on again
        self.lost: list[dict[str, Any]] = []  # the node_lost events
        self._last: tuple[float, int] | None = None  # (time, arrivals) at the last step
        self._log_plan(serving.plan, "initial plan", 0.0)

    def _log_plan(self, plan: ClusterPlan, reason: str, apply_s: float) -> None:
        self.events.write("plan", demand_rps=round(plan.demand_rps, 3), reason=reason, apply_s=round(apply_s, 3),
                          slices=plan.slices, nodes={n: {"slices": p.slices, "demand_rps": round(p.demand_rps, 3),
                                                         "share": round(plan.share(n), 4)}
                                                     for n, p in plan.nodes.items()},
                          plan=plan.to_json())

    def nodes(self) -> list[NodeSpec]:
        """The live nodes to plan on: not lost under their current Ray node id."""
        ids = live_nodes()
        return [s for s in cluster_nodes() if s.name in ids and ids[s.name] not in self.quarantined]

    def plan_for(self, demand: float) -> ClusterPlan:
        """The cluster plan for ``demand`` over the live nodes (``spread_plan``)."""
        nodes = self.nodes()
        if not nodes:
            raise InfeasibleError("no live node to plan on", binding="slices")
        return spread_plan(self.app, self.profiles, self.gpu, demand, nodes, self.spread, self.opts)

    def replan(self, demand: float, reason: str) -> bool:
        """Plan for ``demand`` (or the largest of ``policy.fallback``'s fractions of it that the live nodes serve)
        and apply it; whether the cluster moved. A plan that cannot be made or applied leaves the cluster as it
        was (an apply rolls itself back) and is logged."""
        began = time.monotonic()
        plan = None
        for fraction in (1.0, *self.policy.fallback):
            try:
                plan = self.plan_for(max(demand * fraction, MIN_PLANNED_RPS))
                break
            except InfeasibleError as exc:
                self.events.write("infeasible", demand_rps=round(demand * fraction, 3), reason=str(exc),
                                  binding=exc.binding)
        if plan is None:
            self.progress(f"cluster: no plan for {demand:.1f} req/s or the fallbacks ({reason}); keeping the plan")
            return False
        try:
            self.serving.apply(plan)
        except ClusterApplyError as exc:
            self.events.write("apply_failed", demand_rps=round(plan.demand_rps, 3), reason=str(exc))
            self.progress(f"cluster: {exc}")
            return False
        self.demand_rps, self.intervals_in_plan = plan.demand_rps, 0
        self._log_plan(plan, reason, time.monotonic() - began)
        self.progress(f"cluster: {reason}: {plan.demand_rps:.1f} req/s on {plan.slices} slices, "
                      + ", ".join(f"{n} {p.slices} slices ({plan.share(n):.0%})" for n, p in plan.nodes.items()))
        return True

    def step(self) -> None:
        """Measure the arrival rate since the last step, forecast, and replan when ``decide`` says so."""
        now, arrivals = time.time(), self.serving.arrivals()
        stats = self.serving.stats()
        last, self._last = self._last, (now, arrivals)
        if last is None:
            return
        rate = (arrivals - last[1]) / (now - last[0])
        self.forecaster.observe(rate)
        self.observed += 1
        forecast = self.forecaster.forecast(1)
        self.intervals_in_plan += 1
        self.events.write("interval", demand_rps=round(rate, 3), forecast_rps=round(forecast, 3),
                          planned_rps=round(self.demand_rps, 3), arrivals=arrivals,
                          nodes={n: {k: s[k] for k in ("requests", "failed", "up", "weight")} for n, s in stats.items()})
        target = decide(self.demand_rps, forecast, self.intervals_in_plan, self.policy)
        if target is not None:
            direction = "up" if target > self.demand_rps else "down"
            self.replan(target, f"forecast {forecast:.1f} req/s, {direction} from {self.demand_rps:.1f}")

    def watch(self) -> bool:
        """Nodes lost or added since the last look: forget the lost, log both, replan over the live nodes;
        whether it replanned."""
        lost = self.serving.lost()
        ids = live_nodes()
        if lost:
            plan = self.serving.plan
            assert plan is not None
            kept = [n for n in plan.nodes if n not in lost]
            stats = self.serving.stats()  # the front door's counts for the lost nodes, before it forgets them
            for name in lost:
                if name in self.seen:
                    self.quarantined.add(self.seen[name])
                p = plan.nodes.get(name)
                event = {"node": name, "slices": p.slices if p else 0, "planned_rps": round(p.demand_rps, 3) if p else 0.0,
                         "capacity_rps": round(plan.capacity_rps.get(name, p.demand_rps if p else 0.0), 3),
                         "remaining_planned_rps": round(sum(plan.nodes[n].demand_rps for n in kept), 3),
                         "remaining_capacity_rps": round(sum(plan.capacity_rps.get(n, plan.nodes[n].demand_rps)
                                                             for n in kept), 3),
                         "nodes": {name: {k: stats[name][k] for k in ("requests", "failed", "up", "weight")}}
                         if name in stats else {}}
                self.events.write("node_lost", **event)
                self.lost.append(event)
                self.progress(f"cluster: node {name} lost: {event['planned_rps']:g} req/s of its plan's demand on "
                              f"{event['slices']} slices (capacity {event['capacity_rps']:g} req/s)")
            self.serving.forget(lost)
        added = sorted(n for n, i in ids.items() if self.seen.get(n) != i and i not in self.quarantined)
        for name in added:
            self.events.write("node_added", node=name)
            self.progress(f"cluster: node {name} joined")
        self.seen.update(ids)
        if not lost and not added:
            return False
        demand = self.demand_rps
        if self.observed:  # the arrivals may have outgrown the plan since its last step
            demand = max(demand, self.forecaster.forecast(1) * (1 + self.policy.headroom))
        what = "; ".join(([f"node(s) {', '.join(lost)} lost"] if lost else [])
                         + ([f"node(s) {', '.join(added)} added"] if added else []))
        return self.replan(demand, what)

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """``watch`` every ``poll_s`` and ``step`` every ``interval_s`` until ``stop`` is set; errors are logged,
        not fatal (a missed call, a node lost mid-apply: the next look sees it)."""
        next_step = time.monotonic()
        while not stop.is_set():
            for name, call in (("watch", self.watch), ("step", self.step)):
                if stop.is_set() or name == "step" and time.monotonic() < next_step:
                    continue
                try:
                    call()
                except Exception as exc:  # noqa: BLE001 (logged; the controller goes on)
                    self.events.write("error", reason=f"{name}: {type(exc).__name__}: {exc}")
                    self.progress(f"cluster controller {name} failed: {type(exc).__name__}: {exc}")
                if name == "step":
                    next_step = max(next_step + interval_s, time.monotonic() + interval_s / 2)
            stop.wait(self.poll_s)
