"""The ``jigsaw`` Python-based Triton backend: one TritonPythonModel, two roles by config.

Installed as ``<backend-dir>/jigsaw/model.py``; a model selects it with ``backend: "jigsaw"`` and
its role and settings come from the JSON in the config parameter ``jigsaw``:

- ``graph``: the model clients call, named after the app. It stamps each request's absolute
  deadline (arrival + latency SLO, or the tighter ``deadline_ms`` / ``deadline_ns`` request
  parameters) and runs the app's task graph: per task, earliest-deadline-first admission, early
  drop, weighted routing among
  the plan's variant runners (async BLS, chunked to each runner's max batch; a chunk whose runner is
  too far behind to answer in time goes to another runner of the plan that can, or the request is
  dropped) and fan-out to the
  task's children; independent branches run concurrently. The plan's routing is not in the config
  but in the file that the setting ``routing`` names in the model's directory: each instance
  re-reads it at the start of an execute once it has changed, so a new plan needs no reload.
- ``runner``: one per (task, variant, segment, batch); binds each instance to its partition before
  anything touches CUDA, then runs the variant on the batch Triton's dynamic batcher formed.

An app with typed tensors (the settings' ``typed``) serves real data: the graph's inputs are the request's
tensors, each task's items are dicts of named tensors (each sent to a runner as a request of its own),
the edges' adapters make the children's items, and the response holds the sinks' outputs per item with
the variant that answered each; its runners load the variant from a model file or a Python class
(triton_backend/runners).

(The graph is one model rather than a Triton ensemble of per-task models: Triton 2.51 re-loads an
ensemble after every model load, and re-loading it under traffic crashed the server.)
"""
from __future__ import annotations

import asyncio
import gc
import heapq
import hmac
import itertools
import json
import math
import os
import threading
import time
import traceback
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from jigsawserve.triton_backend import runners
from jigsawserve.triton_backend.adapters import apply as adapt
from jigsawserve.triton_backend.adapters import resolve as resolve_adapter
from jigsawserve.triton_backend.backlog import PREFIX as BACKLOG_PREFIX
from jigsawserve.triton_backend.backlog import DOWN_METRIC, SharedBacklog, remove_stale
from jigsawserve.triton_backend.scheduling import (DropDecision, FanOut, Route, WeightedRoundRobin, backlog_ms, choose_route,
                                       drop_decision, pace)
from jigsawserve.triton_backend.tensors import Item, TensorSpec, conform, empty, from_wire, to_wire
from jigsawserve.triton_backend.variants import PADDING_METRIC, build

_FAMILIES: dict[str, Any] = {}
STALE_DEADLINE_NS = 3_600 * 10**9  # a deadline_ns this far behind the server's clock is a unit or clock error
# Runners answer the graph model only: it passes the repository's runner key (a file beside the models, which
# no client API serves) as this request parameter in its BLS calls (render.RUNNER_KEY_FILE, CALLER_PARAM).
RUNNER_KEY_FILE = ".jigsaw-runner-key"
CALLER_PARAM = "jigsaw_caller"
INTERNAL_ERROR = "jigsaw: internal error while serving this request (the server's log has the details)"
# A runner whose stub died answers every request with "Stub process '<instance>' is not healthy." (after about
# 1.1 s, measured with 2.51) and Triton does not restart it: the stages keep their items away from a runner that
# failed so, or that Triton called unavailable, for this long (shared by the graph instances), then try it again.
DOWN_S = 5.0
DOWN_MARKS = ("is not healthy",)


def _counter(name: str, description: str) -> Any:
    if name not in _FAMILIES:
        _FAMILIES[name] = pb_utils.MetricFamily(name=name, description=description,
                                                kind=pb_utils.MetricFamily.COUNTER)
    return _FAMILIES[name]


class Failure(str):
    """A request's error message and the Triton error code it is answered with: a plain ``str`` (a runner's
    failure, an adapter's) is INTERNAL (HTTP 500)."""

    code = "INTERNAL"


class Unavailable(Failure):
    """Dropped (its deadline cannot be met now): retry later. HTTP 503, gRPC UNAVAILABLE."""

    code = "UNAVAILABLE"


class Invalid(Failure):
    """The request itself is wrong (a parameter, an input). HTTP 400, gRPC INVALID_ARGUMENT."""

    code = "INVALID_ARG"


def _error(message: str) -> Any:
    code = getattr(pb_utils.TritonError, getattr(message, "code", "INTERNAL"))
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(message), code))


