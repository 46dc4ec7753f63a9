"""The Kubernetes manifests (orchestrator/packaging/k8s.py): validated against the Kubernetes schemas (kubernetes-validate,
offline: its wheel ships them), KubeRay's RayCluster CRD schema and mig-parted's config structure (both under
tests/data/, their sources in each file's $comment); the MIG geometry per node equal to the plan's placement.
No cluster runs."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from jigsawserve.orchestrator.cli import main
from jigsawserve.orchestrator.planning.cluster import ClusterPlan
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.packaging.k8s import (MIG_CONFIG_LABEL, NODE_LABEL, head_script, label_commands, load_cluster_plan,
                              node_resource, render)
from jigsawserve.orchestrator.planning.placement import place
from jigsawserve.orchestrator.planning.plan import Plan

DATA = Path(__file__).resolve().parent / "data"
K8S_VERSION = "1.33"  # the Kubernetes schemas the core objects are checked against
IMAGE = "registry.example/jigsaw:0.1"


def plan_on(gpu: str, per_gpu: list[list[int]], app: str = "tagging") -> Plan:
    """A plan whose placement has segments of these sizes on each GPU, laid out by the planner's placer."""
    gtype = gpu_type(gpu)
    gpus = []
    for sizes in per_gpu:
        laid = place([(f"t/v/{s}g/mps1/b1#{i}", s) for i, s in enumerate(sizes)], gtype, max_gpus=1).to_json()
        gpus.append(laid["gpus"][0])
    return Plan(app=app, gpu_type=gtype.name, features="ast", demand_rps=10.0, latency_slo_ms=100.0,
                accuracy_slo=0.9, entries=[], routing={}, gpus=len(gpus),
                placement={"gpu_type": gtype.name, "gpus": gpus})


@pytest.fixture
def cluster() -> ClusterPlan:
    """Two A100 nodes of one geometry, an H200 node, an L4 node (whole GPUs) and a CPU node."""
    return ClusterPlan(app="tagging", demand_rps=50.0, nodes={
        "gpu-a": plan_on("a100-80gb", [[3, 2, 1, 1], [7]]),
        "gpu-b": plan_on("a100-80gb", [[3, 2, 1, 1], [7]]),
        "gpu-h": plan_on("h200-141gb", [[4, 2, 1]]),
        "l4.node": plan_on("l4-24gb", [[1], [1]]),
        "cpu-0": plan_on("cpu", [[1], [1], [1]]),
    })


