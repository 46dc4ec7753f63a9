"""Open-loop load against a served app: each request is sent at its arrival time, whatever the others do.

Requests go to the model named after the app through ``tritonclient.grpc.aio`` (one channel,
asyncio), with one input ``INPUT`` FP32 [1, items, width] and every output of that model (names
from its metadata); to a typed app (docs/runtime.md), the real requests given as ``payloads`` (each
one request's tensors, e.g. a dataset's, ``jigsawserve.orchestrator.workload.typed_client.read_dataset``), request ``i`` sending
payload ``i`` modulo their number. Per request a ``Record``: ``id, scheduled_s, sent_s, latency_ms,
outcome, items, error`` (times in seconds from the run's origin; latency from sending to the answer;
``items`` sent, or for a typed app the items its sinks answered). Outcomes: ``ok``; ``late`` (answered
after min(SLO, deadline_ms)); ``dropped`` (the error says "jigsaw: request dropped", or Triton rejected
it from the graph model's queue after its timeout, "Request timeout expired"); ``error`` (anything else). ``sent_s - scheduled_s`` is how far the
generator fell behind its schedule. Each request carries its absolute deadline as the request
parameter ``deadline_ns`` (``send_deadline``): its send time on this host's clock plus the served
model's SLO, or ``deadline_ms`` when tighter. The graph model then counts a request's wait in
Triton's queue, which its stages cannot see otherwise. Only for a server on this host or on a clock
in step with it. (``slo_ms`` only sets when an answer counts as late here.)

The generator times answers on one event loop, so anything that stops that loop makes answers look
late: during a replay Python's collector only runs young collections, once a second (full ones
stopped the loop for up to 0.35 s as the records piled up), and ``run_load_apart`` runs it in a
process of its own (a planner in a thread of the same process held the GIL against it for up to
0.16 s). ``bench/client_lag.py`` measures both (``bench/README.md``).
"""
from __future__ import annotations

import asyncio
import csv
import gc
import json
import math
import multiprocessing
import pickle
import queue
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.typed import VARIANT_SUFFIX
from jigsawserve.triton_backend.tensors import TensorSpec

COLUMNS = ("id", "scheduled_s", "sent_s", "latency_ms", "outcome", "items", "error")
OUTCOMES = ("ok", "late", "dropped", "error")
DROP_MARKS = ("jigsaw: request dropped", "Request timeout expired")  # a stage's early drop; Triton's queue timeout
INPUT = "INPUT"
ERROR_CHARS = 160
YOUNG_GC_S = 1.0  # during a replay, collect the young generations this often (and never the old one)


@dataclass(frozen=True)
class Record:
    """One request's fate."""

    id: int
    scheduled_s: float
    sent_s: float
    latency_ms: float
    outcome: str
    items: int
    error: str = ""

    def row(self) -> list[str | int]:
        """The CSV row (``COLUMNS`` order)."""
        return [self.id, f"{self.scheduled_s:.6f}", f"{self.sent_s:.6f}", f"{self.latency_ms:.3f}",
                self.outcome, self.items, self.error]


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to know about a served app's model."""

    width: int | None                 # last dimension of INPUT; None when variable (or typed)
    outputs: tuple[str, ...]
    slo_ms: float | None              # the app's latency SLO, from its jigsaw steps' configs when found
    inputs: tuple[TensorSpec, ...] = ()  # a typed app's request tensors (per request); () for INPUT rows


@dataclass(frozen=True)
class Progress:
    """A snapshot during a run, for progress lines."""

    elapsed_s: float
    sent: int
    total: int
    counts: dict[str, int]
    in_flight: int
    lag_ms: float                     # how far behind schedule the last request was sent

    def line(self) -> str:
        done = " ".join(f"{k} {self.counts[k]}" for k in OUTCOMES)
        return (f"{self.elapsed_s:7.1f} s: sent {self.sent}/{self.total}, in flight {self.in_flight}, {done}, "
                f"lag {self.lag_ms:.1f} ms")


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(max(values), 3)}


def _rate(times: list[float]) -> float:
    """(n - 1) / (last - first): the rate of events between the first and the last."""
    return (len(times) - 1) / (max(times) - min(times)) if len(times) > 1 and max(times) > min(times) else 0.0