def _runner_key(model_dir: str) -> str:
    """The repository's runner key (the file beside the model directories)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(model_dir)), RUNNER_KEY_FILE)) as f:
        return f.read().strip()


def _parameters(request: Any) -> dict[str, Any]:
    params = request.parameters()
    return json.loads(params) if params and params != "{}" else {}


def _stamp(request: Any, slo_ns: int) -> tuple[int, int] | Invalid:
    """Absolute deadline (ns since the epoch) of a request arriving now and its budget (ns), or an error
    message for a bad parameter.

    The budget is the SLO or the tighter ``deadline_ms``. A client whose clock agrees with the server's
    (same host, or synchronised) may also send ``deadline_ns``, its own absolute deadline, which then
    counts the time the request spent in Triton's queue before a graph instance took it (no stage can
    see that wait otherwise); the deadline is the earlier of the two."""
    now, budget, deadline = time.time_ns(), slo_ns, None
    given = _parameters(request)
    if given:
        value = given.get("deadline_ms")
        if value is not None:
            try:
                ms = float(value) if not isinstance(value, bool) else math.nan
            except (TypeError, ValueError, OverflowError):
                ms = math.nan
            if not (math.isfinite(ms) and ms > 0):
                return Invalid(f"jigsaw: request parameter deadline_ms must be a positive finite number of "
                               f"milliseconds, got {value!r}")
            budget = min(budget, int(min(ms * 1e6, budget)))  # one beyond the SLO keeps the SLO
        deadline = given.get("deadline_ns")
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, int):
                return Invalid(f"jigsaw: request parameter deadline_ns must be an integer (ns since the Unix "
                               f"epoch), got {deadline!r}")
            if deadline < now - STALE_DEADLINE_NS:
                return Invalid(f"jigsaw: request parameter deadline_ns={deadline} is {(now - deadline) / 1e9:.0f} s "
                               f"before the server's clock: it must be ns since the Unix epoch (not ms or s), "
                               f"from a clock in step with the server's")
    return (now + budget if deadline is None else min(now + budget, deadline)), budget


class _Counters:
    """Custom-metric increments, summed locally and sent to Triton at most every ``FLUSH_S`` (each
    increment is an IPC round trip from the stub to the server) by a thread of their own: the graph's
    event loop runs only while an execute does, and increments must not wait for the next request.
    ``add`` (the serving thread) only raises a running total; ``flush`` sends each total's growth since
    it last sent it."""

    FLUSH_S = 0.1

    def __init__(self) -> None:
        self._totals: dict[Any, int] = {}
        self._sent: dict[Any, int] = {}
        self._flushing = threading.Lock()
        self._due = threading.Event()
        threading.Thread(target=self._send, name="jigsaw-counters", daemon=True).start()

    def add(self, metric: Any, n: int) -> None:
        if n:
            self._totals[metric] = self._totals.get(metric, 0) + n
            if not self._due.is_set():  # the sender clears it before it reads the totals
                self._due.set()

    def _send(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.FLUSH_S)
            self._due.clear()
            self.flush()

    def flush(self) -> None:
        with self._flushing:
            for metric, total in list(self._totals.items()):
                if total > self._sent.get(metric, 0):
                    metric.increment(total - self._sent.get(metric, 0))
                    self._sent[metric] = total


class _Routing:
    """One task's part of the plan: its runners, picked by smooth weighted round robin from this
    instance's phase of the cycle, and the latencies its early drop compares against."""

    def __init__(self, cfg: dict[str, Any], phase: int) -> None:
        self.routes = [Route(**r) for r in cfg["routes"]]
        self.router = WeightedRoundRobin(self.routes)
        for _ in range(phase):  # instance i starts i picks into the cycle: together, the instances follow it
            self.router.pick()
        self.fastest_ms = min(r.latency_ms for r in self.routes)
        self.downstream_ms = float(cfg["downstream_ms"])