def docs(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(text))


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it under strict field validation (kubectl's default since 1.27):
    an object's fields other than its declared properties are errors, not pruned."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def raycluster_schema() -> jsonschema.Validator:
    schema = strict(json.loads((DATA / "kuberay_raycluster_v1.schema.json").read_text()))
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def mig_parted_schema() -> jsonschema.Validator:
    schema = json.loads((DATA / "mig_parted_v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_core_objects_valid_against_kubernetes_schemas(cluster: ClusterPlan) -> None:
    m = render(cluster, IMAGE, command="jigsaw serve-cluster /etc/jigsaw/plan.json")
    plan_map, raycluster = docs(m.raycluster)
    (mig_map,) = docs(m.mig_config)
    spec = raycluster["spec"]
    templates = [spec["headGroupSpec"]["template"], *(w["template"] for w in spec["workerGroupSpecs"])]
    pod_templates = [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": t}
                     for i, t in enumerate(templates)]  # each pod template as the core object it is
    for obj in [plan_map, mig_map, *pod_templates]:
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION
    assert json.loads(plan_map["data"]["plan.json"]) == cluster.to_json()
    bad = copy.deepcopy(next(t for t in pod_templates if t["template"]["spec"].get("tolerations")))
    bad["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_raycluster_valid_against_kuberay_crd(cluster: ClusterPlan, raycluster_schema: jsonschema.Validator) -> None:
    for command in (None, "jigsaw serve-cluster /etc/jigsaw/plan.json"):
        raycluster = docs(render(cluster, IMAGE, namespace="serving", command=command).raycluster)[1]
        assert errors(raycluster_schema, raycluster) == []
        assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
        assert raycluster["metadata"] == {"name": "jigsaw-tagging", "namespace": "serving",
                                          "labels": {"app.kubernetes.io/managed-by": "jigsawserve"}}
    # the strict schema is not vacuous: a misspelt field and a wrong type are caught
    typo = copy.deepcopy(raycluster)
    typo["spec"]["workerGroupSpecs"][0]["rayStartParam"] = typo["spec"]["workerGroupSpecs"][0].pop("rayStartParams")
    typo["spec"]["workerGroupSpecs"][1]["replicas"] = "1"
    assert len(errors(raycluster_schema, typo)) == 2


def test_mig_parted_config_matches_its_structure(cluster: ClusterPlan, mig_parted_schema: jsonschema.Validator) -> None:
    (mig_map,) = docs(render(cluster, IMAGE, gpu_namespace="nvidia-gpu-operator").mig_config)
    assert mig_map["metadata"]["namespace"] == "nvidia-gpu-operator"
    assert set(mig_map["data"]) == {"config.yaml"}  # the key the GPU operator's MIG manager reads
    config = yaml.safe_load(mig_map["data"]["config.yaml"])
    assert errors(mig_parted_schema, config) == []
    assert config["mig-configs"]["all-disabled"] == [{"devices": "all", "mig-enabled": False}]
    config["mig-configs"]["broken"] = [{"devices": [0], "mig-enabled": True, "mig-devices": {"1g10gb": 1}},
                                       {"devices": [1], "mig-enabled": False, "mig-devices": {"1g.10gb": 1}}]
    assert len(errors(mig_parted_schema, config)) == 2


def test_mig_geometry_per_node_equals_placement(cluster: ClusterPlan) -> None:
    m = render(cluster, IMAGE)
    configs = yaml.safe_load(docs(m.mig_config)[0]["data"]["config.yaml"])["mig-configs"]
    workers = {w["groupName"]: w for w in docs(m.raycluster)[1]["spec"]["workerGroupSpecs"]}
    assert sorted(workers) == sorted(cluster.nodes)
    for node, plan in cluster.nodes.items():
        worker, labels = workers[node], m.labels[node]
        pod = worker["template"]["spec"]
        assert worker["rayStartParams"]["resources"] == f"'{json.dumps({node_resource(node): 1})}'"
        assert labels[NODE_LABEL] == node and pod["nodeSelector"][NODE_LABEL] == node
        placed = [Counter(seg["shape"] for seg in gpu) for gpu in plan.placement["gpus"]]
        # Ray's GPUs are the node's physical GPUs, MIG or not: the Ray runtime's node actor takes them all, and
        # the inventory it reads is narrowed to them (CUDA_VISIBLE_DEVICES)
        gpus = 0 if plan.gpu_type == "cpu" else len(placed)
        assert worker["rayStartParams"]["num-gpus"] == str(gpus)
        limits = pod["containers"][0].get("resources", {}).get("limits", {})
        if gpu_type(plan.gpu_type).mig:
            entries = configs[labels[MIG_CONFIG_LABEL]]
            assert [e["devices"] for e in entries] == [[g] for g in range(len(placed))]
            assert [Counter(e["mig-devices"]) for e in entries] == placed
            assert pod["nodeSelector"][MIG_CONFIG_LABEL] == labels[MIG_CONFIG_LABEL]
            assert pod["nodeSelector"]["nvidia.com/mig.config.state"] == "success"
            assert limits == {f"nvidia.com/mig-{p}": n for p, n in sum(placed, Counter()).items()}
        else:
            assert MIG_CONFIG_LABEL not in labels
            assert limits == ({"nvidia.com/gpu": gpus} if gpus else {})
    # nodes of one geometry share its config; the H200 has its own; every config is some node's
    assert m.labels["gpu-a"][MIG_CONFIG_LABEL] == m.labels["gpu-b"][MIG_CONFIG_LABEL]
    assert set(configs) == {"all-disabled", m.labels["gpu-a"][MIG_CONFIG_LABEL], m.labels["gpu-h"][MIG_CONFIG_LABEL]}
    assert configs[m.labels["gpu-h"][MIG_CONFIG_LABEL]][0]["mig-devices"] == {"1g.18gb": 1, "2g.35gb": 1,
                                                                               "4g.71gb": 1}


def test_node_resource_is_the_one_the_ray_runtime_pins_by() -> None:
    pytest.importorskip("ray")
    from jigsawserve.orchestrator.serving.ray_cluster import node_resource as pinned_by

    assert node_resource("gpu-a") == pinned_by("gpu-a") == "jigsaw_node:gpu-a"


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.placement["gpus"][0][0].update(shape="1g.5gb"),
     r"node gpu-a: placement\.gpus\[0\]\[0\]\.shape '1g\.5gb' \(size \d\) is not a shape of a100-80gb \(its shapes: "
     r"1g\.10gb, 2g\.20gb, 3g\.40gb, 4g\.40gb, 7g\.80gb\)"),
    (lambda p: p.placement["gpus"][1][0].update(size=5), r"placement\.gpus\[1\]\[0\]\.shape '7g\.80gb' \(size 5\)"),
    (lambda p: p.placement["gpus"][1].append({"label": "x", "size": 1, "start": 0, "shape": "1g.10gb"}),
     r"placement\.gpus\[1\]: segments of \[7, 1\] slices do not fit on one a100-80gb"),
    (lambda p: p.placement["gpus"][0][1].pop("size"), r"placement\.gpus\[0\]\[1\]: needs an integer size and a shape"),
    (lambda p: p.placement.update(gpu_type="h100-80gb"), r"placement\.gpu_type 'h100-80gb' differs"),
    (lambda p: p.placement.clear(), r"node gpu-a: placement\.gpus: missing"),
])
def test_invalid_plan_names_the_field(mutate, message: str) -> None:
    plan = plan_on("a100-80gb", [[3, 2, 1, 1], [7]])
    mutate(plan)
    with pytest.raises(InputError, match=message):
        render(ClusterPlan(app="tagging", demand_rps=1.0, nodes={"gpu-a": plan}), IMAGE)


def test_invalid_names_are_refused() -> None:
    plan = plan_on("a100-80gb", [[7]])
    with pytest.raises(InputError, match="node 'GPU_A': not a Kubernetes node name"):
        render(ClusterPlan(app="tagging", demand_rps=1.0, nodes={"GPU_A": plan}), IMAGE)
    with pytest.raises(InputError, match="namespace 'Serving'"):
        render(ClusterPlan(app="tagging", demand_rps=1.0, nodes={"a": plan}), IMAGE, namespace="Serving")
    with pytest.raises(InputError, match="app '9 lives': RayCluster name"):
        render(ClusterPlan(app="9 lives", demand_rps=1.0, nodes={"a": plan}), IMAGE)


def test_head_runs_the_driver_only_when_given(cluster: ClusterPlan) -> None:
    head = docs(render(cluster, IMAGE).raycluster)[1]["spec"]["headGroupSpec"]
    assert "metadata" not in head["template"] and "args" not in head["template"]["spec"]["containers"][0]
    assert head["rayStartParams"] == {"num-gpus": "0"}  # GPU actors never land on the head
    head = docs(render(cluster, IMAGE, command="jigsaw x").raycluster)[1]["spec"]["headGroupSpec"]
    assert head["template"]["metadata"]["annotations"] == {"ray.io/overwrite-container-cmd": "true"}
    assert head["template"]["spec"]["containers"][0]["args"] == [head_script("jigsaw x")]


def _run_head(tmp_path: Path, ray_start: str) -> subprocess.CompletedProcess[str]:
    """The head's shell line under bash with a stand-in ``ray`` whose health check passes once ``ready`` exists."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "ray").write_text(f"#!/bin/sh\ntest -e {tmp_path}/ready\n")
    (tmp_path / "ray").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "KUBERAY_GEN_RAY_START_CMD": ray_start}
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen(["bash", "-c", head_script("echo driver $KUBERAY_GEN_RAY_START_CMD")], env=env,
                                stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the stand-in `ray start`, still running in the background
    return subprocess.CompletedProcess(proc.args, proc.returncode, (tmp_path / "out").read_text())


def test_head_script_starts_the_driver_once_ray_answers(tmp_path: Path) -> None:
    ok = _run_head(tmp_path, f"sleep 0.3; touch {tmp_path}/ready; sleep 30")
    assert ok.returncode == 0 and ok.stdout.startswith("driver sleep 0.3")
    failed = _run_head(tmp_path / "down", "exit 3")  # Ray never comes up: the container fails instead of waiting
    assert failed.returncode == 1 and failed.stdout == ""


def test_cli_writes_manifests_and_label_commands(tmp_path: Path, cluster: ClusterPlan,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps(cluster.to_json()))
    assert main(["k8s", str(tmp_path / "cluster.json"), "--image", IMAGE, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    m = render(load_cluster_plan(tmp_path / "cluster.json"), IMAGE)
    assert (tmp_path / "out" / "raycluster.yaml").read_text() == m.raycluster
    assert (tmp_path / "out" / "mig-config.yaml").read_text() == m.mig_config
    for line in label_commands(m):
        assert f"  {line}\n" in out
    assert "kubectl label node gpu-a jigsawserve/node=gpu-a nvidia.com/mig.config=jigsaw-a100-80gb-" in out
    assert '"migManager": {"config": {"name": "jigsaw-mig-parted-config"}}' in out

    (tmp_path / "plan.json").write_text(json.dumps(cluster.nodes["gpu-h"].to_json()))
    assert main(["k8s", str(tmp_path / "plan.json"), "--image", IMAGE, "--node", "h200-1",
                 "--out", str(tmp_path / "one")]) == 0
    workers = docs((tmp_path / "one" / "raycluster.yaml").read_text())[1]["spec"]["workerGroupSpecs"]
    assert [w["groupName"] for w in workers] == ["h200-1"]
    assert "kubectl label node h200-1 jigsawserve/node=h200-1 nvidia.com/mig.config=" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("[1]")
    assert main(["k8s", str(tmp_path / "bad.json"), "--image", IMAGE, "--out", str(tmp_path / "x")]) == 1
    assert "not a plan" in capsys.readouterr().err
