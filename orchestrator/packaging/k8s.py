"""What a Kubernetes cluster operator applies to serve a cluster plan: a KubeRay ``RayCluster`` and the NVIDIA GPU
operator's MIG geometry, rendered from the Jinja templates in model_repository_templates/ (``k8s_*.yaml.j2``).

Per node of the plan:

- its MIG geometry (per GPU, the count of each MIG profile of its placement) as one named config of the GPU
  operator's mig-parted ConfigMap; the operator's MIG manager applies it when the node gets the label
  ``nvidia.com/mig.config=<name>``. Nodes of one geometry share a config, named by its content so that an
  unchanged geometry keeps its name across plans. mig-parted takes counts, not the planner's starts: it lays the
  instances out itself, and the runtime binds segments to MIG devices by size (``binding.py``).
- one worker group of the RayCluster, pinned to its Kubernetes node (``jigsawserve/node=<name>``, the MIG config
  label and the MIG manager's ``success`` state), asking for the node's MIG devices as the GPU operator's
  ``mixed`` strategy advertises them (``nvidia.com/mig-1g.10gb``), or for whole GPUs, and offering the Ray
  resource ``jigsaw_node:<name>`` by which the Ray runtime pins the node's tritonserver actor.

The head runs Ray and, when given, the driver command once Ray answers; the plan JSON is mounted on it. Nothing
here talks to a cluster (``docs/runtime.md``, "On Kubernetes", says what was validated and what was not run).
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ..planning.cluster import ClusterPlan
from ..errors import InputError
from ..spec.gpus import gpu_type
from ..planning.placement import fits_on_one_gpu
from ..planning.plan import Plan

TEMPLATES = Path(__file__).resolve().parents[2] / "model_repository_templates"
NODE_LABEL = "jigsawserve/node"
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_STATE_LABEL = "nvidia.com/mig.config.state"  # the MIG manager's: "success" once the geometry is applied
MIG_PARTED_CONFIGMAP = "jigsaw-mig-parted-config"  # ClusterPolicy spec.migManager.config.name must name it
PLAN_DIR = "/etc/jigsaw"  # where the head finds plan.json
CONFIGMAP_MAX_BYTES = 1 << 20  # the API server's limit on a ConfigMap's data
# a node name is a Kubernetes node name, a label value and a worker group name at once
_NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_CLUSTER_NAME = re.compile(r"[a-z]([a-z0-9-]{0,51}[a-z0-9])?")  # KubeRay: a DNS-1035 label of at most 53


def node_resource(node: str) -> str:
    """The Ray custom resource a node's worker offers (one unit): the Ray runtime pins the node's tritonserver
    actor by it, so that the actor runs on the node whose GPUs the node's plan was made for."""
    return f"jigsaw_node:{node}"


@dataclass(frozen=True)
class NodeShape:
    """What one node's pod needs: ``mig`` per GPU of the plan, MIG profile -> count (empty for a GPU type
    without MIG, whose pod takes ``gpus`` whole GPUs; both empty for CPU slices)."""

    name: str
    gpu_type: str
    gpus: int
    mig: tuple[dict[str, int], ...]

    @property
    def mig_config(self) -> str | None:
        """The mig-parted config name of this geometry: the GPU type and a digest of the per-GPU counts."""
        if not self.mig:
            return None
        digest = hashlib.sha256(json.dumps(self.mig, sort_keys=True).encode()).hexdigest()[:8]
        return f"jigsaw-{self.gpu_type}-{digest}"

    @property
    def limits(self) -> dict[str, int]:
        """The pod's device requests: per MIG profile (the GPU operator's mixed strategy), or whole GPUs."""
        if self.mig:
            total: Counter[str] = Counter()
            for profiles in self.mig:
                total.update(profiles)
            return {f"nvidia.com/mig-{p}": n for p, n in sorted(total.items())}
        return {"nvidia.com/gpu": self.gpus} if self.gpus else {}

    @property
    def labels(self) -> dict[str, str]:
        """The labels the Kubernetes node that hosts this node needs."""
        out = {NODE_LABEL: self.name}
        if self.mig_config:
            out[MIG_CONFIG_LABEL] = self.mig_config
        return out


def node_shape(name: str, plan: Plan) -> NodeShape:
    """The GPUs a node's plan places segments on, checked against its GPU type (InputError naming the field)."""
    if not _NODE_NAME.fullmatch(name):
        raise InputError(f"node {name!r}: not a Kubernetes node name usable as a label value (lowercase letters, "
                         "digits, '-' and '.', at most 63, starting and ending with a letter or digit)")
    where = f"node {name}: placement"
    placed = plan.placement.get("gpus")
    if not isinstance(placed, list):
        raise InputError(f"{where}.gpus: missing (a plan from `jigsaw plan` has its placement)")
    gtype = plan.placement.get("gpu_type", plan.gpu_type)
    if gtype != plan.gpu_type:
        raise InputError(f"{where}.gpu_type {gtype!r} differs from the plan's gpu_type {plan.gpu_type!r}")
    gpu = gpu_type(gtype)
    mig = []
    for g, segments in enumerate(placed):
        sizes = []
        for i, seg in enumerate(segments):
            try:
                size, shape = int(seg["size"]), seg["shape"]
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{where}.gpus[{g}][{i}]: needs an integer size and a shape") from None
            if gpu.shapes.get(size) is None or gpu.shapes[size].name != shape:
                raise InputError(f"{where}.gpus[{g}][{i}].shape {shape!r} (size {size}) is not a shape of "
                                 f"{gpu.name} (its shapes: {', '.join(s.name for s in gpu.shapes.values())})")
            sizes.append(size)
        if not fits_on_one_gpu(sizes, gpu):
            raise InputError(f"{where}.gpus[{g}]: segments of {sorted(sizes, reverse=True)} slices do not fit on "
                             f"one {gpu.name}")
        if gpu.mig:
            mig.append(dict(sorted(Counter(s["shape"] for s in segments).items())))
    gpus = 0 if gpu.name == "cpu" else len(placed)  # CPU slices take no GPU
    return NodeShape(name=name, gpu_type=gpu.name, gpus=gpus, mig=tuple(mig))