def _parse_routing(text: str, tasks: list[str], phase: int) -> dict[str, _Routing]:
    """A routing file's per-task routing; ValueError, KeyError or TypeError when it is not JSON or
    does not route exactly ``tasks``."""
    doc = json.loads(text)
    if sorted(doc["tasks"]) != sorted(tasks):
        raise ValueError(f"it routes tasks {sorted(doc['tasks'])}, the graph has {sorted(tasks)}")
    return {t: _Routing(doc["tasks"][t], phase) for t in tasks}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    """What changes when the file is replaced or rewritten; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class _Task:
    """One task of the graph: EDF admission to ``max_inflight`` dispatch slots, early drop, weighted
    routing over the runners of the routing it is given (away from a runner too far behind to answer
    in time), fan-out to the children."""

    bls_parameters: dict[str, Any] = {}  # sent with every BLS request (the graph sets the runner key)

    def __init__(self, app: str, cfg: dict[str, Any], width: int, counters: "_Counters",
                 backlog: SharedBacklog) -> None:
        self.task = cfg["task"]
        self.backlog = backlog
        self.parents: list[str] = cfg["parents"]
        self.width = width
        self.fanouts = {child: FanOut(o.get("factors", {}), float(o.get("factor", 1.0)))
                        for child, o in cfg["children"].items()}
        self.slots = int(cfg.get("max_inflight", 8))
        self._busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._seq = itertools.count()
        self.counters = counters
        self.labels = labels = {"app": app, "task": self.task}
        self.m_requests = _counter("jigsaw_stage_requests_total", "requests seen by a jigsaw task stage").Metric(labels=labels)
        self.m_drops = _counter("jigsaw_stage_drops_total", "requests dropped early by a jigsaw task stage").Metric(labels=labels)
        self.m_misses = _counter("jigsaw_stage_deadline_misses_total",
                                 "requests that left a jigsaw task stage after their deadline").Metric(labels=labels)
        self.m_wait = _counter("jigsaw_stage_queue_delay_us_total",
                               "time requests waited for a dispatch slot in a jigsaw task stage (us)").Metric(labels=labels)
        self.m_items: dict[str, Any] = {}  # variant -> counter, kept across routings (a new one would restart at 0)
        self.down_reasons: dict[str, str] = {}  # runner model -> why this instance last found it down
        self.m_down: dict[str, Any] = {}  # runner model -> times it was found down (the controller reloads it)

    def count_items(self, variant: str, n: int) -> None:
        if variant not in self.m_items:
            family = _counter("jigsaw_stage_variant_items_total", "items a jigsaw task stage routed to each variant")
            self.m_items[variant] = family.Metric(labels={**self.labels, "variant": variant})
        self.counters.add(self.m_items[variant], n)

    async def _acquire(self, deadline: int) -> bool:
        """Take a dispatch slot, in earliest-deadline-first order behind the requests already waiting;
        whether this request had to wait for one."""
        if self._busy < self.slots and not self._waiting:
            self._busy += 1
            return False
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (deadline, next(self._seq), fut))
        await fut
        return True

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self._busy -= 1

    async def serve(self, rows: np.ndarray, deadline: int, reserve_ms: float, routing: _Routing,
                    alone: bool) -> dict[str, np.ndarray] | np.ndarray | str:
        """Run ``rows`` through this task on ``routing``, admitted only when its runners would answer
        ``reserve_ms`` before the deadline: the items for each child (or this sink's output rows), or
        the error message of a drop or failure. ``alone``: nothing else runs in this instance meanwhile
        (``_Graph.execute``), so a stage of one chunk calls its runner blocking (``_send``)."""
        self.counters.add(self.m_requests, 1)
        arrived = time.time_ns()
        queued = await self._acquire(deadline)
        try:
            started = time.time_ns()
            if queued:  # else it took a free slot at once: nothing to add (one IPC less at the next flush)
                self.counters.add(self.m_wait, max(0, (started - arrived) // 1000))
            decision: DropDecision = drop_decision(started, deadline, reserve_ms, routing.fastest_ms,
                                                   routing.downstream_ms, self.task)
            if decision.drop:
                self.counters.add(self.m_drops, 1)
                return Unavailable(decision.reason)
            chunks = self._plan_chunks(routing, len(rows), deadline, reserve_ms)
            if isinstance(chunks, str):
                self.counters.add(self.m_drops, 1)
                return Unavailable(chunks)
            if len(chunks) == 1:
                route, a, b, ms = chunks[0]
                results = [await self._dispatch(route, rows[a:b], ms, alone)]
            else:
                results = await asyncio.gather(*(self._dispatch(route, rows[a:b], ms, False)
                                                 for route, a, b, ms in chunks))
        finally:
            self._release()
        for result in results:
            if isinstance(result, str):
                self.counters.add(self.m_drops, 1)
                return result
        if time.time_ns() > deadline:
            self.counters.add(self.m_misses, 1)
        return self._outputs(rows, chunks, results)

    def _outputs(self, rows: np.ndarray, chunks: list[tuple[Route, int, int, float]],
                 results: list[np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
        """A sink's output rows, or each child's rows: ``factor(variant)`` per row answered."""
        if not self.fanouts:
            return _rows_of(results, self.width)
        return {child: self._fan_out(fan, chunks, results) for child, fan in self.fanouts.items()}

    def _plan_chunks(self, routing: _Routing, n: int, deadline: int,
                     reserve_ms: float) -> list[tuple[Route, int, int, float]] | str:
        """The chunks of ``n`` rows with their routes and the backlog estimate each was sent on, or why
        the request is dropped: no runner of the plan can answer a chunk ``reserve_ms`` before the
        deadline."""
        left_ms = (deadline - time.time_ns()) / 1e6
        totals = {r.model: self.backlog.totals(r.model) for r in routing.routes}
        ahead = {model: t.items for model, t in totals.items()}
        slower = {model: pace(t.answers, t.observed_ms, t.estimated_ms, t.idle_s) for model, t in totals.items()}
        down = {model: t.down_s for model, t in totals.items() if t.down_s > 0}

        def queued_ms(r: Route) -> float:  # at the planned throughput
            return backlog_ms(r.latency_ms, ahead[r.model], r.throughput_rps)

        def estimate(r: Route) -> float:  # at the pace the runner has kept lately; never, while it is down
            return math.inf if r.model in down else queued_ms(r) * slower[r.model]

        chunks, start = [], 0
        while start < n:
            picked = routing.router.pick()
            rows = min(n - start, picked.batch)
            route = choose_route(picked, routing.routes, rows, left_ms - reserve_ms, routing.downstream_ms, estimate)
            if route is None:
                failing = "; ".join(f"variant {r.variant} ({r.model}) is down, tried again in {down[r.model]:.1f} s: "
                                    f"{self.down_reasons.get(r.model, 'found failing by another graph instance')}"
                                    for r in routing.routes if r.model in down)
                up = [estimate(r) for r in routing.routes if r.model not in down]
                if not up:
                    return f"jigsaw: request dropped at stage {self.task}: {failing}"
                return (f"jigsaw: request dropped at stage {self.task}: {left_ms:.1f} ms left before its deadline, "
                        f"its runners would answer in {min(up):.1f} ms at the soonest "
                        f"(their backlog), the rest of the path needs {routing.downstream_ms:.1f} ms and "
                        f"{reserve_ms:.1f} ms are held in reserve" + (f"; {failing}" if failing else ""))
            end = min(n, start + route.batch)
            chunks.append((route, start, end, queued_ms(route)))
            ahead[route.model] += end - start
            start = end
        for route, a, b, _ in chunks:
            self.count_items(route.variant, b - a)
        return chunks

    @staticmethod
    async def _send(requests: list[Any], blocking: bool) -> list[Any]:
        """The runners' responses to BLS ``requests``. ``async_exec`` runs each call in a thread of the
        event loop's executor and hands its answer back to the loop: two thread switches per call, which
        were most of a stage's cost on a loaded CPU (bench/overhead.py). When nothing else could run in
        the meantime (``blocking``: one request alone in this instance, one call), ``exec`` waits for it
        in this thread instead."""
        if blocking and len(requests) == 1:
            return [requests[0].exec()]
        return list(await asyncio.gather(*(r.async_exec() for r in requests)))

    async def _dispatch(self, route: Route, rows: np.ndarray, estimated_ms: float,
                        blocking: bool) -> np.ndarray | str:
        request = pb_utils.InferenceRequest(model_name=route.model, requested_output_names=["OUTPUT"],
                                            inputs=[pb_utils.Tensor("INPUT", rows)], parameters=self.bls_parameters)
        self.backlog.add(route.model, len(rows))
        sent = time.monotonic()
        try:
            response = (await self._send([request], blocking))[0]
        finally:
            self.backlog.add(route.model, -len(rows))
        self.backlog.answered(route.model, estimated_ms, (time.monotonic() - sent) * 1000)
        if response.has_error():
            return self._failed(route, response.error())
        return pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy()

    def _failed(self, route: Route, error: Any) -> Failure:
        """A runner's error as this request's. A runner that is down (its stub died: DOWN_MARKS, or Triton
        answered UNAVAILABLE) is marked so for DOWN_S, for every graph instance, and the request gets
        UNAVAILABLE (retryable); the variant's own failures are INTERNAL."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        message = error.message()
        down = code == pb_utils.TritonError.UNAVAILABLE or any(m in message for m in DOWN_MARKS)
        if down:
            self.backlog.mark_down(route.model, time.monotonic() + DOWN_S)
            self.down_reasons[route.model] = message
            if route.model not in self.m_down:
                self.m_down[route.model] = _counter(
                    DOWN_METRIC, "times a jigsaw task stage found a runner down (its stub dead)").Metric(
                    labels={**self.labels, "model": route.model})
            self.counters.add(self.m_down[route.model], 1)
            pb_utils.Logger.log_warn(f"jigsaw stage {self.task}: runner {route.model} is down ({message}): "
                                     f"its items go to the task's other runners for {DOWN_S:g} s")
        kind = Unavailable if down else Failure
        return kind(f"jigsaw: stage {self.task}: variant {route.variant} ({route.model}) failed: {message}")

    def _fan_out(self, fan: FanOut, chunks: list[tuple[Route, int, int, float]],
                 results: list[np.ndarray]) -> np.ndarray:
        pieces = []
        for (route, _, _, _), out in zip(chunks, results):
            k = fan.count(route.variant, len(out))
            if k:
                pieces.append(out if k == len(out) else out[np.arange(k) % len(out)])
        return _rows_of(pieces, self.width)


def _rows_of(parts: list[np.ndarray], width: int) -> np.ndarray:
    """``parts`` one after another as FP32 rows, copied only where there are several to join or another type."""
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, width), np.float32)


