"""Tests for jigsawserve.orchestrator.serving.inventory and jigsawserve.orchestrator.serving.binding: inventory files, NVML, segment binding."""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from jigsawserve.orchestrator.serving.binding import MEM_LIMIT, SM_PERCENT, VISIBLE, bind, uses_mps
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import GpuDevice, Inventory, detect, from_file, from_nvml, visible
from jigsawserve.orchestrator.planning.placement import place
from jigsawserve.orchestrator.planning.plan import Entry, segment_label

ROOT = Path(__file__).resolve().parents[1]
A100X2 = ROOT / "examples" / "inventory" / "a100x2-mig.json"
H200 = ROOT / "examples" / "inventory" / "h200-nomig.json"


def entry(task: str, mig: int, mps: int = 1, count: int = 1, variant: str = "v") -> Entry:
    return Entry(task=task, variant=variant, mig=mig, mps=mps, batch=4, count=count,
                 latency_ms=10.0, throughput_rps=100.0)


def placement(gpu: str, *entries: Entry) -> dict:
    """``Plan.placement`` for these entries, as the planner builds it."""
    segs = [(segment_label(e, i), e.mig) for e in entries for i in range(e.count)]
    return place(segs, gpu_type(gpu)).to_json()


def tagging_800() -> dict:
    """The placement of the 800 req/s tagging plan: GPU 0 3g+3g, GPU 1 3g+2g+1g+1g."""
    return placement("a100-80gb", entry("objects", 3, mps=2, count=2, variant="densenet121"),
                     entry("attributes", 3, mps=2, variant="inceptionv3"),
                     entry("scene", 2, variant="resnet50"), entry("scene", 1, variant="resnet152"),
                     entry("objects", 1, variant="densenet169"))


# ---- inventory ----------------------------------------------------------------------------------

def test_shipped_inventories_load() -> None:
    a100 = from_file(A100X2)
    assert not a100.is_cpu_only and a100.source == f"file {A100X2}"
    assert [[m.size for m in g.mig_devices] for g in a100.gpus] == [[3, 3], [2, 1, 1, 3]]
    assert all(g.mig_enabled and g.sms == 108 for g in a100.gpus)
    assert all(m.gpu_index == g.index for g in a100.gpus for m in g.mig_devices)
    h200 = detect(H200)
    assert h200.gpus == (GpuDevice(0, "GPU-h200h200-0000-4000-8000-000000000000", "NVIDIA H200",
                                   132, 143771, False, ()),)


def _mutate(doc: dict, path: tuple, value: object) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value, field", [
    (("gpus",), KeyError, "inventory.gpus: missing"),
    (("gpus",), {}, "inventory.gpus: expected list"),
    (("gpus", 0), "gpu", "gpus[0]: expected an object"),
    (("gpus", 1, "index"), 5, "gpus[1].index: expected 1"),
    (("gpus", 0, "sms"), "many", "gpus[0].sms: expected int"),
    (("gpus", 0, "sms"), True, "gpus[0].sms: expected int"),
    (("gpus", 0, "memory_mb"), -1, "gpus[0].memory_mb: must be >= 0"),
    (("gpus", 0, "mig_enabled"), "yes", "gpus[0].mig_enabled: expected bool"),
    (("gpus", 0, "mig_enabled"), False, "gpus[0].mig_devices: MIG devices listed"),
    (("gpus", 0, "uuid"), "", "gpus[0].uuid: must not be empty"),
    (("gpus", 1, "mig_devices", 0, "uuid"), "MIG-a100a100-0000-4000-8000-000000000001",
     "gpus[1].mig_devices[0].uuid: duplicate"),
    (("gpus", 1, "mig_devices", 2, "size"), 0, "gpus[1].mig_devices[2].size: must be >= 1"),
    (("gpus", 0, "mig_devices", 1, "memory_mb"), KeyError, "gpus[0].mig_devices[1].memory_mb: missing"),
    (("gpus", 0, "mig_devices", 1, "profile"), 3, "gpus[0].mig_devices[1].profile: expected str"),
])
def test_bad_inventory_names_the_field(tmp_path: Path, path: tuple, value: object, field: str) -> None:
    bad = tmp_path / "inv.json"
    bad.write_text(json.dumps(_mutate(json.loads(A100X2.read_text()), path, value)))
    with pytest.raises(InputError, match=r"inv\.json: " + field.replace("[", r"\[").replace("]", r"\]")):
        from_file(bad)


def test_unreadable_inventory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read inventory"):
        from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"gpus": [\n')
    with pytest.raises(InputError, match="line 2: invalid JSON"):
        from_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InputError, match="inventory: expected an object"):
        from_file(tmp_path / "list.json")


