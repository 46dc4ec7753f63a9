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

(The graph is one model rather than a Triton ensemble of per-task models: Triton 2.51 re-loads an
ensemble after every model load, and re-loading it under traffic crashed the server.)
"""
from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import json
import os
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_backend.backlog import PREFIX as BACKLOG_PREFIX
from triton_backend.backlog import SharedBacklog, remove_stale
from triton_backend.scheduling import (DropDecision, FanOut, Route, WeightedRoundRobin, backlog_ms, choose_route,
                                       drop_decision, pace)
from triton_backend.variants import PADDING_METRIC, build

_FAMILIES: dict[str, Any] = {}
STALE_DEADLINE_NS = 3_600 * 10**9  # a deadline_ns this far behind the server's clock is a unit or clock error


def _counter(name: str, description: str) -> Any:
    if name not in _FAMILIES:
        _FAMILIES[name] = pb_utils.MetricFamily(name=name, description=description,
                                                kind=pb_utils.MetricFamily.COUNTER)
    return _FAMILIES[name]


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _stamp(request: Any, slo_ns: int) -> tuple[int, int] | str:
    """Absolute deadline (ns since the epoch) of a request arriving now and its budget (ns), or an error
    message for a bad parameter.

    The budget is the SLO or the tighter ``deadline_ms``. A client whose clock agrees with the server's
    (same host, or synchronised) may also send ``deadline_ns``, its own absolute deadline, which then
    counts the time the request spent in Triton's queue before a graph instance took it (no stage can
    see that wait otherwise); the deadline is the earlier of the two."""
    now, budget, deadline = time.time_ns(), slo_ns, None
    params = request.parameters()
    if params and params != "{}":
        given = json.loads(params)
        value = given.get("deadline_ms")
        if value is not None:
            try:
                budget = min(budget, int(float(value) * 1e6))
            except (TypeError, ValueError):
                return f"jigsaw: request parameter deadline_ms must be a number of milliseconds, got {value!r}"
        deadline = given.get("deadline_ns")
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, int):
                return (f"jigsaw: request parameter deadline_ns must be an integer (ns since the Unix epoch), "
                        f"got {deadline!r}")
            if deadline < now - STALE_DEADLINE_NS:
                return (f"jigsaw: request parameter deadline_ns={deadline} is {(now - deadline) / 1e9:.0f} s "
                        f"before the server's clock: it must be ns since the Unix epoch (not ms or s), "
                        f"from a clock in step with the server's")
    return (now + budget if deadline is None else min(now + budget, deadline)), budget


class _Counters:
    """Custom-metric increments, summed locally and sent to Triton at most every ``FLUSH_S`` (each
    increment is an IPC round trip from the stub to the server)."""

    FLUSH_S = 0.1

    def __init__(self) -> None:
        self._pending: dict[Any, int] = {}
        self._scheduled = False

    def add(self, metric: Any, n: int) -> None:
        if n:
            self._pending[metric] = self._pending.get(metric, 0) + n
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)

    def flush(self) -> None:
        pending, self._pending, self._scheduled = self._pending, {}, False
        for metric, n in pending.items():
            metric.increment(n)


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

    def count_items(self, variant: str, n: int) -> None:
        if variant not in self.m_items:
            family = _counter("jigsaw_stage_variant_items_total", "items a jigsaw task stage routed to each variant")
            self.m_items[variant] = family.Metric(labels={**self.labels, "variant": variant})
        self.counters.add(self.m_items[variant], n)

    async def _acquire(self, deadline: int) -> None:
        if self._busy < self.slots and not self._waiting:
            self._busy += 1
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (deadline, next(self._seq), fut))
        await fut

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self._busy -= 1

    async def serve(self, rows: np.ndarray, deadline: int, reserve_ms: float,
                    routing: _Routing) -> dict[str, np.ndarray] | np.ndarray | str:
        """Run ``rows`` through this task on ``routing``, admitted only when its runners would answer
        ``reserve_ms`` before the deadline: the items for each child (or this sink's output rows), or
        the error message of a drop or failure."""
        self.counters.add(self.m_requests, 1)
        arrived = time.time_ns()
        await self._acquire(deadline)
        try:
            started = time.time_ns()
            self.counters.add(self.m_wait, max(0, (started - arrived) // 1000))
            decision: DropDecision = drop_decision(started, deadline, reserve_ms, routing.fastest_ms,
                                                   routing.downstream_ms, self.task)
            if decision.drop:
                self.counters.add(self.m_drops, 1)
                return decision.reason
            chunks = self._plan_chunks(routing, len(rows), deadline, reserve_ms)
            if isinstance(chunks, str):
                self.counters.add(self.m_drops, 1)
                return chunks
            results = await asyncio.gather(*(self._dispatch(route, rows[a:b], ms) for route, a, b, ms in chunks))
        finally:
            self._release()
        for result in results:
            if isinstance(result, str):
                self.counters.add(self.m_drops, 1)
                return result
        if time.time_ns() > deadline:
            self.counters.add(self.m_misses, 1)
        if not self.fanouts:
            return np.concatenate(results) if results else np.zeros((0, self.width), dtype=np.float32)
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

        def queued_ms(r: Route) -> float:  # at the planned throughput
            return backlog_ms(r.latency_ms, ahead[r.model], r.throughput_rps)

        def estimate(r: Route) -> float:  # at the pace the runner has kept lately
            return queued_ms(r) * slower[r.model]

        chunks, start = [], 0
        while start < n:
            picked = routing.router.pick()
            rows = min(n - start, picked.batch)
            route = choose_route(picked, routing.routes, rows, left_ms - reserve_ms, routing.downstream_ms, estimate)
            if route is None:
                return (f"jigsaw: request dropped at stage {self.task}: {left_ms:.1f} ms left before its deadline, "
                        f"its runners would answer in {min(map(estimate, routing.routes)):.1f} ms at the soonest "
                        f"(their backlog), the rest of the path needs {routing.downstream_ms:.1f} ms and "
                        f"{reserve_ms:.1f} ms are held in reserve")
            end = min(n, start + route.batch)
            chunks.append((route, start, end, queued_ms(route)))
            ahead[route.model] += end - start
            start = end
        for route, a, b, _ in chunks:
            self.count_items(route.variant, b - a)
        return chunks

    async def _dispatch(self, route: Route, rows: np.ndarray, estimated_ms: float) -> np.ndarray | str:
        request = pb_utils.InferenceRequest(model_name=route.model, requested_output_names=["OUTPUT"],
                                            inputs=[pb_utils.Tensor("INPUT", rows)])
        self.backlog.add(route.model, len(rows))
        sent = time.monotonic()
        try:
            response = await request.async_exec()
        finally:
            self.backlog.add(route.model, -len(rows))
        self.backlog.answered(route.model, estimated_ms, (time.monotonic() - sent) * 1000)
        if response.has_error():
            return f"jigsaw: stage {self.task}: variant {route.variant} ({route.model}) failed: {response.error().message()}"
        return pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy()

    def _fan_out(self, fan: FanOut, chunks: list[tuple[Route, int, int, float]],
                 results: list[np.ndarray]) -> np.ndarray:
        pieces = []
        for (route, _, _, _), out in zip(chunks, results):
            k = fan.count(route.variant, len(out))
            if k:
                pieces.append(out[np.arange(k) % len(out)])
        return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros((0, self.width), dtype=np.float32)


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
        self.tasks = [_Task(self.app, t, self.width, self.counters, self.backlog)
                      for t in cfg["tasks"]]  # topological order
        self.sinks = [t.task for t in self.tasks if not t.fanouts]
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
        concurrently, each task admitting them in earliest-deadline-first order."""
        self.refresh()
        return list(await asyncio.gather(*(self._serve(r) for r in requests)))

    def _rows(self, request: Any) -> np.ndarray | str:
        tensor = pb_utils.get_input_tensor_by_name(request, "INPUT")
        if tensor is None:
            return "jigsaw: missing input tensor INPUT"
        rows = tensor.as_numpy()
        if rows.dtype != np.float32 or rows.ndim != 3 or rows.shape[0] != 1 or rows.shape[2] != self.width:
            return (f"jigsaw: input INPUT must be FP32 of shape [1, items, {self.width}] (one request), "
                    f"got {rows.dtype} {list(rows.shape)}")
        return rows[0]

    async def _serve(self, request: Any) -> Any:
        stamp = _stamp(request, self.slo_ns)
        rows = self._rows(request)
        if isinstance(stamp, str) or isinstance(rows, str):
            return _error(stamp if isinstance(stamp, str) else rows)
        deadline, budget = stamp
        reserve_ms = budget * self.reserve / 1e6
        routing = self.routing
        done: dict[str, asyncio.Future] = {}

        async def run(task: _Task) -> Any:
            if not task.parents:
                items = rows
            else:
                got = [await done[p] for p in task.parents]
                failed = next((g for g in got if isinstance(g, str)), None)
                if failed is not None:
                    return failed
                items = np.concatenate([g[task.task] for g in got]) if len(got) > 1 else got[0][task.task]
            return await task.serve(items, deadline, reserve_ms, routing[task.task])

        for task in self.tasks:
            done[task.task] = asyncio.ensure_future(run(task))
        results = {t: await f for t, f in done.items()}
        failed = next((r for r in results.values() if isinstance(r, str)), None)
        if failed is not None:
            return _error(failed)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(f"{sink}_OUTPUT", results[sink].astype(np.float32)[None]) for sink in self.sinks])


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
        self.run = build(cfg["runtime"], int(cfg["width"]), int(cfg.get("max_batch", 1)), cfg.get("sizes"))
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