class _TypedTask(_Task):
    """A task of an app with typed tensors. Its items are dicts of named tensors; each goes to a runner as
    a request of its own (the runner's dynamic batcher batches them, ragged), and the children's items are
    what the edges' adapters make of each answered item: the fan-out is the data's, counted per parent
    variant (``jigsaw_edge_parent_items_total``, ``jigsaw_edge_child_items_total``). A sink's result is
    its answered items' outputs with the variant that answered each."""

    def __init__(self, app: str, cfg: dict[str, Any], width: int, counters: "_Counters",
                 backlog: SharedBacklog) -> None:
        super().__init__(app, cfg, width, counters, backlog)
        self.inputs = [TensorSpec.from_json(t) for t in cfg["inputs"]]
        self.outputs = [TensorSpec.from_json(t) for t in cfg["outputs"]]
        self.source_adapter = resolve_adapter(cfg.get("adapter"))
        self.adapters = {child: resolve_adapter(o.get("adapter")) for child, o in cfg["children"].items()}
        self.child_inputs: dict[str, list[TensorSpec]] = {}  # set by the graph, which knows every task
        self.m_edges: dict[tuple[str, str], tuple[Any, Any]] = {}  # (child, variant) -> parent, child counters

    def count_fanout(self, child: str, variant: str, made: int) -> None:
        key = (child, variant)
        if key not in self.m_edges:
            labels = {"app": self.labels["app"], "parent": self.task, "child": child, "variant": variant}
            self.m_edges[key] = (
                _counter("jigsaw_edge_parent_items_total", "parent items a jigsaw edge adapted, per parent "
                         "variant").Metric(labels=labels),
                _counter("jigsaw_edge_child_items_total", "child items a jigsaw edge's adapter made of them, "
                         "per parent variant").Metric(labels=labels))
        parents, children = self.m_edges[key]
        self.counters.add(parents, 1)
        self.counters.add(children, made)

    async def _dispatch(self, route: Route, items: list[Item], estimated_ms: float,
                        blocking: bool) -> list[Item] | str:
        names = [s.name for s in self.outputs]
        requests = [pb_utils.InferenceRequest(model_name=route.model, requested_output_names=names,
                                              inputs=[pb_utils.Tensor(s.name, to_wire(s, item[s.name]))
                                                      for s in self.inputs], parameters=self.bls_parameters)
                    for item in items]
        self.backlog.add(route.model, len(items))
        sent = time.monotonic()
        try:
            responses = await self._send(requests, blocking)
        finally:
            self.backlog.add(route.model, -len(items))
        self.backlog.answered(route.model, estimated_ms, (time.monotonic() - sent) * 1000)
        answers = []
        for response in responses:
            if response.has_error():
                return self._failed(route, response.error())
            answers.append({s.name: from_wire(s, pb_utils.get_output_tensor_by_name(response, s.name).as_numpy())
                            for s in self.outputs})
        return answers

    def _outputs(self, items: list[Item], chunks: list[tuple[Route, int, int, float]],
                 results: list[list[Item]]) -> dict[str, list[Item]] | list[tuple[Item, str]] | str:
        answered = [(item, out, route.variant) for (route, a, b, _), outs in zip(chunks, results)
                    for item, out in zip(items[a:b], outs)]
        if not self.adapters:
            return [(out, variant) for _, out, variant in answered]
        children: dict[str, list[Item]] = {}
        for child, (name, adapter) in self.adapters.items():
            made: list[Item] = []
            for item, out, variant in answered:
                try:
                    got = adapt(adapter, item, out, self.child_inputs[child])
                except Exception as exc:  # the app's code: whatever it raises fails this request only
                    return f"jigsaw: adapter {name} on edge {self.task}->{child} failed: {type(exc).__name__}: {exc}"
                self.count_fanout(child, variant, len(got))
                made.extend(got)
            children[child] = made
        return children


