"""The GPUs and MIG devices this machine has, from NVML or from a simulated inventory file.

The orchestrator never creates or changes MIG instances: it reads what exists and binds plan
segments to it (``jigsawserve.orchestrator.serving.binding``). A machine without NVML (no driver, no GPU) gives an
empty, CPU-only inventory rather than an error. As CUDA does, NVML's GPUs are narrowed to those
``CUDA_VISIBLE_DEVICES`` names, when set (``visible``): one run per GPU of a machine, each in an
environment naming its GPU, binds only to it.

Simulated inventory file (JSON); every field is required unless marked optional, and other keys
(e.g. "_comment") are ignored::

    {"gpus": [                              # list position == index == the plan's GPU index
      {"index": 0,                          # int, equal to its position in the list
       "uuid": "GPU-...",                   # non-empty string, unique
       "name": "NVIDIA A100 80GB PCIe",     # string
       "sms": 108,                          # int >= 0 (0: unknown)
       "memory_mb": 81920,                  # int >= 0
       "mig_enabled": true,                 # bool (MIG mode currently enabled)
       "mig_devices": [                     # optional, default []; must be empty without MIG
         {"uuid": "MIG-...",                # non-empty string, unique
          "size": 3,                        # int >= 1: GPU-instance compute slices
          "profile": "3g.40gb",             # string
          "memory_mb": 40192,               # int >= 0
          "sms": 42}]}]}                    # int >= 0

See ``examples/inventory/`` for complete files.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class MigDevice:
    """A MIG device (GPU instance + compute instance) of GPU ``gpu_index`` (NVML's index): ``size``
    compute slices."""
    uuid: str
    gpu_index: int
    size: int
    profile: str
    memory_mb: int
    sms: int


@dataclass(frozen=True)
class GpuDevice:
    """A physical GPU; ``index`` is NVML's (a plan's GPU g is the inventory's g-th GPU, whatever its
    index), ``sms`` is 0 when unknown, ``mig_devices`` is empty unless MIG is enabled."""

    index: int
    uuid: str
    name: str
    sms: int
    memory_mb: int
    mig_enabled: bool
    mig_devices: tuple[MigDevice, ...]


@dataclass(frozen=True)
class Inventory:
    """The GPUs found and where the information came from (``source``)."""

    gpus: tuple[GpuDevice, ...]
    source: str

    @property
    def is_cpu_only(self) -> bool:
        """True when there are no GPUs."""
        return not self.gpus


_PROFILE = re.compile(r"\d+g\.\d+gb")
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


def visible(gpus: tuple[GpuDevice, ...], value: str | None) -> tuple[GpuDevice, ...]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` value names, in its order: each entry an NVML index (CUDA's
    ordinal too under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; a UUID is unambiguous either way) or a GPU's UUID
    (or a prefix of it, as CUDA takes them); all GPUs when unset, none when empty. As in CUDA, a negative
    number ends the list ("-1": no GPU). InputError for an entry that names no GPU, or more than one, or
    a MIG device (the inventory holds whole GPUs: a run's MIG devices are those of its GPUs)."""
    if value is None:
        return gpus
    known = ", ".join(f"{g.index}: {g.uuid}" for g in gpus) or "none"
    out: list[GpuDevice] = []
    for entry in (e.strip() for e in value.split(",") if e.strip()):
        if entry.startswith("-") and entry[1:].isdigit():
            break
        if entry.startswith("MIG-"):
            raise InputError(f"{VISIBLE_ENV}: {entry!r} is a MIG device; name whole GPUs (an index or a GPU UUID)")
        found = [g for g in gpus if (str(g.index) == entry if entry.isdigit() else g.uuid.startswith(entry))]
        if len(found) != 1:
            what = "names no GPU" if not found else "names several GPUs"
            raise InputError(f"{VISIBLE_ENV}: {entry!r} {what} of this machine (GPUs {known})")
        if found[0] in out:
            raise InputError(f"{VISIBLE_ENV}: GPU {found[0].index} named twice in {value!r}")
        out.append(found[0])
    return tuple(out)


