"""A plan spanning several GPUs of one host, rendered as `jigsaw render --inventory` does, bound GPU by GPU.

One tritonserver serves every GPU of the host: each runner's instance group is a placed segment, and its
processes must run on the GPU that placement put the segment on. These tests plan a GPU app with the planner,
render it for a simulated inventory through the CLI, read the rendered repository back (every config.pbtxt
parsed into tritonclient's ModelConfig) and compare each instance's environment with what the plan's
placement and the inventory file say it must be. The expectation is derived here from the plan JSON, the
inventory JSON and NVIDIA's MIG shapes, not through jigsawserve.orchestrator.serving.binding, so that a binding that sends a
segment to the wrong GPU, or caps it as another shape, fails here.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from jigsawserve.orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
H100X4 = ROOT / "examples" / "inventory" / "h100x4-nomig.json"
H100_PROFILES = ROOT / "examples" / "h200" / "profiles.h100-80gb.csv"
TRAFFIC = ROOT / "examples" / "h200" / "traffic.yaml"
TAGGING = ROOT / "examples" / "tagging.yaml"
A100_PROFILES = ROOT / "examples" / "a100" / "profiles.csv"

VISIBLE, SM_PERCENT, MEM_LIMIT = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
                                  "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
# NVIDIA's MIG profiles (user guide, "Supported MIG Profiles"): compute slices -> (name, SMs, memory GiB)
H100_SHAPES = {1: ("1g.10gb", 16, 10), 2: ("2g.20gb", 32, 20), 3: ("3g.40gb", 60, 40), 4: ("4g.40gb", 64, 40),
               7: ("7g.80gb", 132, 80)}
A100_SHAPES = {1: ("1g.10gb", 14, 10), 2: ("2g.20gb", 28, 20), 3: ("3g.40gb", 42, 40), 4: ("4g.40gb", 56, 40),
               7: ("7g.80gb", 98, 80)}
LABEL = re.compile(r"^(?P<task>[^/]+)/(?P<variant>[^/]+)/(?P<mig>\d+)g/mps(?P<mps>\d+)/b(?P<batch>\d+)#(?P<index>\d+)$")


def jigsaw(*args: object) -> None:
    assert main([str(a) for a in args]) == 0, f"jigsaw {' '.join(map(str, args))} failed"


def plan_and_render(tmp_path: Path, app: Path, profiles: Path, demand: float, gpus: int,
                    inventory: Path) -> tuple[dict, Path]:
    """`jigsaw plan ... --gpus N --out plan.json` then `jigsaw render plan.json --inventory FILE`; the plan
    solved to the end (a generous time limit), so that a loaded CI machine gets the same plan."""
    plan_path, repo = tmp_path / "plan.json", tmp_path / "repo"
    jigsaw("plan", app, "--profiles", profiles, "--demand", demand, "--gpus", gpus, "--time-limit", 60,
           "--out", plan_path)
    jigsaw("render", plan_path, "--out", repo, "--inventory", inventory)
    return json.loads(plan_path.read_text()), repo


def expected_segments(plan: dict) -> dict[tuple[str, str], dict]:
    """(runner model, instance group) -> the segment's GPU, size and MPS processes, from the plan's placement:
    a runner serves one (task, variant, MIG size, MPS processes, batch) and each of its segments is the
    instance group ``seg<index>`` (docs/runtime.md)."""
    out = {}
    for g, segs in enumerate(plan["placement"]["gpus"]):
        for seg in segs:
            m = LABEL.match(seg["label"])
            assert m, seg["label"]
            assert int(m["mig"]) == seg["size"]
            runner = f"{plan['app']}__{m['task']}__{m['variant']}__{m['mig']}g{m['mps']}p{m['batch']}b"
            out[(runner, f"seg{m['index']}")] = {"gpu": g, "size": seg["size"], "mps": int(m["mps"]),
                                                 "label": seg["label"]}
    return out


def rendered_instances(repo: Path) -> tuple[dict[tuple[str, str], list[dict]], dict[str, model_config_pb2.ModelConfig]]:
    """(runner model, instance group) -> each instance's environment, as the jigsaw backend applies it (Triton
    names a group's instances ``<group>_<j>``; instance j takes the group's j-th binding), and every model's
    config parsed into tritonclient's ModelConfig."""
    configs, instances = {}, {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert cfg.name == path.parent.name
        configs[cfg.name] = cfg
        settings = json.loads(cfg.parameters["jigsaw"].string_value)
        if settings["role"] != "runner":
            continue
        assert sorted(settings["bindings"]) == sorted(g.name for g in cfg.instance_group), cfg.name
        for group in cfg.instance_group:
            envs = settings["bindings"][group.name]
            assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_MODEL  # the backend places itself
            assert len(envs) == group.count, f"{cfg.name} {group.name}: one environment per MPS process"
            instances[(cfg.name, group.name)] = [envs[j % len(envs)] for j in range(group.count)]
    return instances, configs


def test_four_h100s_without_mig_each_segment_on_its_gpu(tmp_path: Path) -> None:
    """Traffic analysis at 2450 req/s on four H100s (MIG off, emulated with MPS): the placement takes all four
    GPUs, and every process of every segment runs on its GPU (its UUID) with its shape's SM cap and memory."""
    inventory = json.loads(H100X4.read_text())
    gpus = inventory["gpus"]
    assert len(gpus) == 4 and len({g["uuid"] for g in gpus}) == 4 and not any(g["mig_enabled"] for g in gpus)
    plan, repo = plan_and_render(tmp_path, TRAFFIC, H100_PROFILES, 2450, 4, H100X4)
    assert plan["gpu_type"] == "h100-80gb"
    placed = plan["placement"]["gpus"]
    assert len(placed) == 4 and all(placed), f"the demand should need every GPU: {plan['slices']} slices placed"

    expected = expected_segments(plan)
    instances, configs = rendered_instances(repo)
    assert set(instances) == set(expected)   # every placed segment rendered, nothing else
    per_gpu: dict[str, Counter] = {g["uuid"]: Counter() for g in gpus}
    for key, seg in expected.items():
        device = gpus[seg["gpu"]]
        envs = instances[key]
        assert len(envs) == seg["mps"], key
        name, sms, memory_gb = H100_SHAPES[seg["size"]]
        for env in envs:
            assert env[VISIBLE] == device["uuid"], f"{seg['label']} placed on GPU {seg['gpu']}, bound to {env[VISIBLE]}"
            if seg["size"] == 7 and seg["mps"] == 1:
                assert env == {VISIBLE: device["uuid"]}   # the whole GPU: no cap
                continue
            # MIG emulated: this process's share of the shape's SMs and of its memory (at most the GPU's)
            assert set(env) == {VISIBLE, SM_PERCENT, MEM_LIMIT}
            assert int(env[SM_PERCENT]) == max(1, 100 * sms // (device["sms"] * seg["mps"])), (seg["label"], name)
            memory_mb = min(memory_gb * 1024, device["memory_mb"])
            assert env[MEM_LIMIT] == f"0={memory_mb // seg['mps']}M", (seg["label"], name)
            per_gpu[device["uuid"]]["sm_percent"] += int(env[SM_PERCENT])
        per_gpu[device["uuid"]]["segments"] += 1
    # the shapes the traffic plan uses, in numbers: 1g.10gb is 16 of 132 SMs and 10 GiB
    one_g = [instances[k] for k, s in expected.items() if s["size"] == 1 and s["mps"] == 2]
    assert one_g and all(env[SM_PERCENT] == "6" and env[MEM_LIMIT] == "0=5120M" for envs in one_g for env in envs)
    for g, segs in enumerate(placed):   # every GPU of the plan gets its segments, their SM caps within it
        load = per_gpu[gpus[g]["uuid"]]
        assert load["segments"] == len(segs) > 0 and load["sm_percent"] <= 100, (g, load)

    manifest = json.loads((repo / "jigsaw.json").read_text())
    assert manifest["uses_mps"] is True and manifest["inventory"] == f"file {H100X4}"
    assert sorted(manifest["bindings"]) == sorted(s["label"] for s in expected.values())
    assert set(configs) == set(manifest["models"]) and manifest["model"] == plan["app"] in configs
    routed = {r["model"] for t in json.loads((repo / plan["app"] / "routing.json").read_text())["tasks"].values()
              for r in t["routes"]}
    assert routed == {runner for runner, _ in expected}


def mig_inventory(placement: list[list[dict]]) -> dict:
    """Two A100s partitioned as the plan needs them (what an operator does with mig-parted before serving it),
    in the simulated inventory format; each GPU's devices listed in the reverse of the placement's order, and a
    spare 1g device where slices are left, so that binding has to pick by size on the right GPU."""
    gpus = []
    for g, segs in enumerate(placement):
        sizes = [s["size"] for s in reversed(segs)] + ([1] if sum(s["size"] for s in segs) < 7 else [])
        gpus.append({"index": g, "uuid": f"GPU-a100a100-{g:04d}-4000-8000-000000000000", "name": "NVIDIA A100 80GB PCIe",
                     "sms": 108, "memory_mb": 81920, "mig_enabled": True,
                     "mig_devices": [{"uuid": f"MIG-a100a100-{g:04d}-4000-8000-{j + 1:012d}", "size": size,
                                      "profile": A100_SHAPES[size][0], "memory_mb": A100_SHAPES[size][2] * 1024 - 256,
                                      "sms": A100_SHAPES[size][1]} for j, size in enumerate(sizes)]})
    return {"gpus": gpus}


def test_two_a100s_with_real_mig_each_segment_on_a_mig_device_of_its_gpu(tmp_path: Path) -> None:
    """The tagging app at 500 req/s on two A100s with MIG enabled: each segment takes its own MIG device of its
    size on the GPU placement chose (all its MPS processes on that device, capped at 1/mps of its SMs, no memory
    limit: the MIG device bounds it)."""
    plan_path = tmp_path / "plan.json"
    jigsaw("plan", TAGGING, "--profiles", A100_PROFILES, "--demand", 500, "--gpus", 2, "--time-limit", 60,
           "--out", plan_path)
    plan = json.loads(plan_path.read_text())
    placed = plan["placement"]["gpus"]
    assert len(placed) == 2 and all(placed), f"the demand should need both GPUs: {plan['slices']} slices placed"
    inventory = mig_inventory(placed)
    inventory_path = tmp_path / "a100x2.json"
    inventory_path.write_text(json.dumps(inventory))
    repo = tmp_path / "repo"
    jigsaw("render", plan_path, "--out", repo, "--inventory", inventory_path)

    migs = {m["uuid"]: (g, m) for g, gpu in enumerate(inventory["gpus"]) for m in gpu["mig_devices"]}
    expected = expected_segments(plan)
    instances, _ = rendered_instances(repo)
    assert set(instances) == set(expected)
    taken: dict[str, str] = {}
    for key, seg in expected.items():
        envs = instances[key]
        assert len(envs) == seg["mps"] and len({env[VISIBLE] for env in envs}) == 1, key
        uuid = envs[0][VISIBLE]
        g, mig = migs[uuid]
        assert (g, mig["size"]) == (seg["gpu"], seg["size"]), f"{seg['label']} bound to {mig['profile']} on GPU {g}"
        assert taken.setdefault(uuid, seg["label"]) == seg["label"], f"{uuid} given to two segments"
        for env in envs:
            assert MEM_LIMIT not in env
            assert env.get(SM_PERCENT) == (None if seg["mps"] == 1 else str(100 // seg["mps"]))
    assert {migs[u][0] for u in taken} == {0, 1}   # both GPUs serve
    spare = [u for u, (_, m) in migs.items() if u not in taken]
    assert all(migs[u][1]["size"] == 1 for u in spare)   # only the spare devices are left
    manifest = json.loads((repo / "jigsaw.json").read_text())
    assert manifest["uses_mps"] is any(s["mps"] > 1 for s in expected.values())