class _Graph:
    """The app's task graph behind the model clients call. Its routing comes from the routing file in
    the model's directory, re-read at the start of an execute when the file has changed; a request
    keeps the routing it started with."""

    def __init__(self, cfg: dict[str, Any], instance_name: str, model_dir: str) -> None:
        self.app = cfg["app"]
        self.width = int(cfg["width"])
        self.slo_ns = int(float(cfg["slo_ms"]) * 1e6)
        self.reserve = float(cfg["admission_reserve"])  # of a request's budget, for the path the stages do not see
        self.counters = _Counters()
        index = instance_name.rpartition("_")[2]
        self.phase = int(index) if index.isdigit() else 0
        # the runners' outstanding items, shared by this server's instances of the graph model
        table = os.path.join(model_dir, f"{BACKLOG_PREFIX}{os.getppid()}")  # the stub's parent: tritonserver
        remove_stale(os.path.join(model_dir, f"{BACKLOG_PREFIX}*"), keep=table)
        self.backlog = SharedBacklog(table)
        self.typed = cfg.get("typed")
        stage = _TypedTask if self.typed else _Task
        self.tasks = [stage(self.app, t, self.width, self.counters, self.backlog)
                      for t in cfg["tasks"]]  # topological order
        if cfg.get("runner_key"):  # the runners answer only BLS requests that carry it
            for t in self.tasks:
                t.bls_parameters = {CALLER_PARAM: _runner_key(model_dir)}
        if self.typed:
            by_name = {t.task: t for t in self.tasks}
            for t in self.tasks:
                t.child_inputs = {child: by_name[child].inputs for child in t.adapters}
            self.inputs = [TensorSpec.from_json(t) for t in self.typed["inputs"]]
            self.outputs = [(TensorSpec.from_json(o), o["task"], o["output"]) for o in self.typed["outputs"]]
        self.sinks = [t.task for t in self.tasks if not t.fanouts]
        # one task after another, each with at most one parent and one child: a request's stages never run
        # at once, so they are awaited in turn
        self.chain = (sum(not t.parents for t in self.tasks) == 1
                      and all(len(t.parents) <= 1 and len(t.fanouts) <= 1 for t in self.tasks))
        self.routing_path = os.path.join(model_dir, cfg["routing"])
        self._stamp = _file_stamp(self.routing_path)
        self._text = _read(self.routing_path)
        self.routing = _parse_routing(self._text, [t.task for t in self.tasks], self.phase)

    def refresh(self) -> None:
        """Re-read the routing file if it changed since it was last read; keep the current routing
        (and log why) when it is missing or unusable."""
        stamp = _file_stamp(self.routing_path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            text = _read(self.routing_path)
            if text == self._text:
                return  # rewritten, same routing (a rollback restores the file): keep the routers' cycle
            self.routing, self._text = _parse_routing(text, [t.task for t in self.tasks], self.phase), text
        except (OSError, ValueError, KeyError, TypeError) as exc:
            pb_utils.Logger.log_warn(f"jigsaw {self.app}: routing file {self.routing_path} unusable ({exc!r}); "
                                     "keeping the routing")
            return
        pb_utils.Logger.log_info(f"jigsaw {self.app}: new routing: " + "; ".join(
            f"{t}: {', '.join(r.model for r in routing.routes)}" for t, routing in self.routing.items()))

    async def execute(self, requests: list) -> list:
        """Triton's dynamic batcher hands over every request queued for this instance; they are served
        concurrently, each task admitting them in earliest-deadline-first order. A request alone in a
        chain's instance has nothing to run beside it: its runner calls block (``_Task._send``)."""
        self.refresh()
        if len(requests) == 1:
            return [await self._serve_one(requests[0], self.chain)]
        return list(await asyncio.gather(*(self._serve_one(r, False) for r in requests)))

    async def _serve_one(self, request: Any, alone: bool) -> Any:
        """One request's response; whatever goes wrong fails this request only, and its traceback goes to
        the server's log, never to the client."""
        try:
            return await self._serve(request, alone)
        except Exception:
            pb_utils.Logger.log_error(f"jigsaw {self.app}: request failed: {traceback.format_exc()}")
            return _error(INTERNAL_ERROR)

    def _rows(self, request: Any) -> np.ndarray | str:
        tensor = pb_utils.get_input_tensor_by_name(request, "INPUT")
        if tensor is None:
            return Invalid("jigsaw: missing input tensor INPUT")
        rows = tensor.as_numpy()
        if rows.dtype != np.float32 or rows.ndim != 3 or rows.shape[0] != 1 or rows.shape[2] != self.width:
            return Invalid(f"jigsaw: input INPUT must be FP32 of shape [1, items, {self.width}] (one request), "
                           f"got {rows.dtype} {list(rows.shape)}")
        return rows[0]

    def _sources(self, request: Any) -> dict[str, Any] | str:
        """Each source task's items of this request, or the error message of a bad request: the rows of
        INPUT, or (typed) what each source's adapter makes of the request's tensors."""
        if not self.typed:
            rows = self._rows(request)
            return rows if isinstance(rows, str) else {t.task: rows for t in self.tasks if not t.parents}
        given: Item = {}
        for spec in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            value = tensor.as_numpy()
            if value.shape[:1] != (1,):
                dims = ", ".join(map(str, spec.shape or (1,)))
                return Invalid(f"jigsaw: input {spec.name} must be one request: shape [1, {dims}], "
                               f"got {list(value.shape)}")
            given[spec.name] = from_wire(spec, value)
        sources: dict[str, Any] = {}
        for task in self.tasks:
            if not task.parents:
                name, adapter = task.source_adapter
                try:
                    sources[task.task] = adapt(adapter, given, {}, task.inputs)
                except Exception as exc:  # the app's code or a bad input: this request fails, with why
                    return Invalid(f"jigsaw: adapter {name} of source task {task.task} failed: "
                                   f"{type(exc).__name__}: {exc}")
        return sources

    def _join(self, parts: list[Any]) -> Any:
        """A task's items from several parents, in the parents' order."""
        if len(parts) == 1:
            return parts[0]
        return [item for part in parts for item in part] if self.typed else np.concatenate(parts)

    def _response(self, results: dict[str, Any]) -> Any:
        if not self.typed:
            return pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(f"{sink}_OUTPUT", np.asarray(results[sink], dtype=np.float32)[None])
                for sink in self.sinks])
        tensors = []
        for spec, task, output in self.outputs:
            rows = [conform(spec, np.asarray(out[output])) for out, _ in results[task]]
            tensors.append(pb_utils.Tensor(spec.name, np.stack(rows)[None] if rows else empty(spec, (1, 0))))
        for sink, name in self.typed["variants"].items():
            variants = np.array([v.encode() for _, v in results[sink]], dtype=np.object_).reshape(1, -1)
            tensors.append(pb_utils.Tensor(name, variants))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    async def _serve(self, request: Any, alone: bool) -> Any:
        stamp = _stamp(request, self.slo_ns)
        sources = self._sources(request)
        if isinstance(stamp, str) or isinstance(sources, str):
            return _error(stamp if isinstance(stamp, str) else sources)
        deadline, budget = stamp
        reserve_ms = budget * self.reserve / 1e6
        routing = self.routing

        async def stage(task: _Task, got: list[Any]) -> Any:  # got: what its parents returned
            if not task.parents:
                items = sources[task.task]
            else:
                failed = next((g for g in got if isinstance(g, str)), None)
                if failed is not None:
                    return failed
                items = self._join([g[task.task] for g in got])
            return await task.serve(items, deadline, reserve_ms, routing[task.task], alone)

        results: dict[str, Any] = {}
        if self.chain:  # each task waits for the one before it anyway
            for task in self.tasks:
                results[task.task] = await stage(task, [results[p] for p in task.parents])
        else:
            done: dict[str, asyncio.Future] = {}

            async def run(task: _Task) -> Any:
                return await stage(task, [await done[p] for p in task.parents])

            for task in self.tasks:
                done[task.task] = asyncio.ensure_future(run(task))
            results = {t: await f for t, f in done.items()}
        failed = next((r for r in results.values() if isinstance(r, str)), None)
        if failed is not None:
            return _error(failed)
        return self._response(results)