@dataclass
class LoadResult:
    """Every request's record (in id order) and the run's parameters."""

    model: str
    slo_ms: float
    deadline_ms: float | None
    records: list[Record] = field(default_factory=list)
    send_deadline: bool = False

    def summary(self) -> dict:
        """Counts per outcome, scheduled and achieved send rate, latency of the answered requests
        (ok and late) and the generator's lag behind its schedule (ms)."""
        answered = [r.latency_ms for r in self.records if r.outcome in ("ok", "late")]
        return {"model": self.model, "requests": len(self.records),
                **{k: sum(r.outcome == k for r in self.records) for k in OUTCOMES},
                "scheduled_rps": round(_rate([r.scheduled_s for r in self.records]), 3),
                "send_rps": round(_rate([r.sent_s for r in self.records]), 3),
                "slo_ms": self.slo_ms, "deadline_ms": self.deadline_ms, "send_deadline": self.send_deadline,
                "latency_ms": _pcts(answered),
                "lag_ms": _pcts([(r.sent_s - r.scheduled_s) * 1000 for r in self.records])}

    def write_csv(self, path: str | Path) -> None:
        """All records as CSV with ``COLUMNS``."""
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows(r.row() for r in self.records)


def summary_text(summary: dict) -> str:
    """A few human-readable lines of ``LoadResult.summary()``."""
    lat, lag = summary["latency_ms"], summary["lag_ms"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    counts = ", ".join(f"{summary[k]} {k}" for k in OUTCOMES)
    return (f"{summary['requests']} requests to {summary['model']}: {counts}\n"
            f"send rate {summary['send_rps']:.1f} req/s (scheduled {summary['scheduled_rps']:.1f}); latency of "
            f"answered p50 {fmt(lat['p50'])} ms, p99 {fmt(lat['p99'])} ms (SLO {summary['slo_ms']:g} ms"
            + (f", deadline {summary['deadline_ms']:g} ms" if summary["deadline_ms"] else "") + ")\n"
            f"lag behind schedule p50 {fmt(lag['p50'])} ms, p99 {fmt(lag['p99'])} ms, max {fmt(lag['max'])} ms")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."


async def _graph_settings(client: grpcaio.InferenceServerClient, model: str) -> dict | None:
    """The settings of the app's jigsaw graph model (its SLO, whether it is typed), if it is one."""
    try:
        config = (await client.get_model_config(model)).config
        settings = json.loads(config.parameters["jigsaw"].string_value)
        return settings if settings.get("role") == "graph" else None
    except (InferenceServerException, KeyError, ValueError, TypeError, AttributeError):
        return None


async def describe_async(client: grpcaio.InferenceServerClient, url: str, model: str) -> ModelInfo:
    """The app model's INPUT width (or a typed app's request tensors), output names and SLO; InputError
    naming the url or model otherwise."""
    try:
        await client.is_server_live(client_timeout=10)
    except InferenceServerException as exc:
        raise InputError(f"url {url!r}: no Triton gRPC server answers: {_short(exc)}") from None
    try:
        meta = await client.get_model_metadata(model, client_timeout=10)
    except InferenceServerException as exc:
        raise InputError(f"model {model!r} at {url}: {_short(exc)}") from None
    inputs = {i.name: i for i in meta.inputs}
    settings = await _graph_settings(client, model)
    slo_ms = float(settings["slo_ms"]) if settings else None
    outputs = tuple(o.name for o in meta.outputs)
    if settings and "typed" in settings:
        specs = tuple(TensorSpec(i.name, i.datatype, tuple(int(d) for d in i.shape[1:])) for i in meta.inputs)
        return ModelInfo(width=None, outputs=outputs, slo_ms=slo_ms, inputs=specs)
    if INPUT not in inputs or inputs[INPUT].datatype != "FP32":
        raise InputError(f"model {model!r}: expected an FP32 input {INPUT!r}, got "
                         f"{[(i.name, i.datatype) for i in meta.inputs]}")
    shape = list(inputs[INPUT].shape)
    return ModelInfo(width=shape[-1] if shape and shape[-1] > 0 else None, outputs=outputs, slo_ms=slo_ms)


def _typed_request(payload: dict[str, np.ndarray]) -> list[grpcaio.InferInput]:
    """One typed request's inputs, built once and shared by every request that sends this payload."""
    inputs = []
    for name, value in payload.items():
        value = np.asarray(value)
        inp = grpcaio.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        inp.set_data_from_numpy(value)
        inputs.append(inp)
    return inputs


def _check_payloads(model: str, info: ModelInfo, payloads: list[dict[str, np.ndarray]] | None) -> None:
    names = sorted(s.name for s in info.inputs)
    if info.inputs and not payloads:
        raise InputError(f"model {model!r} is a typed app (inputs {', '.join(names)}): give its requests' tensors "
                         "(jigsaw load --dataset DIR or --input FILE)")
    if payloads and not info.inputs:
        raise InputError(f"payloads: model {model!r} takes {INPUT} rows, not a typed app's tensors")
    for k, payload in enumerate(payloads or []):
        if sorted(payload) != names:
            raise InputError(f"payloads[{k}]: tensors {sorted(payload)}, model {model!r} takes {names}")


def describe(url: str, model: str) -> ModelInfo:
    """``describe_async`` from synchronous code."""
    async def go() -> ModelInfo:
        client = grpcaio.InferenceServerClient(url)
        try:
            return await describe_async(client, url, model)
        finally:
            await client.close()
    return asyncio.run(go())


def _check(arrivals: np.ndarray, items: int, width: int | None, slo_ms: float | None,
           deadline_ms: float | None) -> np.ndarray:
    times = np.asarray(arrivals, dtype=np.float64)
    if times.ndim != 1 or not np.isfinite(times).all() or (times < 0).any() or (np.diff(times) < 0).any():
        raise InputError("arrivals: expected a sorted 1-D array of finite times >= 0 s")
    if items < 1:
        raise InputError(f"items: expected at least 1 item per request, got {items}")
    if width is not None and width < 1:
        raise InputError(f"width: expected a positive tensor width, got {width}")
    for name, value in (("slo_ms", slo_ms), ("deadline_ms", deadline_ms)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{name}: expected a positive number of milliseconds, got {value!r}")
    return times


class _Run:
    """One open-loop run's sender: requests, counters and the streamed log."""

    def __init__(self, client: grpcaio.InferenceServerClient, model: str, info: ModelInfo, times: np.ndarray,
                 items: int, width: int | None, limit_ms: float, deadline_ms: float | None, send_deadline: bool,
                 origin: float, timeout_s: float, seed: int, out: TextIO | None,
                 payloads: list[dict[str, np.ndarray]] | None = None) -> None:
        self.client, self.model, self.info, self.times, self.items = client, model, info, times, items
        self.limit_ms, self.origin, self.timeout_s = limit_ms, origin, timeout_s
        if payloads:
            self.requests = [_typed_request(p) for p in payloads]
        else:
            data = np.random.default_rng(seed).random((1, items, width), dtype=np.float32)
            self.requests = [[grpcaio.InferInput(INPUT, list(data.shape), "FP32")]]
            self.requests[0][0].set_data_from_numpy(data)   # requests are built from it synchronously: shareable
        self.sinks = [name for name in info.outputs if name.endswith(VARIANT_SUFFIX)] if payloads else []
        self.outputs = [grpcaio.InferRequestedOutput(name) for name in info.outputs]
        self.params = {"deadline_ms": deadline_ms} if deadline_ms else {}
        budget_ms = min(info.slo_ms or limit_ms, deadline_ms or math.inf)  # what the server enforces
        self.budget_ns = int(budget_ms * 1e6) if send_deadline else None
        self.records: list[Record | None] = [None] * len(times)
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.sent, self.lag_ms = 0, 0.0
        self.out = out
        self.writer = csv.writer(out) if out else None
        if self.writer:
            self.writer.writerow(COLUMNS)

    async def one(self, i: int) -> None:
        """Send request ``i`` now and record its fate."""
        sent = time.monotonic()
        params = self.params if self.budget_ns is None else {**self.params, "deadline_ns": time.time_ns() + self.budget_ns}
        self.sent += 1
        self.lag_ms = (sent - self.origin - self.times[i]) * 1000
        error, items = "", self.items
        try:
            result = await self.client.infer(self.model, self.requests[i % len(self.requests)], outputs=self.outputs,
                                             parameters=params or None, client_timeout=self.timeout_s)
            latency_ms = (time.monotonic() - sent) * 1000
            missing = [name for name in self.info.outputs if result.as_numpy(name) is None]
            if missing:
                outcome, error = "error", f"missing outputs {missing}"
            else:
                outcome = "late" if latency_ms > self.limit_ms else "ok"
                if self.sinks:
                    items = sum(result.as_numpy(name).shape[-1] for name in self.sinks)
        except InferenceServerException as exc:
            latency_ms = (time.monotonic() - sent) * 1000
            error = _short(exc)
            outcome = "dropped" if any(m in error for m in DROP_MARKS) else "error"
        record = Record(i, float(self.times[i]), sent - self.origin, latency_ms, outcome, items, error)
        self.records[i] = record
        self.counts[outcome] += 1
        if self.writer:
            self.writer.writerow(record.row())
            self.out.flush()

    def progress(self) -> Progress:
        return Progress(time.monotonic() - self.origin, self.sent, len(self.times), dict(self.counts),
                        self.sent - sum(self.counts.values()), self.lag_ms)

    async def report(self, on_progress: Callable[[Progress], None], every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            on_progress(self.progress())

    async def schedule(self) -> None:
        """Create each request's task at its arrival time, then wait for all of them; meanwhile the
        collector runs young collections only."""
        pending: set[asyncio.Task] = set()
        collector = asyncio.create_task(_young_collections())
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for i, t in enumerate(self.times):
                # sleep(0) when already due: the request just created sends before the next is scheduled
                await asyncio.sleep(max(0.0, self.origin + t - time.monotonic()))
                task = asyncio.create_task(self.one(i))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            collector.cancel()
            if was_enabled:
                gc.enable()


async def _young_collections() -> None:
    while True:
        await asyncio.sleep(YOUNG_GC_S)
        gc.collect(1)


async def run_load_async(url: str, model: str, arrivals: np.ndarray, items: int, width: int | None,
                         slo_ms: float | None, deadline_ms: float | None = None,
                         on_progress: Callable[[Progress], None] | None = None, *,
                         start_at: float | None = None, stream_to: str | Path | None = None,
                         progress_s: float = 5.0, timeout_s: float = 60.0, seed: int = 0,
                         wait_start: Callable[[], float] | None = None, send_deadline: bool = True,
                         payloads: list[dict[str, np.ndarray]] | None = None) -> LoadResult:
    """Send one request of ``items`` items at each arrival time (s from the origin), open loop; to a
    typed app, one of ``payloads`` (request ``i`` payload ``i`` modulo their number).

    ``width`` / ``slo_ms`` None: read from the served model (its INPUT shape, the SLO its steps stamp).
    ``deadline_ms`` is sent as the request parameter of that name, and with ``send_deadline`` each
    request's absolute deadline as ``deadline_ns`` (module docstring). The origin is now, or the wall-clock
    time ``start_at`` (``time.time()`` seconds; arrivals already past are sent at once, as lag), or the
    one ``wait_start`` returns, called once connected and ready to send.
    ``on_progress`` is called every ``progress_s`` seconds and at the end; ``stream_to`` gets each
    record as a CSV row as it completes (completion order). A request not answered within
    ``timeout_s`` is an error.
    """
    times = _check(arrivals, items, width, slo_ms, deadline_ms)
    client = grpcaio.InferenceServerClient(url)
    try:
        info = await describe_async(client, url, model)
        _check_payloads(model, info, payloads)
        if info.inputs:
            width = None
        elif width is None and info.width is None:
            raise InputError(f"width: model {model!r} takes any INPUT width; give one")
        if width is not None and info.width is not None and width != info.width:
            raise InputError(f"width: model {model!r} takes INPUT [1, items, {info.width}], got width {width}")
        slo_ms = slo_ms or info.slo_ms
        if slo_ms is None:
            raise InputError(f"slo_ms: model {model!r} does not say its SLO (it is not a jigsaw graph model); give one")
        if wait_start is not None:
            start_at = await asyncio.get_running_loop().run_in_executor(None, wait_start)
        origin = time.monotonic() + (start_at - time.time() if start_at is not None else 0.0)
        with open(stream_to, "w", newline="") if stream_to else nullcontext() as out:  # noqa: ASYNC230
            run = _Run(client, model, info, times, items, width or info.width, min(slo_ms, deadline_ms or slo_ms),
                       deadline_ms, send_deadline, origin, timeout_s, seed, out, payloads)
            reporter = asyncio.create_task(run.report(on_progress, progress_s)) if on_progress else None
            try:
                await run.schedule()
            finally:
                if reporter:
                    reporter.cancel()
        if on_progress:
            on_progress(run.progress())
        return LoadResult(model, slo_ms, deadline_ms, [r for r in run.records if r is not None], send_deadline)
    finally:
        await client.close()


def run_load(url: str, model: str, arrivals: np.ndarray, items: int, width: int | None, slo_ms: float | None,
             deadline_ms: float | None = None, on_progress: Callable[[Progress], None] | None = None, *,
             start_at: float | None = None, stream_to: str | Path | None = None, progress_s: float = 5.0,
             timeout_s: float = 60.0, seed: int = 0, wait_start: Callable[[], float] | None = None,
             send_deadline: bool = True, payloads: list[dict[str, np.ndarray]] | None = None) -> LoadResult:
    """``run_load_async`` in a new event loop (for synchronous callers and threads)."""
    return asyncio.run(run_load_async(url, model, arrivals, items, width, slo_ms, deadline_ms, on_progress,
                                      start_at=start_at, stream_to=stream_to, progress_s=progress_s,
                                      timeout_s=timeout_s, seed=seed, wait_start=wait_start,
                                      send_deadline=send_deadline, payloads=payloads))


@dataclass(frozen=True)
class Ready:
    """The load generator's process is connected and waits for its origin."""


START_LEAD_S = 0.5  # s: from the generator's process reporting ready to the replay's origin


def _load_child(results: multiprocessing.Queue, starts: multiprocessing.Queue | None, args: tuple,
                kwargs: dict) -> None:
    def wait_start() -> float:
        results.put(Ready())
        return starts.get()

    try:
        results.put(run_load(*args, on_progress=results.put, wait_start=wait_start if starts else None, **kwargs))
    except BaseException as exc:  # noqa: BLE001 -- handed to the parent, which raises it
        failure = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
        try:
            pickle.dumps(failure)
        except Exception:  # noqa: BLE001 -- an exception that does not pickle goes as its text
            failure = RuntimeError(f"{type(exc).__name__}: {exc}")
        results.put(failure)


def run_load_apart(url: str, model: str, arrivals: np.ndarray, items: int, width: int | None,
                   slo_ms: float | None, deadline_ms: float | None = None,
                   on_progress: Callable[[Progress], None] | None = None, *, start_at: float | None = None,
                   stream_to: str | Path | None = None, progress_s: float = 5.0, timeout_s: float = 60.0,
                   seed: int = 0, on_start: Callable[[float], None] | None = None,
                   send_deadline: bool = True, payloads: list[dict[str, np.ndarray]] | None = None) -> LoadResult:
    """``run_load`` in a process of its own, so that nothing the caller's process does meanwhile delays
    the sends or the timing of the answers; ``on_progress`` is called here. The origin is ``start_at``
    (the process needs a few seconds to start: on a cold host more than three), or with ``on_start``,
    ``START_LEAD_S`` after the process reports it is connected: ``on_start`` gets that origin first.
    The process is stopped when this returns or raises."""
    ctx = multiprocessing.get_context("spawn")
    results, starts = ctx.Queue(), (ctx.Queue() if on_start else None)
    kwargs = {"start_at": start_at, "stream_to": str(stream_to) if stream_to else None, "progress_s": progress_s,
              "timeout_s": timeout_s, "seed": seed, "send_deadline": send_deadline, "payloads": payloads}
    child = ctx.Process(target=_load_child, name="jigsaw-load", daemon=True,
                        args=(results, starts, (url, model, np.asarray(arrivals), items, width, slo_ms, deadline_ms),
                              kwargs))
    child.start()
    try:
        while True:
            try:
                got = results.get(timeout=1.0)
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the load generator's process (pid {child.pid}) exited with code "
                                       f"{child.exitcode} before its result") from None
                continue
            if isinstance(got, Ready) and on_start and starts:
                origin = time.time() + START_LEAD_S
                on_start(origin)
                starts.put(origin)
            elif isinstance(got, Progress):
                if on_progress:
                    on_progress(got)
            elif isinstance(got, LoadResult):
                return got
            else:
                raise got
    finally:
        child.join(timeout=5.0)
        if child.is_alive():
            child.kill()
            child.join()