class TritonPythonModel:
    """Dispatches to the role named in the model config's ``jigsaw`` parameter."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        cfg = json.loads(config["parameters"]["jigsaw"]["string_value"])
        role = cfg["role"]
        if role == "graph":
            self.impl: Any = _Graph(cfg, args["model_instance_name"], args["model_repository"])
        elif role == "runner":
            self.impl = _Runner(cfg, args["model_name"], args["model_instance_name"])
            self.names = (args["model_name"], args["model_instance_name"])
        else:
            raise ValueError(f"jigsaw: unknown role {role!r} in model {args['model_name']}")
        self.is_async = role == "graph"
        # what is built now lives as long as the process: frozen, the collector never walks it again
        # (for a runner, torch, its libraries and the model are 0.34-0.43 million objects, and a full
        # collection over them stopped the process for 0.13-0.19 s, bench/gc_pause.py)
        gc.freeze()

    async def execute(self, requests: list) -> list:
        if self.is_async:
            return await self.impl.execute(requests)
        return self.impl.execute(requests)

    def finalize(self) -> None:
        """Send the counter increments still held back and give the backlog row back, or stop a runner's
        background captures (the model is being unloaded)."""
        if self.is_async:
            self.impl.counters.flush()
            self.impl.backlog.close()
        else:
            self.impl.close(*self.names)
            self.impl.flush()