def _process_age_s() -> float:
    """Seconds since this process started (from /proc: tritonserver runs on Linux only)."""
    with open("/proc/self/stat") as f:
        start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


class _Runner:
    def __init__(self, cfg: dict[str, Any], model_name: str, instance_name: str) -> None:
        group, _, index = instance_name.rpartition("_")
        bindings = cfg.get("bindings", {}).get(group)
        if bindings:
            os.environ.update(bindings[int(index) % len(bindings)])  # before anything touches CUDA
        started = time.monotonic()
        self.run = self._build(cfg)
        built = time.monotonic() - started
        # where an apply's time goes: the stub's start and imports, then the build (and capture)
        parts = getattr(self.run, "load_times", {})
        detail = "; " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) if parts else ""
        pb_utils.Logger.log_info(f"jigsaw runner {model_name} {instance_name}: ready {_process_age_s():.1f} s "
                                 f"after its stub started (build and capture {built:.1f} s{detail})")
        # batches run padded to a captured size: the controller compares their time with the profile at
        # the size that ran (nv_inference_count counts the requested rows only)
        self.m_padding = _counter(PADDING_METRIC, "rows a jigsaw runner added to fill its batches up to a "
                                  "captured batch size").Metric(labels={"model": model_name})
        self.sent_padded, self.sent_at = 0, time.monotonic()

    def _build(self, cfg: dict[str, Any]) -> Any:
        return build(cfg["runtime"], int(cfg["width"]), int(cfg.get("max_batch", 1)), cfg.get("sizes"))

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        outputs = self.run(np.concatenate(inputs))
        if time.monotonic() - self.sent_at >= _Counters.FLUSH_S:
            self.flush()  # an increment is an IPC round trip: at most one per FLUSH_S
        responses, start = [], 0
        for rows in inputs:
            part = outputs[start:start + len(rows)]
            start += len(rows)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", part)]))
        return responses

    def close(self, model_name: str, instance_name: str) -> None:
        """Stop the runner's background captures, if any (``zoo.GraphRunner.close``), and log what they did:
        per size its wall-clock start (to match with the requests it may have delayed) and seconds."""
        close = getattr(self.run, "close", None)
        if close is None:
            return
        stopped = close()
        done, error = getattr(self.run, "background_times", {}), getattr(self.run, "capture_error", None)
        if done or error or not stopped:
            times = ", ".join(f"{k} at {at:.3f} for {s:.2f}" for k, (at, s) in done.items())
            pb_utils.Logger.log_info(f"jigsaw runner {model_name} {instance_name}: captured in the background: "
                                     f"{times or 'nothing'}" + (f"; stopped by {error}" if error else "")
                                     + ("" if stopped else "; still capturing at unload"))

    def flush(self) -> None:
        padded = getattr(self.run, "padded_rows", 0)
        if padded > self.sent_padded:
            self.m_padding.increment(padded - self.sent_padded)
            self.sent_padded = padded
        self.sent_at = time.monotonic()


