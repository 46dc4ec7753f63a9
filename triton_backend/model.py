"""The ``jigsaw`` Python-based Triton backend: one TritonPythonModel, three roles by config.

Installed as ``<backend-dir>/jigsaw/model.py``; a model selects it with ``backend: "jigsaw"`` and
its role and settings come from the JSON in the config parameter ``jigsaw``:

- ``stage``: one per task; earliest-deadline-first dispatch, early drop, weighted routing among the
  plan's variant runners (async BLS, chunked to each runner's max batch) and fan-out downstream. A
  source task's stage stamps each request's absolute deadline (arrival + latency SLO, or the tighter
  ``deadline_ms`` request parameter) and hands it on as the ``DEADLINE`` tensor that travels through
  the graph; the other stages read it.
- ``runner``: one per (task, variant, segment, batch); binds each instance to its partition before
  anything touches CUDA, then runs the variant on the batch Triton's dynamic batcher formed.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_backend.scheduling import DropDecision, FanOut, Route, WeightedRoundRobin, drop_decision
from triton_backend.variants import build

_FAMILIES: dict[str, Any] = {}


def _counter(name: str, description: str) -> Any:
    if name not in _FAMILIES:
        _FAMILIES[name] = pb_utils.MetricFamily(name=name, description=description,
                                                kind=pb_utils.MetricFamily.COUNTER)
    return _FAMILIES[name]


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _stamp(request: Any, slo_ns: int) -> int | str:
    """Absolute deadline (ns) of a request arriving now, or an error message for a bad parameter."""
    budget = slo_ns
    params = request.parameters()
    if params and params != "{}":
        value = json.loads(params).get("deadline_ms")
        if value is not None:
            try:
                budget = min(budget, int(float(value) * 1e6))
            except (TypeError, ValueError):
                return f"jigsaw: request parameter deadline_ms must be a number of milliseconds, got {value!r}"
    return time.time_ns() + budget


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


class _Stage:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.task = cfg["task"]
        self.inputs: list[str] = cfg["inputs"]
        self.outputs: dict[str, dict[str, Any]] = cfg["outputs"]
        self.width = int(cfg["width"])
        self.routes = [Route(**r) for r in cfg["routes"]]
        self.router = WeightedRoundRobin(self.routes)
        self.fanouts = {name: FanOut(o.get("factors", {}), float(o.get("factor", 1.0)))
                        for name, o in self.outputs.items()}
        self.fastest_ms = min(r.latency_ms for r in self.routes)
        self.downstream_ms = float(cfg["downstream_ms"])
        self.slots = int(cfg.get("max_inflight", 8))
        self.stamp_ns = int(float(cfg["stamp_slo_ms"]) * 1e6) if "stamp_slo_ms" in cfg else None
        self.emit_deadline = bool(cfg.get("emit_deadline", False))
        self.counters = _Counters()
        self._busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._seq = itertools.count()
        labels = {"app": cfg["app"], "task": self.task}
        self.m_requests = _counter("jigsaw_stage_requests_total", "requests seen by a jigsaw stage").Metric(labels=labels)
        self.m_drops = _counter("jigsaw_stage_drops_total", "requests dropped early by a jigsaw stage").Metric(labels=labels)
        self.m_misses = _counter("jigsaw_stage_deadline_misses_total",
                                 "requests that left a jigsaw stage after their deadline").Metric(labels=labels)
        self.m_wait = _counter("jigsaw_stage_queue_delay_us_total",
                               "time requests waited for a dispatch slot in a jigsaw stage (us)").Metric(labels=labels)
        items = _counter("jigsaw_stage_variant_items_total", "items a jigsaw stage routed to each variant")
        self.m_items = {r.variant: items.Metric(labels={**labels, "variant": r.variant}) for r in self.routes}

    async def execute(self, requests: list) -> list:
        """Triton's dynamic batcher hands over every request queued for this instance; they are
        served concurrently, admitted to dispatch slots in earliest-deadline-first order."""
        deadlines = [self._deadline(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: deadlines[i] if isinstance(deadlines[i], int) else 0)
        served = await asyncio.gather(*(self._serve(requests[i], deadlines[i]) for i in order))
        responses: list[Any] = [None] * len(requests)
        for i, response in zip(order, served):
            responses[i] = response
        return responses

    def _deadline(self, request: Any) -> int | str:
        if self.stamp_ns is not None:
            return _stamp(request, self.stamp_ns)
        return int(pb_utils.get_input_tensor_by_name(request, "DEADLINE").as_numpy().reshape(-1)[0])

    async def _acquire(self, deadline: int) -> None:
        """Earliest-deadline-first admission to ``max_inflight`` dispatch slots."""
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

    def _rows(self, request: Any) -> np.ndarray | str:
        parts = []
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return f"jigsaw: stage {self.task}: missing input tensor {name}"
            rows = tensor.as_numpy()
            if rows.dtype != np.float32 or rows.ndim != 3 or rows.shape[0] != 1 or rows.shape[2] != self.width:
                return (f"jigsaw: stage {self.task}: input {name} must be FP32 of shape [1, items, {self.width}], "
                        f"got {rows.dtype} {list(rows.shape)}")
            parts.append(rows[0])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    async def _serve(self, request: Any, deadline: int | str) -> Any:
        self.counters.add(self.m_requests, 1)
        if isinstance(deadline, str):
            return _error(deadline)
        rows = self._rows(request)
        if isinstance(rows, str):
            return _error(rows)
        arrived = time.time_ns()
        await self._acquire(deadline)
        try:
            started = time.time_ns()
            self.counters.add(self.m_wait, max(0, (started - arrived) // 1000))
            decision: DropDecision = drop_decision(started, deadline, self.fastest_ms, self.downstream_ms, self.task)
            if decision.drop:
                self.counters.add(self.m_drops, 1)
                return _error(decision.reason)
            chunks = self._plan_chunks(len(rows))
            results = await asyncio.gather(*(self._dispatch(route, rows[a:b], deadline)
                                             for route, a, b in chunks))
        finally:
            self._release()
        for result in results:
            if isinstance(result, str):
                self.counters.add(self.m_drops, 1)
                return _error(result)
        if time.time_ns() > deadline:
            self.counters.add(self.m_misses, 1)
        tensors = self._fan_out(chunks, results)
        if self.emit_deadline:
            tensors.append(pb_utils.Tensor("DEADLINE", np.array([[deadline]], dtype=np.int64)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _plan_chunks(self, n: int) -> list[tuple[Route, int, int]]:
        chunks, start = [], 0
        while start < n:
            route = self.router.pick()
            end = min(n, start + route.batch)
            chunks.append((route, start, end))
            self.counters.add(self.m_items[route.variant], end - start)
            start = end
        return chunks

    async def _dispatch(self, route: Route, rows: np.ndarray, deadline: int) -> np.ndarray | str:
        request = pb_utils.InferenceRequest(model_name=route.model, requested_output_names=["OUTPUT"],
                                            inputs=[pb_utils.Tensor("INPUT", rows)])
        response = await request.async_exec()
        if response.has_error():
            return f"jigsaw: stage {self.task}: variant {route.variant} ({route.model}) failed: {response.error().message()}"
        return pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy()

    def _fan_out(self, chunks: list[tuple[Route, int, int]], results: list[np.ndarray]) -> list:
        tensors = []
        for name, fan in self.fanouts.items():
            pieces = []
            for (route, _, _), out in zip(chunks, results):
                k = fan.count(route.variant, len(out)) if name != "OUTPUT" else len(out)
                if k:
                    pieces.append(out[np.arange(k) % len(out)])
            data = np.concatenate(pieces) if pieces else np.zeros((0, self.width), dtype=np.float32)
            tensors.append(pb_utils.Tensor(name, data.astype(np.float32)[None]))
        return tensors


class _Runner:
    def __init__(self, cfg: dict[str, Any], instance_name: str) -> None:
        group, _, index = instance_name.rpartition("_")
        bindings = cfg.get("bindings", {}).get(group)
        if bindings:
            os.environ.update(bindings[int(index) % len(bindings)])  # before anything touches CUDA
        self.run = build(cfg["runtime"], int(cfg["width"]), int(cfg.get("max_batch", 1)))

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        outputs = self.run(np.concatenate(inputs))
        responses, start = [], 0
        for rows in inputs:
            part = outputs[start:start + len(rows)]
            start += len(rows)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", part)]))
        return responses


class TritonPythonModel:
    """Dispatches to the role named in the model config's ``jigsaw`` parameter."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        cfg = json.loads(config["parameters"]["jigsaw"]["string_value"])
        role = cfg["role"]
        if role == "stage":
            self.impl: Any = _Stage(cfg)
        elif role == "runner":
            self.impl = _Runner(cfg, args["model_instance_name"])
        else:
            raise ValueError(f"jigsaw: unknown role {role!r} in model {args['model_name']}")
        self.is_async = role == "stage"

    async def execute(self, requests: list) -> list:
        if self.is_async:
            return await self.impl.execute(requests)
        return self.impl.execute(requests)
