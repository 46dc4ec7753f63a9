"""The per-run report of a JigsawServe run: ``summary.json`` and PNG plots in the run directory.

A run directory holds ``requests.csv`` (the load generator's log), ``events.jsonl`` (the
controller's plan, interval and metrics events) and optionally ``run.json`` (what was run where).
Times are seconds from the run start; the run ends at the last event or request completion.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import lzma
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from jigsawserve.orchestrator.spec.appspec import AppSpec, parse_app
from jigsawserve.orchestrator.planning.checker import metrics
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.planning.plan import Plan, parse_label
from jigsawserve.orchestrator.reporting.fanout_report import fanout_lines, fanout_summary
from jigsawserve.orchestrator.reporting.hostload import FILE as HOST_FILE
from jigsawserve.orchestrator.workload.trace import number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REQUESTS_FILE, EVENTS_FILE, RUN_FILE, SUMMARY_FILE = "requests.csv", "events.jsonl", "run.json", "summary.json"
REQUEST_COLUMNS = ("id", "scheduled_s", "sent_s", "latency_ms", "outcome", "items", "error")
OUTCOMES = ("ok", "late", "dropped", "error")
ANSWERED = ("ok", "late")
RUN_FIELDS: dict[str, tuple[type, ...]] = {"app": (str,), "slo_ms": (int, float), "device": (str,),
                                           "emulated_mig": (bool,), "system": (str,), "notes": (str,)}
T = TypeVar("T")


@dataclass(frozen=True)
class Requests:
    """The request log as columns; ``sent_s`` and ``latency_ms`` are NaN where the log left them empty."""

    scheduled_s: np.ndarray
    sent_s: np.ndarray
    latency_ms: np.ndarray
    outcome: np.ndarray

    def count(self, outcome: str) -> int:
        return int(np.count_nonzero(self.outcome == outcome))

    @property
    def completed_s(self) -> np.ndarray:
        """When each request was answered (or sent, or scheduled, as far as the log says)."""
        start = np.where(np.isnan(self.sent_s), self.scheduled_s, self.sent_s)
        return start + np.nan_to_num(self.latency_ms) / 1000.0


@dataclass(frozen=True)
class PlanEvent:
    line: int
    t: float
    plan: Plan
    demand_rps: float
    capacity_rps: float | None
    reason: str
    apply_s: float | None = None  # how long moving the server to this plan took (None: the initial plan)


@dataclass(frozen=True)
class IntervalEvent:
    t: float
    demand_rps: float
    forecast_rps: float | None


@dataclass(frozen=True)
class MetricsEvent:
    line: int
    t: float
    variant_items: dict[str, float]
    stages: dict[str, dict[str, float]] | None = None  # counter (requests, drops, misses) -> task -> count so far
    graph: dict[str, float] | None = None  # the graph model's counters so far (controller.RUNNER_COUNTERS keys)


@dataclass
class Run:
    """A parsed run directory; events are in time order."""

    path: Path
    requests: Requests
    plans: list[PlanEvent]
    intervals: list[IntervalEvent]
    scrapes: list[MetricsEvent]
    info: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def end_s(self) -> float:
        times = [e.t for e in (*self.plans, *self.intervals, *self.scrapes)]
        times += self.requests.completed_s.tolist()
        return max(times, default=0.0)


def _number(value: Any, where: str, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: expected a number{' or null' if nullable else ''}, got {value!r}")
    return float(value)


def _cell(text: str, where: str, required: bool) -> float:
    if not text.strip():
        if required:
            raise InputError(f"{where}: required value is empty")
        return math.nan
    return number(text, where)


def _parse_all(rows: list[tuple[int, T]], parse: Callable[[int, T], Any], truncated: bool, where: str,
               warnings: list[str]) -> list[Any]:
    """Parse every row; a bad last line of a file that does not end in a newline (a run cut off
    mid-write) is skipped with a warning, any other bad line is an InputError."""
    out = []
    for i, (line, row) in enumerate(rows):
        try:
            out.append(parse(line, row))
        except InputError as exc:
            if not (truncated and i == len(rows) - 1):
                raise
            warnings.append(f"{where} line {line}: skipped a truncated last line ({exc})")
    return out


ARCHIVED = {".gz": gzip.decompress, ".xz": lzma.decompress}


def _archived(path: Path) -> Path | None:
    """The compressed copy an archived run keeps instead of ``path`` (``<file>.gz`` or ``<file>.xz``), if any."""
    return next((a for a in (path.with_name(path.name + s) for s in ARCHIVED) if a.exists()), None)


def _read_text(path: Path) -> str:
    """The file's text; an archived run may keep it as ``<file>.gz`` or ``<file>.xz`` instead."""
    try:
        archived = None if path.exists() else _archived(path)
        if archived is not None:
            return ARCHIVED[archived.suffix](archived.read_bytes()).decode()
        return path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: missing (a run directory holds {REQUESTS_FILE} and {EVENTS_FILE})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def load_requests(path: Path, warnings: list[str]) -> Requests:
    """Read and validate ``requests.csv``."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != REQUEST_COLUMNS:
        raise InputError(f"{path} line 1: expected the header {','.join(REQUEST_COLUMNS)}, got "
                         f"{','.join(header) if header else 'an empty file'}")
    rows = [(reader.line_num, row) for row in reader if row]

    def parse(line: int, row: list[str]) -> tuple[float, float, float, str]:
        where = f"{path} line {line}"
        if len(row) != len(REQUEST_COLUMNS):
            raise InputError(f"{where}: expected {len(REQUEST_COLUMNS)} fields, got {len(row)}")
        rec = dict(zip(REQUEST_COLUMNS, row))
        if rec["outcome"] not in OUTCOMES:
            raise InputError(f"{where}: outcome: expected one of {', '.join(OUTCOMES)}, got {rec['outcome']!r}")
        return (_cell(rec["scheduled_s"], f"{where}: scheduled_s", True),
                _cell(rec["sent_s"], f"{where}: sent_s", False),
                _cell(rec["latency_ms"], f"{where}: latency_ms", rec["outcome"] in ANSWERED),
                rec["outcome"])

    parsed = _parse_all(rows, parse, bool(text) and not text.endswith("\n"), str(path), warnings)
    cols = list(zip(*parsed)) if parsed else [(), (), (), ()]
    return Requests(*(np.array(c, dtype=float) for c in cols[:3]), outcome=np.array(cols[3], dtype=str))


def _event(path: Path, line: int, text: str) -> tuple[str, float, dict[str, Any]]:
    where = f"{path} line {line}"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise InputError(f"{where}: expected a JSON object with a string 'kind'")
    return doc["kind"], _number(doc.get("t"), f"{where}: t"), doc


def _plan_event(path: Path, line: int, t: float, doc: dict[str, Any]) -> PlanEvent:
    where = f"{path} line {line}"
    if not isinstance(doc.get("plan"), dict):
        raise InputError(f"{where}: plan: expected the plan JSON object")
    try:
        plan = Plan.from_json(doc["plan"])
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise InputError(f"{where}: reason: expected a string, got {reason!r}")
    return PlanEvent(line, t, plan, _number(doc.get("demand_rps"), f"{where}: demand_rps"),
                     _number(doc.get("capacity_rps"), f"{where}: capacity_rps", nullable=True), reason,
                     _number(doc.get("apply_s"), f"{where}: apply_s", nullable=True))


def _metrics_event(path: Path, line: int, t: float, doc: dict[str, Any]) -> MetricsEvent:
    where = f"{path} line {line}: variant_items"
    items = doc.get("variant_items")
    if not isinstance(items, dict):
        raise InputError(f"{where}: expected an object of \"<task>/<variant>\" -> items")
    for key, value in items.items():
        if _number(value, f"{where}.{key}") < 0:
            raise InputError(f"{where}.{key}: a counter cannot be negative, got {value}")
    stages = doc.get("stages")  # runs before 48029ac have none
    if stages is not None:
        if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
            raise InputError(f"{path} line {line}: stages: expected an object of counter -> task -> count")
        stages = {k: {t: float(_number(n, f"{path} line {line}: stages.{k}.{t}")) for t, n in v.items()}
                  for k, v in stages.items()}
    graph = doc.get("graph")  # runs before the controller kept the graph model's counters have none
    if graph is not None:
        if not isinstance(graph, dict):
            raise InputError(f"{path} line {line}: graph: expected an object of counter -> value")
        graph = {k: float(_number(v, f"{path} line {line}: graph.{k}")) for k, v in graph.items()}
    return MetricsEvent(line, t, {k: float(v) for k, v in items.items()}, stages, graph)


def load_run(run_dir: str | Path) -> Run:
    """Read and validate a run directory; InputError names the file, line and field at fault."""
    path = Path(run_dir)
    if not path.is_dir():
        raise InputError(f"{path}: not a run directory")
    warnings: list[str] = []
    requests = load_requests(path / REQUESTS_FILE, warnings)
    events_path = path / EVENTS_FILE
    text = _read_text(events_path)
    lines = [(n, s) for n, s in enumerate(text.splitlines(), 1) if s.strip()]
    events = _parse_all(lines, lambda n, s: (n, *_event(events_path, n, s)),
                        bool(text) and not text.endswith("\n"), str(events_path), warnings)
    plans, intervals, scrapes = [], [], []
    for line, kind, t, doc in sorted(events, key=lambda e: e[2]):
        if kind == "plan":
            plans.append(_plan_event(events_path, line, t, doc))
        elif kind == "interval":
            where = f"{events_path} line {line}"
            intervals.append(IntervalEvent(t, _number(doc.get("demand_rps"), f"{where}: demand_rps"),
                                           _number(doc.get("forecast_rps"), f"{where}: forecast_rps", True)))
        elif kind == "metrics":
            scrapes.append(_metrics_event(events_path, line, t, doc))
    return Run(path, requests, plans, intervals, scrapes, _load_info(path / RUN_FILE), warnings)


def _load_info(path: Path) -> dict[str, Any]:
    """``run.json`` with every known field (None where absent); no file gives all None."""
    if not path.exists():
        return dict.fromkeys(RUN_FIELDS)
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object")
    for key, types in RUN_FIELDS.items():
        value = doc.get(key)
        if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            raise InputError(f"{path}: {key}: expected {' or '.join(t.__name__ for t in types)}, got {value!r}")
    return {**dict.fromkeys(RUN_FIELDS), **doc}


def _plan_weights(run: Run) -> np.ndarray:
    """How long each plan was in force (the last one until the run ends); all on the last plan when
    the plans span no time."""
    ts = np.array([p.t for p in run.plans])
    durations = np.diff(np.append(ts, max(run.end_s, ts[-1])))
    if durations.sum() <= 0:
        durations[-1] = 1.0
    return durations


def _variant_items(run: Run, app: AppSpec) -> dict[str, dict[str, float]]:
    """Items per task and variant between the first and last scrape; a counter that goes down was
    reset (a reloaded stage) and counts from zero, as Prometheus' increase() does."""
    known = {f"{t.name}/{v.name}" for t in app.tasks for v in t.variants}
    totals: dict[str, float] = {}
    prev: dict[str, float] = {}
    for i, scrape in enumerate(run.scrapes):
        for key, value in scrape.variant_items.items():
            if key not in known:
                raise InputError(f"{run.path / EVENTS_FILE} line {scrape.line}: variant_items.{key}: "
                                 f"not a <task>/<variant> of app {app.name!r}")
            if i > 0:
                before = prev.get(key, 0.0)
                totals[key] = totals.get(key, 0.0) + (value - before if value >= before else value)
            prev[key] = value
    out: dict[str, dict[str, float]] = {}
    for key, items in totals.items():
        task, variant = key.split("/", 1)
        out.setdefault(task, {})[variant] = items
    return out