def from_nvml() -> Inventory:
    """Read GPUs and MIG devices through NVML (``pynvml``, package nvidia-ml-py), narrowed to those
    ``CUDA_VISIBLE_DEVICES`` names when it is set (``visible``).

    Never raises because NVML is missing or cannot be initialised: that gives an empty,
    CPU-only inventory whose ``source`` is "nvml unavailable: <reason>". InputError for a
    ``CUDA_VISIBLE_DEVICES`` that names what this machine does not have (``visible``).
    """
    try:
        import pynvml
    except ImportError as exc:
        return Inventory((), f"nvml unavailable: {exc}")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Inventory((), f"nvml unavailable: {exc}")
    try:
        gpus = tuple(_nvml_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
        value = os.environ.get(VISIBLE_ENV)
        if value is None:
            return Inventory(gpus, "nvml")
        return Inventory(visible(gpus, value), f"nvml, {VISIBLE_ENV}={value}")
    finally:
        pynvml.nvmlShutdown()


def _nvml_gpu(nvml: Any, index: int) -> GpuDevice:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    try:
        sms = nvml.nvmlDeviceGetAttributes(handle).multiprocessorCount
    except nvml.NVMLError:   # MIG handles only: NotSupported for a whole H200 (measured)
        sms = 0
    try:
        mig_enabled = nvml.nvmlDeviceGetMigMode(handle)[0] == nvml.NVML_DEVICE_MIG_ENABLE
    except nvml.NVMLError_NotSupported:
        mig_enabled = False
    migs = []
    if mig_enabled:
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError_NotFound:
                continue
            attrs = nvml.nvmlDeviceGetAttributes(mig)
            profile = _PROFILE.search(nvml.nvmlDeviceGetName(mig))
            migs.append(MigDevice(
                uuid=nvml.nvmlDeviceGetUUID(mig), gpu_index=index, size=attrs.gpuInstanceSliceCount,
                profile=profile.group() if profile else
                f"{attrs.gpuInstanceSliceCount}g.{round(attrs.memorySizeMB / 1024)}gb",
                memory_mb=attrs.memorySizeMB, sms=attrs.multiprocessorCount))
    return GpuDevice(index=index, uuid=nvml.nvmlDeviceGetUUID(handle),
                     name=nvml.nvmlDeviceGetName(handle), sms=sms,
                     memory_mb=nvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20,
                     mig_enabled=mig_enabled, mig_devices=tuple(migs))


def _field(doc: dict, key: str, kind: type, where: str) -> Any:
    """``doc[key]`` checked to be of ``kind`` (bool is not an int here); InputError names the field."""
    if key not in doc:
        raise InputError(f"{where}.{key}: missing")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    if kind is int and value < 0:
        raise InputError(f"{where}.{key}: must be >= 0, got {value}")
    return value


def _uuid(doc: dict, where: str, seen: set[str]) -> str:
    """``doc["uuid"]``: a non-empty string not in ``seen`` (then added to it)."""
    uuid = _field(doc, "uuid", str, where)
    if not uuid:
        raise InputError(f"{where}.uuid: must not be empty")
    if uuid in seen:
        raise InputError(f"{where}.uuid: duplicate uuid {uuid!r}")
    seen.add(uuid)
    return uuid


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected an object, got {value!r}")
    return value


def parse(doc: Any, source: str) -> Inventory:
    """An inventory from its parsed JSON (schema in the module docstring): a file's, or one node's of a
    cluster inventory (``cluster.load_cluster``); InputError names the field."""
    gpu_docs = _field(_object(doc, "inventory"), "gpus", list, "inventory")
    gpus: list[GpuDevice] = []
    uuids: set[str] = set()
    for i, raw in enumerate(gpu_docs):
        where = f"gpus[{i}]"
        g = _object(raw, where)
        if _field(g, "index", int, where) != i:
            raise InputError(f"{where}.index: expected {i} (its position in the list), got {g['index']}")
        uuid = _uuid(g, where, uuids)
        mig_enabled = _field(g, "mig_enabled", bool, where)
        mig_docs = _field(g, "mig_devices", list, where) if "mig_devices" in g else []
        if mig_docs and not mig_enabled:
            raise InputError(f"{where}.mig_devices: MIG devices listed but mig_enabled is false")
        migs = []
        for j, mraw in enumerate(mig_docs):
            mwhere = f"{where}.mig_devices[{j}]"
            m = _object(mraw, mwhere)
            size = _field(m, "size", int, mwhere)
            if size < 1:
                raise InputError(f"{mwhere}.size: must be >= 1, got {size}")
            migs.append(MigDevice(uuid=_uuid(m, mwhere, uuids), gpu_index=i, size=size,
                                  profile=_field(m, "profile", str, mwhere),
                                  memory_mb=_field(m, "memory_mb", int, mwhere),
                                  sms=_field(m, "sms", int, mwhere)))
        gpus.append(GpuDevice(index=i, uuid=uuid, name=_field(g, "name", str, where),
                              sms=_field(g, "sms", int, where),
                              memory_mb=_field(g, "memory_mb", int, where),
                              mig_enabled=mig_enabled, mig_devices=tuple(migs)))
    return Inventory(tuple(gpus), source)


def from_file(path: str | Path) -> Inventory:
    """A simulated inventory from a JSON file (schema in the module docstring)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read inventory ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    try:
        return parse(doc, f"file {path}")
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def detect(path: str | Path | None = None) -> Inventory:
    """The inventory in ``path`` if given, else this machine's (NVML)."""
    return from_file(path) if path else from_nvml()
