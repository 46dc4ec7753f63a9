"""Bind a plan's placed segments to the devices of an inventory, as per-process CUDA environments.

GPU ``g`` of the placement is ``inventory.gpus[g]``. Per segment, one ``ProcessBinding`` per MPS
process, whose ``env`` a Triton model instance sets in ``os.environ`` before anything touches CUDA:

- CPU-only inventory: kind "cpu", empty env.
- MIG-enabled GPU: kind "mig", a distinct existing MIG device of the segment's size
  (``CUDA_VISIBLE_DEVICES=MIG-<uuid>``; with mps > 1 also ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` =
  floor(100 / mps)). MIG instances are never created or changed here.
- GPU without MIG, whole-GPU segment with one process: kind "gpu", ``CUDA_VISIBLE_DEVICES`` only.
- GPU without MIG otherwise: kind "mps", MIG emulated by MPS caps: ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``
  = max(1, floor(100 * shape.sms / gpu.sms / mps)) and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` =
  "0=<floor(memory / mps)>M", memory being the shape's (at most the GPU's). The SM count is the
  inventory's, or the catalogue's whole-GPU count when NVML did not report one. Caps, not
  reservations: processes of a GPU are isolated only as far as MPS enforces them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InputError
from ..spec.gpus import GpuType
from .inventory import GpuDevice, Inventory, MigDevice
from ..planning.plan import SegmentKey, parse_label

SM_PERCENT = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
MEM_LIMIT = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
VISIBLE = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class ProcessBinding:
    """Where one process of a segment runs and the environment that puts it there; ``gpu_index`` is
    the plan's GPU (the inventory's position), descriptions name NVML's index."""

    kind: Literal["mig", "mps", "cpu", "gpu"]
    gpu_index: int | None
    env: dict[str, str]
    description: str


@dataclass(frozen=True)
class SegmentBinding:
    """A placed segment's processes: ``len(processes) == key.mps``."""

    label: str
    key: SegmentKey
    processes: tuple[ProcessBinding, ...]


@dataclass(frozen=True)
class _Placed:
    gpu: int
    label: str
    size: int
    key: SegmentKey


def _segments(placement: Mapping[str, Any], gpu: GpuType) -> list[_Placed]:
    """The placement's segments in GPU, then listed, order; InputError for a malformed placement."""
    if placement.get("gpu_type", gpu.name) != gpu.name:
        raise InputError(f"placement.gpu_type: {placement['gpu_type']!r}, but binding for {gpu.name!r}")
    gpus = placement.get("gpus")
    if not isinstance(gpus, list) or not all(isinstance(segs, list) for segs in gpus):
        raise InputError("placement.gpus: expected a list of segment lists per GPU")
    out: list[_Placed] = []
    seen: set[str] = set()
    for g, segs in enumerate(gpus):
        for j, seg in enumerate(segs):
            where = f"placement.gpus[{g}][{j}]"
            if not isinstance(seg, Mapping) or not isinstance(seg.get("label"), str) \
                    or not isinstance(seg.get("size"), int):
                raise InputError(f"{where}: needs a string 'label' and an int 'size', got {seg!r}")
            label, size = seg["label"], seg["size"]
            key = parse_label(label)
            gpu.shape(size)
            if key.mig != size:
                raise InputError(f"{where}: label {label!r} is a {key.mig}-slice segment but size is {size}")
            if label in seen:
                raise InputError(f"{where}: duplicate segment label {label!r}")
            seen.add(label)
            out.append(_Placed(g, label, size, key))
    return out


def _mig(seg: _Placed, mig: MigDevice) -> tuple[ProcessBinding, ...]:
    env = {VISIBLE: mig.uuid}
    where = f"MIG {mig.profile} {mig.uuid} on GPU {mig.gpu_index}"
    if seg.key.mps == 1:
        return (ProcessBinding("mig", seg.gpu, env, where),)
    pct = 100 // seg.key.mps
    return tuple(ProcessBinding("mig", seg.gpu, {**env, SM_PERCENT: str(pct)},
                                f"{where}, MPS process {p + 1}/{seg.key.mps} capped at {pct}% SMs")
                 for p in range(seg.key.mps))