def _routing_shares(run: Run) -> dict[str, dict[str, float]]:
    """Each task's variant shares under the plans' routing, weighted by how long each plan was in force."""
    out: dict[str, dict[str, float]] = {}
    for w, p in zip(_plan_weights(run), run.plans):
        for task, rates in p.plan.routing.items():
            total = sum(rates.values())
            if total <= 0:
                continue
            shares = out.setdefault(task, {})
            for variant, rate in rates.items():
                shares[variant] = shares.get(variant, 0.0) + float(w) * rate / total
    return out


def _app(run: Run) -> AppSpec | None:
    """The app spec the run's last plan embeds (None: no plan, or a plan without one)."""
    if not run.plans or not run.plans[-1].plan.app_spec:
        return None
    last = run.plans[-1]
    return parse_app(last.plan.app_spec, origin=f"{run.path / EVENTS_FILE} line {last.line}: plan.app_spec")


def _accuracy(run: Run) -> dict[str, Any]:
    """Achieved pipeline accuracy (normalised as in checker.metrics) from the variants used."""
    empty = {"source": None, "pipeline": None, "max": None, "ratio_to_max": None, "slo": None,
             "tasks": {}, "variant_shares": {}}
    if not run.plans:
        return {**empty, "note": "no plan event: accuracy unknown"}
    last = run.plans[-1]
    app = _app(run)
    if app is None:
        return {**empty, "note": f"the plan at line {last.line} embeds no app_spec: accuracy unknown"}
    items = _variant_items(run, app)
    missing = [t.name for t in app.tasks if sum(items.get(t.name, {}).values()) <= 0]
    if not missing:
        source, weights, note = "variant_items", items, f"measured over {len(run.scrapes)} metrics events"
    else:
        source, weights = "plan_routing", _routing_shares(run)
        note = ("no two metrics events" if len(run.scrapes) < 2 else
                f"no items counted for task(s) {', '.join(missing)}") + ": plans' routing shares, time-weighted"
    m = metrics(app, [], weights, 0.0)
    best = metrics(app, [], {t.name: {t.best.name: 1.0} for t in app.tasks}, 0.0).accuracy
    shares = {t: {v: x / sum(vs.values()) for v, x in vs.items()} for t, vs in weights.items()}
    return {"source": source, "pipeline": m.accuracy, "max": best, "ratio_to_max": m.accuracy / best,
            "slo": last.plan.accuracy_slo, "tasks": m.task_accuracy, "variant_shares": shares, "note": note}