def test_from_nvml_here_does_not_raise() -> None:
    inv = from_nvml()
    if inv.source == "nvml":   # a machine with an NVIDIA driver
        assert all(g.uuid.startswith("GPU-") and g.memory_mb > 0 for g in inv.gpus)
    else:                      # no driver (the development machine): CPU-only, with the reason
        assert inv.gpus == () and inv.is_cpu_only
        assert inv.source.startswith("nvml unavailable: ")
    assert detect(None).source == inv.source


def test_from_nvml_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    inv = from_nvml()
    assert inv.is_cpu_only and inv.source.startswith("nvml unavailable: ")


class _NvmlError(Exception):
    pass


class _NotFound(_NvmlError):
    pass


class _NotSupported(_NvmlError):
    pass


def _fake_nvml(init_fails: bool = False) -> SimpleNamespace:
    """A pynvml double: GPU 0 is an A100 with MIG slots [3g, empty, 1g]; GPU 1 an L4 without MIG."""
    migs = {(0, 0): ("MIG-a", "NVIDIA A100 80GB PCIe MIG 3g.40gb", 3, 40192, 42),
            (0, 2): ("MIG-b", "NVIDIA A100 80GB PCIe MIG 1g.10gb", 1, 9728, 14)}
    gpus = {0: ("GPU-0", "NVIDIA A100 80GB PCIe", 81920 * 2**20, 1),
            1: ("GPU-1", "NVIDIA L4", 23034 * 2**20, None)}
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_fails:
            raise _NvmlError("Driver Not Loaded")

    def mig_handle(handle: tuple, slot: int) -> tuple:
        if (handle[1], slot) not in migs:
            raise _NotFound("Not Found")
        return ("mig", handle[1], slot)

    def attributes(handle: tuple) -> SimpleNamespace:
        if handle[0] == "gpu":
            raise _NotSupported("Not Supported")
        _, _, size, mem, sms = migs[handle[1:]]
        return SimpleNamespace(multiprocessorCount=sms, gpuInstanceSliceCount=size, memorySizeMB=mem)

    def mig_mode(handle: tuple) -> list[int]:
        mode = gpus[handle[1]][3]
        if mode is None:
            raise _NotSupported("Not Supported")
        return [mode, mode]

    def info(handle: tuple) -> tuple:
        return gpus[handle[1]] if handle[0] == "gpu" else migs[handle[1:]]

    return SimpleNamespace(
        calls=calls, NVMLError=_NvmlError, NVMLError_NotFound=_NotFound,
        NVMLError_NotSupported=_NotSupported, NVML_DEVICE_MIG_ENABLE=1,
        nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(gpus), nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
        nvmlDeviceGetAttributes=attributes, nvmlDeviceGetMigMode=mig_mode,
        nvmlDeviceGetMaxMigDeviceCount=lambda h: 7, nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
        nvmlDeviceGetUUID=lambda h: info(h)[0], nvmlDeviceGetName=lambda h: info(h)[1],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=gpus[h[1]][2]))


def test_from_nvml_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    inv = from_nvml()
    assert inv.source == "nvml" and fake.calls == ["init", "shutdown"]
    a100, l4 = inv.gpus
    assert (a100.uuid, a100.memory_mb, a100.mig_enabled, a100.sms) == ("GPU-0", 81920, True, 0)
    assert [(m.uuid, m.gpu_index, m.size, m.profile, m.memory_mb, m.sms) for m in a100.mig_devices] == [
        ("MIG-a", 0, 3, "3g.40gb", 40192, 42), ("MIG-b", 0, 1, "1g.10gb", 9728, 14)]
    assert (l4.name, l4.mig_enabled, l4.mig_devices, l4.memory_mb) == ("NVIDIA L4", False, (), 23034)


def test_from_nvml_narrowed_by_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    inv = from_nvml()
    assert [(g.index, g.uuid) for g in inv.gpus] == [(1, "GPU-1")]
    assert inv.source == "nvml, CUDA_VISIBLE_DEVICES=1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert from_nvml().is_cpu_only   # CUDA sees no GPU either