def _emulated(seg: _Placed, device: GpuDevice, gpu: GpuType) -> tuple[ProcessBinding, ...]:
    shape, mps = gpu.shapes[seg.size], seg.key.mps
    env = {VISIBLE: device.uuid}
    if seg.size == gpu.slices and mps == 1:
        return (ProcessBinding("gpu", seg.gpu, env, f"whole GPU {device.index} ({device.name})"),)
    total_sms = device.sms or gpu.whole.sms
    if not total_sms:
        raise InputError(f"segment {seg.label!r}: GPU {seg.gpu} has no known SM count to emulate "
                         f"{shape.name} with MPS")
    env |= emulation_env(gpu, seg.size, mps, total_sms, device.memory_mb)
    pct, mem = env[SM_PERCENT], env[MEM_LIMIT].split("=", 1)[1]
    what = (f"MPS share of whole GPU {device.index}" if seg.size == gpu.slices else
            f"emulated MIG {shape.name} via MPS SM cap on GPU {device.index}")
    return tuple(ProcessBinding("mps", seg.gpu, dict(env),
                                f"{what}: process {p + 1}/{mps}, {pct}% of {total_sms} SMs, {mem}")
                 for p in range(mps))


def emulation_env(gpu: GpuType, size: int, mps: int, total_sms: int, device_memory_mb: float | None = None
                  ) -> dict[str, str]:
    """MPS caps that emulate one of ``mps`` processes of a ``size``-slice MIG segment on a whole GPU of
    ``total_sms`` SMs: its share of the shape's SMs and of its memory (at most the device's)."""
    shape = gpu.shapes[size]
    pct = max(1, min(100, 100 * shape.sms // (total_sms * mps)))
    memory_mb = shape.memory_gb * 1024
    if device_memory_mb:
        memory_mb = min(memory_mb, device_memory_mb)
    return {SM_PERCENT: str(pct), MEM_LIMIT: f"0={int(memory_mb // mps)}M"}


def bind(placement: Mapping[str, Any], gpu: GpuType, inventory: Inventory) -> dict[str, SegmentBinding]:
    """Bindings of every segment of ``placement`` (``Plan.placement``), keyed by label, in placement order.

    Raises InputError when the placement needs more GPUs than the inventory has, or a segment
    finds no free MIG device of its size on its (MIG-enabled) GPU. Deterministic: MIG devices are
    taken in inventory order.
    """
    segments = _segments(placement, gpu)
    if inventory.is_cpu_only:
        return {s.label: SegmentBinding(s.label, s.key, tuple(
                    ProcessBinding("cpu", None, {}, f"CPU ({inventory.source})") for _ in range(s.key.mps)))
                for s in segments}
    needed = len(placement["gpus"])
    if needed > len(inventory.gpus):
        raise InputError(f"placement needs {needed} GPUs but the inventory ({inventory.source}) "
                         f"has {len(inventory.gpus)}")
    free = {g: list(d.mig_devices) for g, d in enumerate(inventory.gpus)}  # by the plan's GPU, not NVML's index
    out: dict[str, SegmentBinding] = {}
    for seg in segments:
        device = inventory.gpus[seg.gpu]
        if device.mig_enabled:
            mig = next((m for m in free[seg.gpu] if m.size == seg.size), None)
            if mig is None:
                raise InputError(
                    f"segment {seg.label!r} needs a free MIG device of size {seg.size} on GPU {seg.gpu}, "
                    f"which has sizes {sorted(m.size for m in device.mig_devices)} "
                    f"(still free: {sorted(m.size for m in free[seg.gpu])})")
            free[seg.gpu].remove(mig)
            processes = _mig(seg, mig)
        else:
            processes = _emulated(seg, device, gpu)
        out[seg.label] = SegmentBinding(seg.label, seg.key, processes)
    return out


def uses_mps(bindings: Mapping[str, SegmentBinding]) -> bool:
    """Whether any process needs an MPS control daemon (it has an MPS SM cap)."""
    return any(SM_PERCENT in p.env for b in bindings.values() for p in b.processes)