def _plan_info(p: PlanEvent) -> dict[str, Any]:
    return {"t": p.t, "reason": p.reason, "demand_rps": p.demand_rps, "capacity_rps": p.capacity_rps,
            "slices": p.plan.slices, "gpus": p.plan.gpus, "apply_s": p.apply_s}


def _applies(plans: list[PlanEvent]) -> dict[str, float | None]:
    """How long the plan changes took to apply: mean and longest (s), None when none says."""
    times = [p.apply_s for p in plans[1:] if p.apply_s is not None]
    return {"mean_s": sum(times) / len(times) if times else None, "max_s": max(times, default=None)}


def _during_applies(run: Run) -> dict[str, float] | None:
    """The requests scheduled while a plan change was being applied (from ``t - apply_s`` to ``t`` of its
    plan event): how many, and how many of them were late or dropped; None when no change says how long
    it took."""
    spans = [(p.t - p.apply_s, p.t) for p in run.plans[1:] if p.apply_s is not None]
    if not spans:
        return None
    t = run.requests.scheduled_s
    inside = np.zeros(t.shape, dtype=bool)
    for a, b in spans:
        inside |= (t >= a) & (t <= b)
    out = run.requests.outcome[inside]
    return {"seconds": round(sum(b - a for a, b in spans), 3), "requests": int(inside.sum()),
            "late": int(np.count_nonzero(out == "late")), "dropped": int(np.count_nonzero(out == "dropped"))}


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