def test_visible_entries() -> None:
    gpus = from_file(A100X2).gpus
    g0, g1 = gpus
    assert visible(gpus, None) == gpus
    assert visible(gpus, "1,0") == (g1, g0)
    assert visible(gpus, f" {g1.uuid} ") == (g1,)
    assert visible(gpus, g1.uuid[:-3]) == (g1,)     # a UUID prefix, as CUDA takes it
    assert visible(gpus, "-1") == () and visible(gpus, "1,-1,0") == (g1,)   # as CUDA: a negative number ends the list
    for value, message in [("2", "'2' names no GPU of this machine (GPUs 0: GPU-"),
                           ("GPU-a100a100", "names several GPUs"),
                           ("0,0", "GPU 0 named twice"),
                           ("MIG-a100a100-0000-4000-8000-000000000001", "is a MIG device; name whole GPUs")]:
        with pytest.raises(InputError, match="CUDA_VISIBLE_DEVICES: .*" + re.escape(message)):
            visible(gpus, value)


def test_from_nvml_init_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(init_fails=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    inv = from_nvml()
    assert inv == Inventory((), "nvml unavailable: Driver Not Loaded")


# ---- binding ------------------------------------------------------------------------------------

def test_bind_cpu_only() -> None:
    plan = tagging_800()
    bindings = bind(plan, gpu_type("a100-80gb"), Inventory((), "nvml unavailable: no driver"))
    assert list(bindings) == [s["label"] for g in plan["gpus"] for s in g]
    for b in bindings.values():
        assert len(b.processes) == b.key.mps
        assert all(p.kind == "cpu" and p.gpu_index is None and p.env == {} for p in b.processes)
    assert not uses_mps(bindings)


def test_bind_real_mig() -> None:
    plan, inv = tagging_800(), from_file(A100X2)
    bindings = bind(plan, gpu_type("a100-80gb"), inv)
    migs = {m.uuid: m for g in inv.gpus for m in g.mig_devices}
    used = []
    for g, segs in enumerate(plan["gpus"]):
        for seg in segs:
            b = bindings[seg["label"]]
            assert len(b.processes) == b.key.mps
            uuids = {p.env[VISIBLE] for p in b.processes}
            assert len(uuids) == 1
            uuid = uuids.pop()
            used.append(uuid)
            assert migs[uuid].size == seg["size"] and migs[uuid].gpu_index == g
            for p in b.processes:
                assert p.kind == "mig" and p.gpu_index == g and MEM_LIMIT not in p.env
                assert p.env.get(SM_PERCENT) == (None if b.key.mps == 1 else str(100 // b.key.mps))
    assert len(used) == len(set(used)) == len(migs)
    assert uses_mps(bindings)
    assert bind(plan, gpu_type("a100-80gb"), inv) == bindings


def test_bind_mig_without_mps() -> None:
    plan = placement("a100-80gb", entry("a", 3, count=2))
    bindings = bind(plan, gpu_type("a100-80gb"), from_file(A100X2))
    assert [b.processes[0].env for b in bindings.values()] == [
        {VISIBLE: "MIG-a100a100-0000-4000-8000-000000000001"},
        {VISIBLE: "MIG-a100a100-0000-4000-8000-000000000002"}]
    assert not uses_mps(bindings)


def test_bind_missing_mig_size() -> None:
    plan = placement("a100-80gb", entry("b", 2))
    with pytest.raises(InputError) as err:
        bind(plan, gpu_type("a100-80gb"), from_file(A100X2))
    msg = str(err.value)
    assert repr(segment_label(entry("b", 2), 0)) in msg
    assert "size 2 on GPU 0" in msg and "sizes [3, 3]" in msg


def test_bind_runs_out_of_mig_devices() -> None:
    plan = {"gpu_type": "a100-80gb", "gpus": [[], [
        {"label": segment_label(entry("a", 1), i), "size": 1} for i in range(3)]]}
    with pytest.raises(InputError, match=r"'a/v/1g/mps1/b4#2' needs a free MIG device of size 1 on "
                                         r"GPU 1, which has sizes \[1, 1, 2, 3\] \(still free: \[2, 3\]\)"):
        bind(plan, gpu_type("a100-80gb"), from_file(A100X2))


def test_bind_on_a_narrowed_inventory() -> None:
    """A run given only NVML's GPU 1 binds the plan's GPU 0 to it: its MIG devices, its UUID."""
    a100 = from_file(A100X2)
    only1 = Inventory(visible(a100.gpus, "1"), "nvml, CUDA_VISIBLE_DEVICES=1")
    bindings = bind(placement("a100-80gb", entry("a", 2)), gpu_type("a100-80gb"), only1)
    (p,) = next(iter(bindings.values())).processes
    assert p.env[VISIBLE] == next(m.uuid for m in a100.gpus[1].mig_devices if m.size == 2)
    assert p.gpu_index == 0 and p.description.endswith("on GPU 1")
    h200 = from_file(H200).gpus[0]
    moved = Inventory((GpuDevice(1, "GPU-second", h200.name, h200.sms, h200.memory_mb, False, ()),), "nvml")
    (p, _) = next(iter(bind(placement("h200-141gb", entry("a", 1, mps=2)), gpu_type("h200-141gb"),
                            moved).values())).processes
    assert p.env[VISIBLE] == "GPU-second" and "on GPU 1:" in p.description


def test_bind_too_few_gpus() -> None:
    plan = placement("a100-80gb", entry("a", 7, count=3))
    with pytest.raises(InputError, match="placement needs 3 GPUs but the inventory .* has 2"):
        bind(plan, gpu_type("a100-80gb"), from_file(A100X2))
    with pytest.raises(InputError, match="needs 3 GPUs .* has 1"):
        bind(plan, gpu_type("a100-80gb"), from_file(H200))


def test_bind_emulated_mig_on_h200() -> None:
    big, mid, small = entry("a", 3, mps=2), entry("b", 2), entry("c", 1)
    plan = placement("h200-141gb", big, mid, small)
    bindings = bind(plan, gpu_type("h200-141gb"), from_file(H200))
    gpu_uuid = "GPU-h200h200-0000-4000-8000-000000000000"
    b3 = bindings[segment_label(big, 0)]
    assert len(b3.processes) == 2
    for p in b3.processes:
        assert p.kind == "mps" and p.gpu_index == 0
        assert p.env == {VISIBLE: gpu_uuid, SM_PERCENT: "22", MEM_LIMIT: "0=36352M"}  # 100*60/132/2, 71G/2
        assert "emulated MIG 3g.71gb via MPS SM cap" in p.description
    (p2,) = bindings[segment_label(mid, 0)].processes
    assert (p2.kind, p2.env) == ("mps", {VISIBLE: gpu_uuid, SM_PERCENT: "24", MEM_LIMIT: "0=35840M"})
    (p1,) = bindings[segment_label(small, 0)].processes
    assert p1.env == {VISIBLE: gpu_uuid, SM_PERCENT: "12", MEM_LIMIT: "0=18432M"}
    assert uses_mps(bindings)


def test_bind_emulation_uses_catalogue_sms_when_unknown() -> None:
    plan = placement("h200-141gb", entry("a", 3, mps=2))
    device = GpuDevice(0, "GPU-x", "NVIDIA H200", 0, 143771, False, ())
    (b,) = bind(plan, gpu_type("h200-141gb"), Inventory((device,), "test")).values()
    assert b.processes[0].env[SM_PERCENT] == "22"


def test_bind_whole_gpu() -> None:
    one, shared = entry("a", 7), entry("b", 7, mps=2)
    plan = placement("h200-141gb", one)
    (b,) = bind(plan, gpu_type("h200-141gb"), from_file(H200)).values()
    (p,) = b.processes
    assert (p.kind, p.gpu_index, p.env) == ("gpu", 0, {VISIBLE: "GPU-h200h200-0000-4000-8000-000000000000"})
    assert not uses_mps({b.label: b})
    (b,) = bind(placement("h200-141gb", shared), gpu_type("h200-141gb"), from_file(H200)).values()
    # a cap, not MIG: 50% of the SMs and half of the GPU's memory (the 141 GB shape is capped by it)
    assert [(p.kind, p.env[SM_PERCENT], p.env[MEM_LIMIT]) for p in b.processes] == [
        ("mps", "50", "0=71885M")] * 2
    assert "emulated" not in b.processes[0].description
    l4 = GpuDevice(0, "GPU-l4", "NVIDIA L4", 58, 23034, False, ())
    (b,) = bind(placement("l4-24gb", entry("a", 1)), gpu_type("l4-24gb"), Inventory((l4,), "t")).values()
    assert b.processes[0].kind == "gpu"


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(gpu_type="h100-80gb"), "placement.gpu_type"),
    (lambda p: p.pop("gpus"), "placement.gpus"),
    (lambda p: p["gpus"][0][0].pop("size"), r"placement.gpus\[0\]\[0\]: needs"),
    (lambda p: p["gpus"][0][0].update(size=2), "is a 3-slice segment but size is 2"),
    (lambda p: p["gpus"][0][0].update(size=5), "no segment of 5 slices"),
    (lambda p: p["gpus"][0][0].update(label="nonsense"), "bad segment label"),
    (lambda p: p["gpus"][0].append(dict(p["gpus"][0][0])), "duplicate segment label"),
])
def test_bind_rejects_bad_placement(edit, message: str) -> None:
    plan = placement("a100-80gb", entry("a", 3))
    edit(plan)
    with pytest.raises(InputError, match=message):
        bind(plan, gpu_type("a100-80gb"), from_file(A100X2))