@dataclass(frozen=True)
class Manifests:
    """The rendered YAML (``raycluster``: the plan's ConfigMap and the RayCluster; ``mig_config``: the mig-parted
    ConfigMap) and, per node, the labels its Kubernetes node needs."""

    name: str
    raycluster: str
    mig_config: str
    labels: dict[str, dict[str, str]]


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["json"] = json.dumps  # a JSON scalar or flow mapping is YAML too, quoted where it must be
    return env


def head_script(command: str) -> str:
    """The head container's shell line: Ray started as KubeRay generated it, then the driver once Ray answers
    (KubeRay's own line ends in ``ray start --block``, which nothing after it would outlive)."""
    return ('ulimit -n "${RAY_START_ULIMIT_OPEN_FILES:-65536}"; eval "$KUBERAY_GEN_RAY_START_CMD" & '
            'until ray health-check >/dev/null 2>&1; do kill -0 $! || exit 1; sleep 1; done; '
            f'exec {command}')


def render(cluster: ClusterPlan, image: str, namespace: str = "default", command: str | None = None,
           gpu_namespace: str = "gpu-operator") -> Manifests:
    """Render the manifests of ``cluster`` for pods of ``image`` (with Ray, the jigsaw runtime and tritonserver)
    in ``namespace``; ``command``, when given, is the driver the head runs (it finds the plan at
    ``PLAN_DIR/plan.json``); ``gpu_namespace`` is the GPU operator's, where its MIG manager reads its config."""
    if not cluster.nodes:
        raise InputError("cluster plan: no nodes")
    if not image.strip():
        raise InputError("image: empty")
    for field, value in (("namespace", namespace), ("gpu namespace", gpu_namespace)):
        if not _NAMESPACE.fullmatch(value):
            raise InputError(f"{field} {value!r}: not a Kubernetes namespace name (DNS-1123 label)")
    name = "jigsaw-" + cluster.app.lower().replace("_", "-")
    if not _CLUSTER_NAME.fullmatch(name):
        raise InputError(f"app {cluster.app!r}: RayCluster name {name!r} is not a DNS-1035 label of at most 53")
    shapes = [node_shape(n, p) for n, p in sorted(cluster.nodes.items())]
    plan_json = json.dumps(cluster.to_json(), indent=1, sort_keys=True)
    if len(plan_json.encode()) > CONFIGMAP_MAX_BYTES:
        raise InputError(f"cluster plan: {len(plan_json.encode())} bytes of JSON, more than a ConfigMap holds")
    nodes = [{"name": s.name, "gpus": s.gpus, "limits": s.limits,
              "ray_resources": f"'{json.dumps({node_resource(s.name): 1})}'",  # a shell word in `ray start`
              "selector": {**s.labels, **({MIG_STATE_LABEL: "success"} if s.mig else {})}} for s in shapes]
    env = _env()
    raycluster = env.get_template("k8s_raycluster.yaml.j2").render(
        name=name, namespace=namespace, image=image, plan_json=plan_json, plan_dir=PLAN_DIR, nodes=nodes,
        head_script=head_script(command) if command else None)
    configs = {s.mig_config: s.mig for s in shapes if s.mig_config}
    mig_config = env.get_template("k8s_mig_parted.yaml.j2").render(
        name=MIG_PARTED_CONFIGMAP, namespace=gpu_namespace, configs=configs)
    for text in (raycluster, mig_config):
        list(yaml.safe_load_all(text))  # a template that renders invalid YAML fails here, not on the cluster
    return Manifests(name=name, raycluster=raycluster, mig_config=mig_config, labels={s.name: s.labels for s in shapes})


def label_commands(manifests: Manifests) -> list[str]:
    """One ``kubectl label node`` per node: the Kubernetes node of the plan node's name gets its labels (the MIG
    manager applies the geometry on the label's change)."""
    return [" ".join(["kubectl label node", shlex.quote(node), *(f"{k}={v}" for k, v in labels.items()),
                      "--overwrite"]) for node, labels in manifests.labels.items()]


def load_cluster_plan(path: str | Path, node: str = "node-0") -> ClusterPlan:
    """A ClusterPlan JSON, or a single-node plan JSON as a cluster of one node named ``node``."""
    try:
        doc: Any = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read plan ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a plan (a JSON object)")
    if "nodes" in doc:
        try:
            return ClusterPlan.from_json(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: cluster plan: missing or bad field {exc}") from None
    plan = Plan.from_json(doc)
    return ClusterPlan(app=plan.app, demand_rps=plan.demand_rps, nodes={node: plan})
