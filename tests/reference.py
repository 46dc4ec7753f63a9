"""An independent reference for the planner: an exact plan checker and an exhaustive search.

Written from the model's definitions (docs/planning.md and the property-test brief), not from the
planner's code: only the input data classes, the GPU shape table and the Plan/Entry fields are
shared. It exists so that the MILP (linearised, with bounds and cuts) can be checked against the
plain definitions on instances small enough to enumerate; nothing here uses cvxpy.

``check`` returns every violated constraint of a plan (empty: valid). ``exhaustive`` finds the best
``alpha * accuracy - beta * slices`` over every integer instance count of every configuration and the
best routing for those counts; it refuses (``EnumerationTooLarge``) instances it cannot enumerate.

Tolerances: ``check`` accepts 1e-6 (relative for flows and capacities, absolute for accuracy and
ms of latency); ``exhaustive`` holds its own plans to 1e-9 on flows and accuracy, so whatever it finds
passes ``check`` (a plan within 1e-6 but not 1e-9 of a bound is the only way the two can disagree).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from jigsawserve.orchestrator.spec.appspec import AppSpec, Task, Variant
from jigsawserve.orchestrator.planning.features import Features
from jigsawserve.orchestrator.spec.gpus import GpuType, MigShape
from jigsawserve.orchestrator.planning.plan import Plan
from jigsawserve.orchestrator.spec.profiles import ProfilePoint, Profiles

Routing = dict[str, dict[str, float]]
REL = 1e-6            # relative tolerance of the routing and throughput checks
MAX_TASK_VECTORS = 400_000
MAX_LEAVES = 3_000_000


class EnumerationTooLarge(RuntimeError):
    """The instance is too large for ``exhaustive``: use a smaller one (never a silent cut-off)."""


# --- definitions -------------------------------------------------------------------------------

def as_features(features: str | Features) -> Features:
    return features if isinstance(features, Features) else Features.parse(features)


def fraction(task: Task, variant: Variant) -> float:
    """Raw accuracy as a fraction: percent-like tasks (any raw > 1) are divided by 100."""
    percent = any(v.raw_accuracy > 1 for v in task.variants)
    return variant.raw_accuracy / 100.0 if percent else variant.raw_accuracy


def best_variant(task: Task) -> Variant:
    """The most accurate variant by raw accuracy, the first of equals."""
    best = task.variants[0]
    for v in task.variants[1:]:
        if v.raw_accuracy > best.raw_accuracy:
            best = v
    return best


def allowed_variants(task: Task, features: str | Features) -> tuple[Variant, ...]:
    return task.variants if as_features(features).accuracy_scaling else (best_variant(task),)


def segment_allowed(gpu: GpuType, mig: int, mps: int, features: str | Features) -> bool:
    """Without S, only whole-GPU segments with one process."""
    return as_features(features).spatial or (mig == gpu.slices and mps == 1)


def memory_ok(gpu: GpuType, row: ProfilePoint) -> bool:
    """On a MIG GPU the ``mps`` processes' memory must fit the shape's memory."""
    if not gpu.mig or row.memory_mb is None or row.mig not in gpu.shapes:
        return True
    return row.memory_mb * row.mps <= gpu.shapes[row.mig].memory_gb * 1024


def task_items(app: AppSpec, features: str | Features = "A+S+T") -> dict[str, tuple[float, float]]:
    """(dmin, dmax) items per source request at each task, over the allowed variants; a join sums
    its parents (a request brings the items of every parent)."""
    out: dict[str, tuple[float, float]] = {}
    for t in app.tasks:
        parents = app.parents(t.name)
        if not parents:
            out[t.name] = (1.0, 1.0)
            continue
        lo = hi = 0.0
        for e in parents:
            fs = [e.factor_for(v.name) for v in allowed_variants(app.task(e.src), features)]
            lo += out[e.src][0] * min(fs)
            hi += out[e.src][1] * max(fs)
        out[t.name] = (lo, hi)
    return out


def batch_fill(batch: int, dmin: float, dmax: float) -> float:
    """Share of a batch of ``batch`` rows that whole requests fill (Triton never splits a request;
    a stage sends a request's items in chunks of at most ``batch``), the least over request sizes."""
    lo = max(1, math.floor(dmin + 1e-9))
    hi = max(1, math.ceil(dmax - 1e-9))
    sizes = range(lo, hi + 1)
    rests = {r % batch for r in sizes} - {0}
    if not rests:
        return 1.0
    kmax = max(rests)
    reach = [True] + [False] * batch
    for s in range(1, batch + 1):
        reach[s] = any(k <= s and reach[s - k] for k in rests)
    least = min(s for s in range(batch - kmax + 1, batch + 1) if reach[s])
    return min(r / ((r // batch) * batch + (r % batch) * batch / least) for r in sizes)


def worst_case_ms(p95: float, batch: int, items: float, model: str = "batches") -> float:
    """Worst case per request at a task: ``batches``: one batch forming plus the batches its own
    ``items`` need; ``paper``: 2 x p95."""
    if model == "paper":
        return 2.0 * p95
    if model != "batches":
        raise ValueError(f"latency_model {model!r}")
    return p95 * (1 + math.ceil(items / batch - 1e-9))


def arrivals(app: AppSpec, routing: Routing, demand: float) -> dict[str, float]:
    """Items/s each task receives given its parents' routing (sources: the demand)."""
    out: dict[str, float] = {}
    for t in app.tasks:
        parents = app.parents(t.name)
        out[t.name] = demand if not parents else sum(
            e.factor_for(v) * x for e in parents for v, x in routing.get(e.src, {}).items())
    return out


def task_accuracy(task: Task, flows: dict[str, float]) -> float:
    """Routing-weighted mean of the variants' fractions (no routed items: the best fraction)."""
    total = sum(flows.values())
    if total <= 0:
        return fraction(task, best_variant(task))
    return sum(fraction(task, task.variant(v)) * x for v, x in flows.items()) / total


def pipeline_accuracy(app: AppSpec, routing: Routing) -> float:
    """(sum_p w_p prod_{t in p} A_t) / (sum_p w_p prod_{t in p} best_t): the paper's definition,
    normalised once for the whole pipeline (not per task, which differs when paths' bests differ)."""
    acc = {t.name: task_accuracy(t, routing.get(t.name, {})) for t in app.tasks}
    best = {t.name: fraction(t, best_variant(t)) for t in app.tasks}
    num = sum(p.weight * math.prod(acc[t] for t in p.tasks) for p in app.paths)
    den = sum(p.weight * math.prod(best[t] for t in p.tasks) for p in app.paths)
    return num / den


def _close_le(a: float, b: float) -> bool:
    """a <= b within the relative tolerance."""
    return a <= b + REL * max(abs(a), abs(b)) + 1e-9


def _find_row(profiles: Profiles, gpu: GpuType, profile: str, mig: int, mps: int, batch: int
              ) -> ProfilePoint | None:
    """The first row with this key (duplicate keys are ambiguous input: the first one counts)."""
    for p in profiles.for_variant(profile, gpu.name):
        if (p.mig, p.mps, p.batch) == (mig, mps, batch):
            return p
    return None


# --- placement -----------------------------------------------------------------------------------

def _bits(shape: MigShape, start: int) -> int:
    return ((1 << shape.mem_slices) - 1) << start


def pack(sizes: Sequence[int], gpu: GpuType, gpus: int) -> list[list[tuple[int, int]]] | None:
    """Exact: a placement of segments of these sizes on at most ``gpus`` GPUs (allowed starts, no
    memory overlap, compute within the GPU) as [(size, start), ...] per GPU, or None when none
    exists. Backtracking, largest first, GPUs in identical states tried once."""
    order = tuple(sorted(sizes, reverse=True))
    if any(s not in gpu.shapes for s in order) or sum(order) > gpus * gpu.slices:
        return None
    failed: set[tuple] = set()

    def go(i: int, states: list[tuple[int, int, list[tuple[int, int]]]]) -> list | None:
        if i == len(order):
            return [segs for _, _, segs in states]
        key = (i, tuple(sorted((m, u) for m, u, _ in states)))
        if key in failed:
            return None
        shape = gpu.shapes[order[i]]
        tried: set[tuple[int, int]] = set()
        for g, (mask, used, segs) in enumerate([*states, (0, 0, [])] if len(states) < gpus else states):
            if (mask, used) in tried or used + shape.size > gpu.slices:
                continue
            tried.add((mask, used))
            for start in shape.starts:
                b = _bits(shape, start)
                if start + shape.mem_slices > gpu.mem_slices or mask & b:
                    continue
                nxt = list(states) if g < len(states) else [*states, (0, 0, [])]
                nxt[g] = (mask | b, used + shape.size, [*segs, (shape.size, start)])
                found = go(i + 1, nxt)
                if found is not None:
                    return found
        failed.add(key)
        return None

    return go(0, [])


def fits_on_gpus(sizes: Sequence[int], gpu: GpuType, gpus: int) -> bool:
    return pack(sizes, gpu, gpus) is not None


def placement_violations(plan: Plan, gpu: GpuType, gpus: int | None) -> list[str]:
    """Every instance placed exactly once with its entry's size, at an allowed start, without memory
    overlap, compute within each GPU, on at most ``gpus`` GPUs."""
    out: list[str] = []
    expected: dict[str, int] = {}
    for e in plan.entries:
        for i in range(max(0, int(e.count))):
            expected[f"{e.task}/{e.variant}/{e.mig}g/mps{e.mps}/b{e.batch}#{i}"] = e.mig
    per_gpu = plan.placement.get("gpus", []) if isinstance(plan.placement, dict) else []
    if gpus is not None and len(per_gpu) > gpus:
        out.append(f"placement: {len(per_gpu)} GPUs used, {gpus} available")
    if gpus is not None and int(plan.placement.get("gpus_used", 0) or 0) > gpus:
        out.append(f"placement: gpus_used {plan.placement.get('gpus_used')} > {gpus}")
    seen: Counter[str] = Counter()
    for g, segs in enumerate(per_gpu):
        mask = used = 0
        for s in segs:
            label = s.get("label")
            seen[label] += 1
            if label not in expected:
                out.append(f"placement: GPU {g} holds {label!r}, which no entry has")
                continue
            size = expected[label]
            shape = gpu.shapes.get(size)
            if shape is None:
                out.append(f"placement: {label}: {gpu.name} has no {size}-slice shape")
                continue
            if s.get("size") != size:
                out.append(f"placement: {label} placed as size {s.get('size')}, entry has {size}")
            start = s.get("start")
            if start not in shape.starts or start + shape.mem_slices > gpu.mem_slices:
                out.append(f"placement: {label} starts at {start}, allowed {shape.starts}")
                continue
            b = _bits(shape, start)
            if mask & b:
                out.append(f"placement: {label} overlaps another segment on GPU {g}")
            mask |= b
            used += size
        if used > gpu.slices:
            out.append(f"placement: GPU {g} holds {used} compute slices > {gpu.slices}")
    for label in expected:
        if seen[label] != 1:
            out.append(f"placement: {label} placed {seen[label]} times")
    return out


# --- the checker ---------------------------------------------------------------------------------

def check(app: AppSpec, profiles: Profiles, gpu: GpuType, plan: Plan, *, gpus: int | None = None,
          features: str | Features = "A+S+T", latency_reserve: float = 0.0,
          latency_model: str = "batches") -> list[str]:
    """Every constraint ``plan`` violates, each message prefixed by the constraint's name. Latency,
    throughput and memory come from the profile rows, never from the entries' own claims."""
    feats = as_features(features)
    out: list[str] = []
    items = task_items(app, feats)
    names = {t.name: t for t in app.tasks}
    allowed = {t.name: {v.name for v in allowed_variants(t, feats)} for t in app.tasks}
    cap: dict[tuple[str, str], float] = {}
    worst = {t: 0.0 for t in names}
    slices = 0
    for e in plan.entries:
        tag = f"{e.task}/{e.variant}/{e.mig}g/mps{e.mps}/b{e.batch}"
        if not isinstance(e.count, int) or e.count < 0:
            out.append(f"slices: {tag}: count {e.count!r} is not a non-negative integer")
            continue
        if e.count == 0:
            continue
        if e.task not in names or e.variant not in {v.name for v in names[e.task].variants}:
            out.append(f"features: {tag}: no such task/variant in the app")
            continue
        if e.variant not in allowed[e.task]:
            out.append(f"features: {tag}: variant not allowed without accuracy scaling")
        if not segment_allowed(gpu, e.mig, e.mps, feats):
            out.append(f"features: {tag}: segment not allowed without spatial partitions")
        slices += e.mig * e.count
        row = _find_row(profiles, gpu, names[e.task].variant(e.variant).profile, e.mig, e.mps, e.batch)
        if row is None:
            out.append(f"throughput: {tag}: no profile row on {gpu.name}")
            continue
        if e.mig not in gpu.shapes:
            out.append(f"placement: {tag}: {gpu.name} has no {e.mig}-slice shape")
        elif not memory_ok(gpu, row):
            out.append(f"memory: {tag}: {row.memory_mb} MB x {e.mps} > {gpu.shapes[e.mig].memory_gb} GB")
        served = row.throughput_rps * batch_fill(e.batch, *items[e.task])
        if not _close_le(e.throughput_rps, served):
            out.append(f"throughput: {tag}: entry claims {e.throughput_rps:.4f}/s, the profile x fill "
                       f"serves {served:.4f}/s")
        if e.latency_ms < row.latency_ms * (1 - REL):
            out.append(f"latency: {tag}: entry claims p95 {e.latency_ms} ms, the profile has {row.latency_ms}")
        cap[(e.task, e.variant)] = cap.get((e.task, e.variant), 0.0) + e.count * served
        worst[e.task] = max(worst[e.task], worst_case_ms(row.latency_ms, e.batch, items[e.task][1],
                                                         latency_model))

    routing = plan.routing
    for t in routing:
        if t not in names:
            out.append(f"routing: unknown task {t!r}")
    arriving = arrivals(app, {t: r for t, r in routing.items() if t in names}, plan.demand_rps)
    for t in app.tasks:
        flows = routing.get(t.name, {})
        for v, x in flows.items():
            if v not in {w.name for w in t.variants}:
                out.append(f"routing: {t.name}: unknown variant {v!r}")
            elif x < -1e-9:
                out.append(f"routing: {t.name}/{v}: negative flow {x}")
            elif x > 1e-9 and v not in allowed[t.name]:
                out.append(f"routing: {t.name}/{v}: routes {x:.4f}/s to a variant the features exclude")
        total, want = sum(flows.values()), arriving[t.name]
        if abs(total - want) > REL * max(abs(total), abs(want)) + 1e-9:
            out.append(f"routing: {t.name} routes {total:.6f} items/s but receives {want:.6f}")
        for v, x in flows.items():
            if not _close_le(x, cap.get((t.name, v), 0.0)):
                out.append(f"throughput: {t.name}/{v}: {x:.4f} items/s routed, capacity "
                           f"{cap.get((t.name, v), 0.0):.4f}")

    limit = app.latency_slo_ms * (1 - latency_reserve)
    for p in app.paths:
        lat = sum(worst[t] for t in p.tasks)
        if lat > limit + 1e-6:
            out.append(f"latency: path {' -> '.join(p.tasks)}: worst case {lat:.4f} ms > {limit:.4f} ms")
    known = {t: {v: x for v, x in r.items() if v in {w.name for w in names[t].variants}}
             for t, r in routing.items() if t in names}
    acc = pipeline_accuracy(app, known)
    if acc < app.accuracy_slo - 1e-6:
        out.append(f"accuracy: pipeline accuracy {acc:.6f} < SLO {app.accuracy_slo}")
    if gpus is not None and slices > gpu.slices * gpus:
        out.append(f"slices: {slices} slices > {gpu.slices * gpus} on {gpus} GPU(s)")
    out += placement_violations(plan, gpu, gpus)
    return out


def best_to_plan(app: AppSpec, profiles: Profiles, gpu: GpuType, demand: float, best: "Best", gpus: int,
                 features: str | Features = "A+S+T") -> Plan:
    """The exhaustive result as a Plan (entries at the profile's p95 and served throughput, a placement
    from ``pack``), so that ``check`` can vouch for the search's own answers."""
    from jigsawserve.orchestrator.planning.plan import Entry

    items = task_items(app, as_features(features))
    entries = []
    for (t, v, mig, mps, batch), n in best.counts.items():
        row = _find_row(profiles, gpu, app.task(t).variant(v).profile, mig, mps, batch)
        assert row is not None
        entries.append(Entry(t, v, mig, mps, batch, n, row.latency_ms,
                             row.throughput_rps * batch_fill(batch, *items[t]), items=items[t][1]))
    labels = {size: [] for size in gpu.shapes}
    for e in entries:
        labels[e.mig] += [f"{e.task}/{e.variant}/{e.mig}g/mps{e.mps}/b{e.batch}#{i}" for i in range(e.count)]
    layout = pack([e.mig for e in entries for _ in range(e.count)], gpu, gpus) or []
    placed = [[{"label": labels[size].pop(), "size": size, "start": start, "shape": gpu.shapes[size].name}
               for size, start in segs] for segs in layout]
    return Plan(app=app.name, gpu_type=gpu.name, features=as_features(features).label, demand_rps=demand,
                latency_slo_ms=app.latency_slo_ms, accuracy_slo=app.accuracy_slo, entries=entries,
                routing=best.routing, accuracy=best.accuracy, slices=best.slices, gpus=len(placed),
                placement={"gpus": placed, "gpus_used": len(placed)})


def plan_objective(app: AppSpec, plan: Plan, alpha: float, beta: float) -> tuple[float, float, int]:
    """(objective, accuracy, slices) of a plan by this module's definitions."""
    acc = pipeline_accuracy(app, plan.routing)
    slices = sum(e.mig * e.count for e in plan.entries)
    return alpha * acc - beta * slices, acc, slices


# --- exhaustive search ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """One candidate configuration: a task's variant on one profile row."""

    task: str
    variant: str
    row: ProfilePoint
    served: float
    wc: float

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        return (self.task, self.variant, self.row.mig, self.row.mps, self.row.batch)


@dataclass(frozen=True)
class Option:
    """A task's instance counts over its configurations, reduced to what the rest of the problem
    sees: capacity per variant (clipped at the most the task can receive), worst-case latency, and
    the multiset of segment sizes."""

    counts: tuple[int, ...]
    caps: tuple[float, ...]
    latency: float
    shapes: tuple[int, ...]  # largest first
    slices: int


@dataclass
class Best:
    objective: float
    slices: int
    accuracy: float
    counts: dict[tuple[str, str, int, int, int], int]
    routing: Routing
    stats: dict[str, int] = field(default_factory=dict)


def configurations(app: AppSpec, profiles: Profiles, gpu: GpuType, features: str | Features,
                   latency_model: str, limit_ms: float) -> dict[str, list[Config]]:
    """Allowed configurations per task whose own worst case fits the SLO, without those another
    configuration of the same variant beats on size, served throughput and worst case (exact: a
    smaller shape fits wherever a larger one does)."""
    feats = as_features(features)
    items = task_items(app, feats)
    out: dict[str, list[Config]] = {}
    for t in app.tasks:
        cs: list[Config] = []
        for v in allowed_variants(t, feats):
            own = []
            for r in profiles.for_variant(v.profile, gpu.name):
                if r.mig not in gpu.shapes or not segment_allowed(gpu, r.mig, r.mps, feats) or not memory_ok(gpu, r):
                    continue
                wc = worst_case_ms(r.latency_ms, r.batch, items[t.name][1], latency_model)
                if wc <= limit_ms + 1e-6:
                    own.append(Config(t.name, v.name, r, r.throughput_rps * batch_fill(r.batch, *items[t.name]), wc))
            for i, c in enumerate(own):
                mine = (c.row.mig, -c.served, c.wc)
                if not any(j != i and all(a <= b for a, b in zip((o.row.mig, -o.served, o.wc), mine))
                           and ((o.row.mig, -o.served, o.wc) != mine or j < i) for j, o in enumerate(own)):
                    cs.append(c)
        out[t.name] = cs
    return out


def _shapes_fit(small: tuple[int, ...], large: tuple[int, ...]) -> bool:
    """Sizes ``small`` map one-to-one onto ``large`` with each no bigger (both largest first)."""
    return len(small) <= len(large) and all(a <= b for a, b in zip(small, large))


def task_options(task: Task, configs: list[Config], variants: list[str], need_min: float,
                 need_max: float) -> list[Option]:
    """Every count vector that can serve the task's least demand and has no instance whose removal
    keeps its variant able to take the task's whole most demand; then the Pareto set (latency,
    clipped capacities, sizes), which is exact for beta >= 0."""
    bounds = [math.ceil(need_max / c.served - 1e-9) for c in configs]
    total = math.prod(b + 1 for b in bounds)
    if total > MAX_TASK_VECTORS:
        raise EnumerationTooLarge(f"task {task.name}: {total} count vectors (bounds {bounds})")
    vidx = [variants.index(c.variant) for c in configs]
    raw: list[Option] = []
    for counts in itertools.product(*(range(b + 1) for b in bounds)):
        caps = [0.0] * len(variants)
        for c, n, i in zip(configs, counts, vidx):
            caps[i] += n * c.served
        if sum(caps) < need_min * (1 - 1e-9):
            continue
        if any(n and caps[i] - c.served >= need_max for c, n, i in zip(configs, counts, vidx)):
            continue
        shapes = tuple(sorted((c.row.mig for c, n in zip(configs, counts) for _ in range(n)), reverse=True))
        raw.append(Option(counts, tuple(min(x, need_max) for x in caps),
                          max((c.wc for c, n in zip(configs, counts) if n), default=0.0), shapes, sum(shapes)))
    raw.sort(key=lambda o: (o.slices, o.latency, -sum(o.caps)))
    kept: list[Option] = []
    for o in raw:
        if not any(k.latency <= o.latency and all(a >= b * (1 - 1e-12) for a, b in zip(k.caps, o.caps))
                   and _shapes_fit(k.shapes, o.shapes) for k in kept):
            kept.append(o)
    return kept


def _greedy(task: Task, variants: list[str], caps: dict[str, float], arrived: float) -> dict[str, float] | None:
    """Most accurate variants first: optimal for a task whose out-edges ignore the variant."""
    if arrived > sum(caps.values()) * (1 + 1e-9) + 1e-12:
        return None
    left, out = arrived, {}
    for v in sorted(variants, key=lambda v: -fraction(task, task.variant(v))):
        x = min(caps.get(v, 0.0), left)
        if x > 0:
            out[v] = x
            left -= x
    if left > 0 and out:
        last = next(reversed(out))
        out[last] += left
    return out


def best_routing(app: AppSpec, demand: float, caps: dict[str, dict[str, float]], grid: int = 64
                 ) -> tuple[float, Routing] | None:
    """The routing of the most pipeline accuracy within ``caps`` (items/s per task and variant), or
    None when the demand cannot be carried.

    A task whose out-edges carry the same factor for every variant it can use is filled most
    accurate first (optimal: its output does not depend on the split and accuracy is monotone in
    each task's). A task whose out-edges' factors differ by variant ("splitting") is searched: when it
    is the last such task in topological order and has two usable variants, the feasible interval
    of its split is exact (every later arrival is affine in it), split at the later tasks' greedy
    breakpoints, each piece on a ``grid``; otherwise a ``grid`` over its shares plus the fill-in-order
    vertices. That search is a fine grid: slightly pessimistic (never reports an unattainable
    accuracy, may miss a sliver of feasibility or accuracy).
    """
    tasks = list(app.tasks)
    usable = {t.name: [v for v, c in caps[t.name].items() if c > 0] for t in tasks}
    splitting = {t.name: any(len({e.factor_for(v) for v in usable[t.name]}) > 1 for e in app.children(t.name))
                 for t in tasks}
    last = max((i for i, t in enumerate(tasks) if splitting[t.name]), default=-1)
    best: list[tuple[float, Routing] | None] = [None]

    def arrived(t: str, routing: Routing) -> float:
        parents = app.parents(t)
        return demand if not parents else sum(e.factor_for(v) * x for e in parents
                                              for v, x in routing[e.src].items())

    def finish(i: int, routing: Routing) -> None:
        for t in tasks[i:]:
            r = _greedy(t, usable[t.name], caps[t.name], arrived(t.name, routing))
            if r is None:
                return
            routing[t.name] = r
        acc = pipeline_accuracy(app, routing)
        if best[0] is None or acc > best[0][0]:
            best[0] = (acc, {t: dict(r) for t, r in routing.items()})

    def exact_split(i: int, routing: Routing, t: Task, total: float) -> list[dict[str, float]]:
        a, b = usable[t.name]
        lo, hi = max(0.0, total - caps[t.name][b]), min(total, caps[t.name][a])
        if lo > hi + 1e-9 * max(total, 1):
            return []
        hi = max(lo, hi)

        def later(x: float) -> dict[str, float]:
            r = {**routing, t.name: {a: x, b: total - x}}
            got = {}
            for w in tasks[i + 1:]:
                got[w.name] = arrived(w.name, r)
                v0 = usable[w.name][0] if usable[w.name] else None
                r[w.name] = {v0: got[w.name]} if v0 else {}
            return got

        y0, y1 = later(lo), later(hi)
        span = hi - lo
        lo2, hi2, marks = lo, hi, {lo, hi}
        for w in tasks[i + 1:]:
            f0, f1 = y0[w.name], y1[w.name]
            slope = (f1 - f0) / span if span > 0 else 0.0
            tot = sum(caps[w.name].values()) * (1 + 1e-9)
            if abs(slope) < 1e-15:
                if f0 > tot:
                    return []
                continue
            edge = lo + (tot - f0) / slope
            lo2, hi2 = (lo2, min(hi2, edge)) if slope > 0 else (max(lo2, edge), hi2)
            cum = 0.0
            for v in sorted(usable[w.name], key=lambda v: -fraction(w, w.variant(v))):
                cum += caps[w.name][v]
                marks.add(lo + (cum - f0) / slope)
        if lo2 > hi2 + 1e-9 * max(total, 1):
            return []
        hi2 = max(lo2, hi2)
        pts = sorted({lo2, hi2, *(m for m in marks if lo2 < m < hi2)})
        xs = set(pts)
        for p, q in zip(pts, pts[1:]):
            xs.update(p + (q - p) * k / grid for k in range(1, grid))
        return [{a: x, b: total - x} for x in sorted(xs)]

    def grid_split(t: Task, total: float) -> list[dict[str, float]]:
        vs = usable[t.name]
        cands: list[dict[str, float]] = []
        for perm in itertools.permutations(vs):  # fill-in-order vertices
            left, r = total, {}
            for v in perm:
                r[v] = min(caps[t.name][v], left)
                left -= r[v]
            if left <= 1e-9 * max(total, 1):
                cands.append(r)
        steps = grid if len(vs) == 2 else max(6, int(round(grid ** (1 / (len(vs) - 1)))) * 2)
        for ks in itertools.product(range(steps + 1), repeat=len(vs) - 1):
            if sum(ks) > steps:
                continue
            shares = [k / steps for k in ks] + [1 - sum(ks) / steps]
            r = {v: s * total for v, s in zip(vs, shares)}
            if all(_close_le(r[v], caps[t.name][v]) for v in vs):
                cands.append(r)
        return cands

    def go(i: int, routing: Routing) -> None:
        if i > last:
            finish(i, routing)
            return
        t = tasks[i]
        total = arrived(t.name, routing)
        if not splitting[t.name]:
            r = _greedy(t, usable[t.name], caps[t.name], total)
            if r is not None:
                go(i + 1, {**routing, t.name: r})
            return
        splits = exact_split(i, routing, t, total) if i == last and len(usable[t.name]) == 2 \
            else grid_split(t, total)
        for r in splits:
            go(i + 1, {**routing, t.name: r})

    go(0, {})
    return best[0]


def exhaustive(app: AppSpec, profiles: Profiles, gpu: GpuType, demand: float, *, gpus: int | None,
               alpha: float, beta: float, features: str | Features = "A+S+T",
               latency_model: str = "batches", latency_reserve: float = 0.0) -> Best | None:
    """The best ``alpha * accuracy - beta * slices`` over all integer instance counts of all
    configurations (and the best routing for each), or None when no plan meets the SLOs, the slice
    budget and the MIG placement. Branch and bound over the tasks' Pareto options, cheapest first;
    the bound is ``alpha * 1 - beta * slices``. Needs alpha, beta >= 0. Raises EnumerationTooLarge
    rather than cut the search short. T (task-graph budgets) does not change what is feasible."""
    if alpha < 0 or beta < 0:
        raise ValueError("exhaustive needs alpha, beta >= 0")
    feats = as_features(features)
    limit = app.latency_slo_ms * (1 - latency_reserve)
    items = task_items(app, feats)
    configs = configurations(app, profiles, gpu, feats, latency_model, limit)
    names = [t.name for t in app.tasks]
    variants = {t.name: [v.name for v in allowed_variants(t, feats)] for t in app.tasks}
    opts: dict[str, list[Option]] = {}
    for t in app.tasks:
        lo, hi = items[t.name]
        opts[t.name] = task_options(t, configs[t.name], variants[t.name], demand * lo, demand * hi)
        if not opts[t.name]:
            return None
    cap = gpu.slices * gpus if gpus is not None else None
    rest = [sum(min(o.slices for o in opts[t]) for t in names[i:]) for i in range(len(names) + 1)]
    min_lat = {t: min(o.latency for o in opts[t]) for t in names}
    paths = [p.tasks for p in app.paths]
    fit_memo: dict[tuple[int, ...], bool] = {}
    route_memo: dict[tuple, tuple[float, Routing] | None] = {}
    stats = Counter[str]()
    best: list[Best | None] = [None]

    def bound_ok(slices: int) -> bool:
        if cap is not None and slices > cap:
            return False
        return best[0] is None or alpha - beta * slices > best[0].objective + 1e-12

    def leaf(chosen: dict[str, Option], slices: int) -> None:
        stats["leaves"] += 1
        if stats["leaves"] > MAX_LEAVES:
            raise EnumerationTooLarge(f"more than {MAX_LEAVES} combinations")
        if gpus is not None:
            sizes = tuple(sorted((s for o in chosen.values() for s in o.shapes), reverse=True))
            if sizes not in fit_memo:
                fit_memo[sizes] = fits_on_gpus(sizes, gpu, gpus)
            if not fit_memo[sizes]:
                return
        caps = {t: dict(zip(variants[t], chosen[t].caps)) for t in names}
        key = tuple(round(x, 9) for t in names for x in chosen[t].caps)
        if key not in route_memo:
            stats["routings"] += 1
            route_memo[key] = best_routing(app, demand, caps)
        found = route_memo[key]
        if found is None or found[0] < app.accuracy_slo - 1e-9:
            return
        obj = alpha * found[0] - beta * slices
        if best[0] is None or obj > best[0].objective + 1e-12:
            counts = {c.key: n for t in names for c, n in zip(configs[t], chosen[t].counts) if n}
            best[0] = Best(obj, slices, found[0], counts, found[1])

    def dfs(i: int, chosen: dict[str, Option], slices: int) -> None:
        if i == len(names):
            leaf(chosen, slices)
            return
        t = names[i]
        for o in opts[t]:
            s = slices + o.slices
            if not bound_ok(s + rest[i + 1]):
                break  # options are sorted by slices
            lat = {**{u: chosen[u].latency for u in chosen}, t: o.latency}
            if any(sum(lat.get(u, min_lat[u]) for u in p) > limit + 1e-6 for p in paths):
                continue
            chosen[t] = o
            dfs(i + 1, chosen, s)
            del chosen[t]

    dfs(0, {}, 0)
    if best[0] is not None:
        best[0].stats = dict(stats) | {t: len(opts[t]) for t in names}
    return best[0]