WINDOWS = 10  # the summary's violation rates per tenth of the replayed trace


def _windows(req: Requests, span_s: float) -> dict[str, list[float]]:
    """Requests (by scheduled time) and their SLO violation rate (%) per tenth of ``span_s``."""
    edges = np.linspace(0.0, span_s, WINDOWS + 1)
    index = np.clip(np.searchsorted(edges, req.scheduled_s, side="right") - 1, 0, WINDOWS - 1)
    counts = np.bincount(index, minlength=WINDOWS)
    bad = np.bincount(index, weights=(req.outcome != "ok").astype(float), minlength=WINDOWS)
    return {"edges_s": [round(float(e), 3) for e in edges], "requests": [int(c) for c in counts],
            "violations_pct": [round(100 * float(b / c), 2) if c else 0.0 for b, c in zip(bad, counts)]}


def load_host(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``host.csv`` (orchestrator/reporting/hostload.py): sample times, the host's CPU busy % (NaN where not measured) and
    the GPUs' mean utilization % (NaN without GPU columns)."""
    reader = csv.reader(io.StringIO(_read_text(path)))
    header = next(reader, None)
    if not header or header[:2] != ["t_s", "cpu_busy_pct"]:
        raise InputError(f"{path} line 1: expected a header starting t_s,cpu_busy_pct, got {header}")
    gpu_cols = [i for i, name in enumerate(header) if name.endswith("_util_pct") and name.startswith("gpu")]
    t, cpu, gpu = [], [], []
    for row in reader:
        where = f"{path} line {reader.line_num}"
        if len(row) != len(header):
            raise InputError(f"{where}: expected {len(header)} fields, got {len(row)}")
        t.append(_cell(row[0], f"{where}: t_s", True))
        cpu.append(_cell(row[1], f"{where}: cpu_busy_pct", False))
        utils = [_cell(row[i], f"{where}: {header[i]}", False) for i in gpu_cols]
        gpu.append(float(np.mean(utils)) if utils else math.nan)
    return np.array(t), np.array(cpu), np.array(gpu)


def _bin_means(t: np.ndarray, values: np.ndarray, bin_s: float, n: int) -> list[float | None]:
    """Mean of ``values`` per bin of the sample times ``t`` (None where a bin has no measured value)."""
    index = np.minimum((np.maximum(t, 0.0) // bin_s).astype(int), n - 1)
    out: list[float | None] = []
    for i in range(n):
        v = values[(index == i) & ~np.isnan(values)]
        out.append(round(float(v.mean()), 1) if v.size else None)
    return out


def outcomes_per_bin(run_dir: str | Path, bin_s: float) -> list[dict[str, Any]]:
    """Per ``bin_s`` of the replay (by scheduled time): the requests by outcome, the plan changes that
    took effect in the bin (their reasons) and, where the run sampled them (``host.csv``), the mean host
    CPU busy % and GPU utilization % (``cpu_pct``, ``gpu_pct``)."""
    if not bin_s > 0:
        raise InputError(f"--bins: expected a positive number of seconds, got {bin_s}")
    run = load_run(run_dir)
    req = run.requests
    span = max(float(req.scheduled_s.max(initial=0.0)), max((p.t for p in run.plans), default=0.0))
    n = int(span // bin_s) + 1
    index = np.minimum((req.scheduled_s // bin_s).astype(int), n - 1)
    counts = {o: np.bincount(index[req.outcome == o], minlength=n) for o in OUTCOMES}
    rows = [{"start_s": round(i * bin_s, 3), "requests": int(sum(c[i] for c in counts.values())),
             **{o: int(counts[o][i]) for o in OUTCOMES}, "plans": []} for i in range(n)]
    for p in run.plans[1:]:
        rows[min(int(p.t // bin_s), n - 1)]["plans"].append(p.reason)
    host = Path(run_dir) / HOST_FILE
    if host.exists() or _archived(host) is not None:
        t, cpu, gpu = load_host(host)
        for key, values in (("cpu_pct", cpu), ("gpu_pct", gpu)):
            for row, mean in zip(rows, _bin_means(t, values, bin_s, n)):
                row[key] = mean
    return rows


def format_bins(rows: list[dict[str, Any]]) -> str:
    """``outcomes_per_bin`` as a text table, one bin a line."""
    host = [k for k in ("cpu_pct", "gpu_pct") if rows and k in rows[0]]
    lines = [f"{'from s':>8} {'requests':>8} " + " ".join(f"{o:>7}" for o in OUTCOMES)
             + "".join(f" {k.replace('_pct', ' %'):>7}" for k in host) + "  plan changes"]
    for r in rows:
        lines.append(f"{r['start_s']:>8g} {r['requests']:>8} " + " ".join(f"{r[o]:>7}" for o in OUTCOMES)
                     + "".join(f" {'-' if r[k] is None else r[k]:>7}" for k in host)
                     + ("  " + "; ".join(r["plans"]) if r["plans"] else ""))
    return "\n".join(lines)


def _server_view(run: Run) -> dict[str, Any] | None:
    """What the stages themselves counted, from the last scrape that has their counters: per task its
    requests, early drops and exits after the deadline, and over the sink tasks (where an answer
    leaves the graph) the exits after the deadline: the server's side of the client's late count
    (a request leaves every sink of its graph, so with several sinks this sum counts one request up
    to once per sink), and the mean time a request waited in Triton's queue before a graph instance
    took it (which no stage sees; None where the scrapes lack the graph model's counters). None for
    runs whose scrapes lack the stage counters."""
    last = next((m for m in reversed(run.scrapes) if m.stages), None)
    app = _app(run)
    if last is None or app is None:
        return None
    sinks = list(app.sinks)
    stages = {t.name: {k: int(last.stages.get(k, {}).get(t.name, 0)) for k in ("requests", "drops", "misses")}
              for t in app.tasks}
    graph = last.graph or {}
    queued = graph.get("queue_us", 0.0) / graph["requests"] / 1000 if graph.get("requests") else None
    return {"t": last.t, "stages": stages, "sinks": sinks,
            "sink_misses": sum(stages[t]["misses"] for t in sinks),
            "drops": sum(v["drops"] for v in stages.values()),
            "graph_queue_ms_mean": None if queued is None else round(queued, 3)}


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """The run's JSON summary; also written to ``RUN/summary.json``."""
    run = load_run(run_dir)
    req, end = run.requests, run.end_s
    total = int(req.outcome.size)
    answered = req.latency_ms[np.isin(req.outcome, ANSWERED)]
    slices = [p.plan.slices for p in run.plans]
    summary = {
        "run_dir": str(run.path),
        "run": run.info,
        "duration_s": end,
        "requests": {"total": total, **{o: req.count(o) for o in OUTCOMES}},
        "slo_violation_rate": (total - req.count("ok")) / total if total else None,
        "windows": _windows(req, float(run.info.get("duration_s") or end)) if total else None,
        "goodput_rps": req.count("ok") / end if end > 0 else None,
        "latency_ms": {"answered": int(answered.size),
                       **{f"p{q}": _percentile(answered, q) for q in (50, 95, 99)}},
        "accuracy": _accuracy(run),
        "slices": {"mean": float(np.average(slices, weights=_plan_weights(run))) if slices else None,
                   "max": max(slices, default=None),
                   "timeline": [[p.t, p.plan.slices] for p in run.plans]},
        "initial_plan": _plan_info(run.plans[0]) if run.plans else None,
        "plan_changes": {"count": max(len(run.plans) - 1, 0), "changes": [_plan_info(p) for p in run.plans[1:]],
                         "applies": _applies(run.plans), "during_applies": _during_applies(run)},
        "server": _server_view(run),
        "fanout": fanout_summary(run.path / EVENTS_FILE),
        "warnings": run.warnings,
    }
    (run.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines of a summary."""
    info, reqs, lat, acc, sl = (summary[k] for k in ("run", "requests", "latency_ms", "accuracy", "slices"))

    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    mig = ", MIG emulated" if info.get("emulated_mig") else ""
    outcomes = ", ".join(f"{reqs[o]} {o}" for o in OUTCOMES)
    percentiles = "/".join(num(lat[f"p{q}"], ".1f") for q in (50, 95, 99))
    lines = [
        (f"run {summary['run_dir']}: app {info.get('app') or '?'}, system {info.get('system') or '?'}, "
         f"device {info.get('device') or '?'}{mig}, {summary['duration_s']:.1f} s"),
        f"  requests {reqs['total']}: {outcomes}; SLO violations {num(summary['slo_violation_rate'], '.2%')}",
        (f"  goodput {num(summary['goodput_rps'], '.2f')} req/s; latency of {lat['answered']} answered "
         f"p50/p95/p99 {percentiles} ms"),
        (f"  accuracy {num(acc['pipeline'], '.4f')} = {num(acc['ratio_to_max'], '.2%')} of max "
         f"(SLO {num(acc['slo'], 'g')}; {acc['source'] or 'no source'}: {acc['note']})"),
        (f"  slices mean {num(sl['mean'], '.2f')}, max {num(sl['max'], 'd')}; "
         f"{summary['plan_changes']['count']} plan change(s)"),
    ]
    server = summary.get("server")
    if server:
        lines.append(f"  server side: {server['sink_misses']} answers left a sink stage "
                     f"({', '.join(server['sinks'])}) after their deadline (the client counted {reqs['late']} late), "
                     f"{server['drops']} dropped by the stages"
                     + (f"; requests waited {server['graph_queue_ms_mean']:.2f} ms on average for a graph instance"
                        if server["graph_queue_ms_mean"] is not None else ""))
    during = summary["plan_changes"].get("during_applies")
    if during:
        lines.append(f"  during applies ({during['seconds']:.1f} s in all): {during['requests']} requests scheduled, "
                     f"{during['late']} of the {reqs['late']} late answers and {during['dropped']} of the "
                     f"{reqs['dropped']} drops")
    lines += [f"  plan change at {c['t']:.1f} s: {c['reason']} ({c['slices']} slices)"
              for c in summary["plan_changes"]["changes"]]
    lines += fanout_lines(summary.get("fanout"))
    lines += [f"  warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)


def _figure(run: Run, what: str, width: float = 8.0, height: float = 3.5) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    title = f"{what}: {run.info.get('app') or run.path.name}"
    if run.info.get("system"):
        title += f" ({run.info['system']})"
    if run.info.get("emulated_mig"):
        title += ", MIG emulated"
    fig.suptitle(title)
    return fig


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _mark_plan_changes(ax: Any, run: Run) -> None:
    for i, p in enumerate(run.plans[1:]):
        ax.axvline(p.t, color="grey", linestyle=":", linewidth=1, label="plan change" if i == 0 else None)


def _steps(run: Run, values: list[float | None]) -> tuple[list[float], list[float]]:
    """x, y of a step line holding each plan's value until the next plan (the last until the run ends)."""
    xs = [p.t for p in run.plans] + [max(run.end_s, run.plans[-1].t)]
    ys = [math.nan if v is None else v for v in values]
    return xs, ys + ys[-1:]


def _plot_demand(run: Run, ax: Any) -> None:
    if not run.intervals and not run.plans:
        _no_data(ax, "no interval or plan events")
        return
    if run.intervals:
        ax.plot([e.t for e in run.intervals], [e.demand_rps for e in run.intervals], "o-", ms=3,
                label="measured demand")
        ax.plot([e.t for e in run.intervals],
                [math.nan if e.forecast_rps is None else e.forecast_rps for e in run.intervals], "--",
                label="forecast")
    if run.plans:
        capacity, planned = [p.capacity_rps for p in run.plans], [p.demand_rps for p in run.plans]
        if capacity == planned:  # one line, not two drawn over each other in a colour of neither
            ax.step(*_steps(run, planned), where="post", color="C2",
                    label="plan capacity (the demand planned for)")
        else:
            ax.step(*_steps(run, capacity), where="post", color="C2", label="plan capacity")
            ax.step(*_steps(run, planned), where="post", color="C3", linestyle="--", label="demand planned for")
        _mark_plan_changes(ax, run)
    ax.set(xlabel="time (s)", ylabel="requests/s")
    ax.legend(fontsize="small")


def _bin_width(run: Run) -> float:
    """The controller's interval when it logged two, else a twentieth of the run."""
    if len(run.intervals) >= 2:
        step = float(np.median(np.diff([e.t for e in run.intervals])))
        if step > 0:
            return step
    return run.end_s / 20 if run.end_s > 0 else 1.0


def _plot_violations(run: Run, ax: Any) -> None:
    req = run.requests
    if not req.outcome.size:
        _no_data(ax, "no requests")
        return
    width = _bin_width(run)
    edges = np.arange(0.0, req.scheduled_s.max() + width, width)
    if edges.size < 2:
        edges = np.array([0.0, width])
    total, _ = np.histogram(req.scheduled_s, edges)
    bottom = np.zeros(total.size)
    for outcome in ("late", "dropped", "error"):
        counts, _ = np.histogram(req.scheduled_s[req.outcome == outcome], edges)
        rate = np.divide(counts, total, out=np.zeros(total.size), where=total > 0)
        ax.bar(edges[:-1], rate, width=width, bottom=bottom, align="edge", label=outcome)
        bottom += rate
    _mark_plan_changes(ax, run)
    ax.set(xlabel="time requests were scheduled (s)", ylabel="SLO violation rate", ylim=(0, 1))
    ax.legend(fontsize="small")


def _plot_slices(run: Run, ax: Any) -> None:
    if not run.plans:
        _no_data(ax, "no plan events")
        return
    ax.step(*_steps(run, [p.plan.slices for p in run.plans]), where="post", label="slices of the plan in force")
    _mark_plan_changes(ax, run)
    ax.set(xlabel="time (s)", ylabel=f"{_slice_word(run)} in use", ylim=(0, None))
    ax.yaxis.get_major_locator().set_params(integer=True)  # whole slices
    ax.legend(fontsize="small")


def _plot_placement(p: PlanEvent, ax: Any) -> None:
    """One row per GPU, a box per segment over the memory slices it occupies."""
    gpu = gpu_type(p.plan.gpu_type)
    gpus = p.plan.placement.get("gpus", [])
    tasks = list(p.plan.routing)
    for row, segments in enumerate(gpus):
        for seg in segments:
            key = parse_label(seg["label"])
            span = gpu.shape(seg["size"]).mem_slices
            colour = f"C{tasks.index(key.task) % 10}" if key.task in tasks else "grey"
            ax.barh(row, span, left=seg["start"], height=0.8, color=colour, alpha=0.5, edgecolor="black")
            fit = max(4, int(11 * span * 8 / gpu.mem_slices))  # characters a box this wide holds at 6 pt
            ax.text(seg["start"] + span / 2, row, "\n".join(_clip(t, fit) for t in (
                        key.task, key.variant, f"{seg['shape']} {key.mps}p")),
                    ha="center", va="center", fontsize=6, clip_on=True)
    ax.set(xlim=(0, gpu.mem_slices), ylim=(max(len(gpus), 1) - 0.5, -0.5), yticks=range(len(gpus)),
           yticklabels=[f"{'CPU slice' if gpu.name == 'cpu' else 'GPU'} {i} ({sum(s['size'] for s in segs)}/{gpu.slices})"
                        for i, segs in enumerate(gpus)],
           xlabel="memory slice" if gpu.mig else "device",
           title=f"plan at {p.t:g} s: {p.plan.slices} slices on {p.plan.gpus} {gpu.name} (np: n MPS processes)")
    ax.set_xticks(range(gpu.mem_slices + 1))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _slice_word(run: Run) -> str:
    return "CPU slices" if run.info.get("gpu_type") == "cpu" else "GPU slices"


def figures(run: Run) -> dict[str, Figure]:
    """The report's figures by file name: demand, SLO violations, slices in use and placement."""
    out: dict[str, Figure] = {}
    for name, what, draw in (("demand.png", "demand", _plot_demand),
                             ("violations.png", "SLO violations", _plot_violations),
                             ("slices.png", _slice_word(run), _plot_slices)):
        out[name] = _figure(run, what)
        draw(run, out[name].add_subplot())
    shown = [run.plans[0], run.plans[-1]] if len(run.plans) > 1 else run.plans
    rows = max((len(p.plan.placement.get("gpus", [])) for p in shown), default=1)
    out["placement.png"] = fig = _figure(run, "placement", width=6.0 * max(len(shown), 1),
                                         height=1.0 + 0.5 * max(rows, 1))
    axes = fig.subplots(1, max(len(shown), 1), squeeze=False)[0]
    if not shown:
        _no_data(axes[0], "no plan events")
    for p, ax in zip(shown, axes):
        _plot_placement(p, ax)
    return out


def plot(run_dir: str | Path) -> list[Path]:
    """Write demand.png, violations.png, slices.png and placement.png into the run directory; none where
    matplotlib is not installed (an air-gapped GPU host: `jigsaw report RUN_DIR` draws them elsewhere)."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        import sys
        print(f"matplotlib is not installed: no plots in {run_dir} (run `jigsaw report {run_dir}` where it is)",
              file=sys.stderr)
        return []
    run = load_run(run_dir)
    paths = []
    for name, fig in figures(run).items():
        paths.append(run.path / name)
        fig.savefig(paths[-1], dpi=100)
    return paths
