"""The host's CPU and each GPU's utilization, sampled during a run into ``RUN/host.csv``.

A run's record shows where requests were lost; this shows what the machine was doing then, so that
an apply's runner loads starving the serving processes of CPU can be told from their competing for
the GPU, or from plain lack of capacity. CPU: the busy share of all cores, from ``/proc/stat``
(Linux; the column is empty elsewhere). GPU: NVML's utilization (the share of the sample period in
which a kernel ran) and memory used, per device; no GPU columns without NVML.
"""
from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

FILE = "host.csv"


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, or None where /proc/stat cannot be read."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])                                  # guest time is already in user and nice
    return total - idle, total


def _nvml_handles(indices: Sequence[int] | None) -> tuple[Any, list[tuple[int, Any]]]:
    """pynvml and (index, handle) per GPU of ``indices`` (NVML's; None: all), or (None, []) without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
        chosen = range(pynvml.nvmlDeviceGetCount()) if indices is None else indices
        return pynvml, [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in chosen]
    except Exception:  # noqa: BLE001 (ImportError, NVMLError: no NVML here)
        return None, []


class HostSampler:
    """Samples every ``period_s`` in a thread while entered; times in seconds from ``origin``
    (``time.time()``), each row covering the period before it; the GPUs of NVML's ``gpus`` indices
    (None: all; a run shares its machine with another on the other GPUs), columns named by index."""

    def __init__(self, path: Path, origin: float, period_s: float = 1.0, gpus: Sequence[int] | None = None) -> None:
        self.path, self.origin, self.period_s, self.gpus = Path(path), origin, period_s, gpus
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-sampler", daemon=True)
        self.rows = 0

    def __enter__(self) -> HostSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        nvml, gpus = _nvml_handles(self.gpus)
        try:
            with self.path.open("w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["t_s", "cpu_busy_pct"]
                             + [c for i, _ in gpus for c in (f"gpu{i}_util_pct", f"gpu{i}_mem_mib")])
                last = cpu_times()
                while not self._stop.wait(self.period_s):
                    now = cpu_times()
                    cpu = ""
                    if now and last and now[1] > last[1]:
                        cpu = f"{100.0 * (now[0] - last[0]) / (now[1] - last[1]):.1f}"
                    last = now
                    row = [f"{time.time() - self.origin:.2f}", cpu]
                    for _, h in gpus:
                        try:
                            row += [nvml.nvmlDeviceGetUtilizationRates(h).gpu,
                                    nvml.nvmlDeviceGetMemoryInfo(h).used // 2**20]
                        except nvml.NVMLError:  # a missed reading: empty cells, not a lost file
                            row += ["", ""]
                    out.writerow(row)
                    f.flush()
                    self.rows += 1
        finally:
            if nvml is not None:
                nvml.nvmlShutdown()