class _TypedRunner(_Runner):
    """A runner of a typed variant (triton_backend/runners): every request is one item of the task's
    declared inputs; the batch Triton's dynamic batcher formed goes to the variant at once. What the
    variant raises, or outputs that do not match the declared tensors, fail the batch's requests with
    the message."""

    def _build(self, cfg: dict[str, Any]) -> Any:
        self.inputs = [TensorSpec.from_json(t) for t in cfg["inputs"]]
        self.outputs = [TensorSpec.from_json(t) for t in cfg["outputs"]]
        return runners.build(cfg["runtime"], self.inputs, self.outputs)

    def execute(self, requests: list) -> list:
        items = [{s.name: from_wire(s, pb_utils.get_input_tensor_by_name(r, s.name).as_numpy()) for s in self.inputs}
                 for r in requests]
        try:
            answers = self.run.infer(items)
            if len(answers) != len(items):
                raise ValueError(f"infer returned {len(answers)} answers for {len(items)} items")
            tensors = [[conform(s, np.asarray(a[s.name])) for s in self.outputs] for a in answers]
            problems = [p for row in tensors for s, t in zip(self.outputs, row) if (p := s.problem(t))]
            if problems:
                raise ValueError("outputs do not match the task's: " + "; ".join(sorted(set(problems))))
        except Exception as exc:  # the variant's code: fail this batch's requests, keep serving
            return [_error(f"{type(exc).__name__}: {exc}") for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(s.name, to_wire(s, t))
                                                           for s, t in zip(self.outputs, row)]) for row in tensors]


