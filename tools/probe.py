"""Time variant runners through a real tritonserver: the batch latency a served variant really has.

A profile measured inside one process misses what serving adds to every batch: the request's trip
through Triton (gRPC or BLS), the Python backend's IPC to the stub, the input and output copies. A
probe serves a configuration as a jigsaw runner model (the serving code, bindings and CUDA graphs)
without a dynamic batcher, and times requests of exactly ``batch`` rows sent by ``concurrency``
closed-loop clients (one per instance, so each instance always has one batch to run):

- latency: p95 of the round trips (ms), over all clients;
- throughput: the sum over clients of ``batch / mean round trip``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf import text_format

from jigsawserve.orchestrator.serving.render import runner_config


@dataclass(frozen=True)
class Timing:
    p95_ms: float
    mean_ms: float
    throughput_rps: float
    n: int


class Probe:
    """Loads runner models into a running tritonserver (explicit model control) and times them."""

    def __init__(self, grpc_url: str, repo: Path, width: int, headers: dict[str, str] | None = None) -> None:
        self.url, self.repo, self.width, self.headers = grpc_url, Path(repo), width, headers
        self.client = grpcclient.InferenceServerClient(grpc_url)

    def load(self, name: str, runtime: dict[str, Any], batches: list[int], processes: list[dict[str, str]],
             kind: str = "KIND_MODEL") -> float:
        """Serve ``runtime`` as model ``name`` with one instance per entry of ``processes`` (each one's
        environment: its GPU binding), capturing the ``batches``; the load's seconds. Raises
        ``tritonclient.utils.InferenceServerException`` when the model does not load."""
        cfg = runner_config(name, self.width, max(batches), runtime,
                            [{"name": "seg0", "count": len(processes), "kind": kind}],
                            {"seg0": [dict(p) for p in processes]}, queue_delay_us=None, sizes=batches)
        (self.repo / name / "1").mkdir(parents=True, exist_ok=True)
        (self.repo / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
        t0 = time.perf_counter()
        self.client.load_model(name, headers=self.headers)
        return time.perf_counter() - t0

    def unload(self, name: str) -> None:
        self.client.unload_model(name, headers=self.headers)

    def measure(self, name: str, batch: int, concurrency: int, warmup: int = 3, min_reps: int = 20,
                seconds: float = 0.25) -> Timing:
        """Time ``name`` at ``batch`` rows per request from ``concurrency`` clients at once. Raises
        ``tritonclient.utils.InferenceServerException`` when a request fails."""
        rows = np.random.default_rng(batch).standard_normal((batch, self.width)).astype(np.float32)
        times: list[list[float]] = [[] for _ in range(concurrency)]
        errors: list[BaseException] = []
        start = threading.Barrier(concurrency)

        def client_loop(i: int) -> None:
            client = grpcclient.InferenceServerClient(self.url)
            try:
                tensor = grpcclient.InferInput("INPUT", list(rows.shape), "FP32")
                tensor.set_data_from_numpy(rows)
                for _ in range(warmup):
                    client.infer(name, [tensor])
                start.wait()
                end = time.perf_counter() + seconds
                while len(times[i]) < min_reps or time.perf_counter() < end:
                    t0 = time.perf_counter()
                    client.infer(name, [tensor])
                    times[i].append((time.perf_counter() - t0) * 1000)
            except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
                errors.append(exc)
                start.abort()
            finally:
                client.close()

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:  # the first real failure, not the barrier it broke for the other clients
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        every = np.concatenate([np.asarray(t) for t in times])
        return Timing(float(np.percentile(every, 95)), float(every.mean()),
                      float(sum(batch / np.mean(t) * 1000 for t in times)), int(len(every)))

    def close(self) -> None:
        self.client.close()