class TritonPythonModel:
    """Dispatches to the role named in the model config's ``jigsaw`` parameter."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        cfg = json.loads(config["parameters"]["jigsaw"]["string_value"])
        role = cfg["role"]
        if role == "graph":
            self.impl: Any = _Graph(cfg, args["model_instance_name"], args["model_repository"])
        elif role == "runner":
            # read first: a runner rendered to answer the graph only does not load without the key
            self.key = _runner_key(args["model_repository"]) if cfg.get("runner_key") else None
            runner = _TypedRunner if "inputs" in cfg else _Runner
            self.impl = runner(cfg, args["model_name"], args["model_instance_name"])
            self.names = (args["model_name"], args["model_instance_name"])
        else:
            raise ValueError(f"jigsaw: unknown role {role!r} in model {args['model_name']}")
        self.is_async = role == "graph"
        # The graph's coroutines run on a loop of its own in the stub's main thread: an async execute would
        # run on the stub's loop thread, while the main thread waits for it (two thread switches a request).
        self.loop = asyncio.new_event_loop() if self.is_async else None
        # what is built now lives as long as the process: frozen, the collector never walks it again
        # (for a runner, torch, its libraries and the model are 0.34-0.43 million objects, and a full
        # collection over them stopped the process for 0.13-0.19 s, bench/gc_pause.py)
        gc.freeze()

    def execute(self, requests: list) -> list:
        if self.is_async:
            return self.loop.run_until_complete(self.impl.execute(requests))
        return self._run(requests)

    def _run(self, requests: list) -> list:
        """A runner's batch: requests without the runner key (a client calling the runner directly) are
        refused one by one; an exception fails this batch's requests with its type and message (the
        traceback goes to the server's log only)."""
        responses: list[Any] = [None] * len(requests)
        if self.key is not None:
            for i, r in enumerate(requests):
                try:
                    caller = _parameters(r).get(CALLER_PARAM)
                except ValueError:
                    caller = None
                if not (isinstance(caller, str) and hmac.compare_digest(caller.encode(), self.key.encode())):
                    responses[i] = _error(Invalid(f"jigsaw: model {self.names[0]} is a runner of the app's graph "
                                                  "model and answers only that model: send requests to the app"))
        todo = [i for i, r in enumerate(responses) if r is None]
        if todo:
            try:
                done = self.impl.execute([requests[i] for i in todo])
            except Exception as exc:
                pb_utils.Logger.log_error(f"jigsaw runner {self.names[0]}: batch failed: {traceback.format_exc()}")
                done = [_error(f"{type(exc).__name__}: {exc}") for _ in todo]
            for i, response in zip(todo, done):
                responses[i] = response
        return responses

    def finalize(self) -> None:
        """Send the counter increments still held back, give the backlog row back and close the graph's event
        loop, or stop a runner's background captures (the model is being unloaded)."""
        if self.is_async:
            self.impl.counters.flush()
            self.impl.backlog.close()
            self.loop.run_until_complete(self.loop.shutdown_default_executor())  # its async_exec threads
            self.loop.close()
        else:
            self.impl.close(*self.names)
            self.impl.flush()
