"""Render a plan into a Triton model repository from the Jinja templates in model_repository_templates/.

Models (``<app>`` is the app name):
  <app>                      the graph model clients call: INPUT [1, items, width] -> <sink>_OUTPUT
                             [1, items', width] per sink task (batch dimension of 1 request); it
                             stamps deadlines and runs every task's stage (EDF, early drop,
                             weighted routing, fan-out), calling the runners by BLS. Its config
                             depends on the app only; the plan's routing (runners, shares,
                             latencies) is ``<app>/routing.json``, which its instances re-read
                             when it changes, so a new plan is applied without reloading it
  <app>__<task>__<variant>__<k>g<m>p<b>b
                             a variant runner: one instance group per segment (``seg<i>``), one
                             instance per MPS process, bound to its MIG device / MPS share / CPU
A typed app (spec ``inputs``, orchestrator/spec/typed.py) renders the request's tensors as the graph's inputs,
the sinks' declared outputs ([1, items, *shape]) and ``<sink>_VARIANT`` as its outputs, and each runner
with its task's tensors (one item per request, ragged batching) and its model files located.
Every rendered config is parsed into tritonclient's ModelConfig protobuf before it is written.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from ..spec.appspec import AppSpec, parse_app
from .binding import SegmentBinding, bind, uses_mps
from ..errors import InputError
from ..spec.gpus import gpu_type
from .inventory import Inventory
from ..planning.plan import Entry, Plan, parse_label
from ..spec.typed import VARIANT_SUFFIX, TypedIO, resolve_files

TEMPLATES = Path(__file__).resolve().parents[2] / "model_repository_templates"
GRAPH_INSTANCES = 32  # x MAX_REQUESTS: requests in the graph at once (docs/runtime.md, task stages)
MAX_REQUESTS = 2  # requests the graph model takes in one execute (dynamic batching)
# of a request's budget, held back by the stages' admission for the path they do not see: the
# request's way into the graph instance and the answer's way back to the client (docs/runtime.md)
ADMISSION_RESERVE = 0.05
MANIFEST = "jigsaw.json"
ROUTING = "routing.json"  # in the graph model's directory
# the secret the graph model passes to its runners in its BLS calls (triton_backend/model.py, CALLER_PARAM):
# beside the model directories, where no client API reaches; written once per repository, kept across renders
RUNNER_KEY_FILE = ".jigsaw-runner-key"
STANDBY_SUFFIX = "__w"  # a runner named apart from a loaded one of another config (name_apart)


@dataclass
class Rendered:
    """The repository's models as validated protobufs, the graph model's routing file and the
    manifest written beside them."""

    configs: dict[str, model_config_pb2.ModelConfig]
    manifest: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)

    def config_json(self, name: str) -> str:
        """A model's config as the JSON that Triton's load API takes as an override."""
        return json_format.MessageToJson(self.configs[name], preserving_proto_field_name=True)

    @property
    def graph(self) -> str:
        """The graph model's name (the app's)."""
        return self.manifest["model"]

    @property
    def standby(self) -> list[str]:
        """Runner models loaded for a standby plan, in no route (``with_standby``)."""
        return list(self.manifest.get("standby", []))

    def routing_text(self) -> str:
        """The content of the graph model's routing file."""
        return json.dumps(self.routing, indent=1, sort_keys=True) + "\n"


def routing_path(repo: Path, graph: str) -> Path:
    return repo / graph / ROUTING


def write_routing(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` atomically (a temporary file beside it, then ``os.replace``), so
    that the graph instances never read half of it; False, writing nothing, when it already holds it."""
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def runner_name(app: str, e: Entry) -> str:
    """The runner model serving ``e``: its own name where it has one (a standby plan's, ``name_apart``),
    else one per (task, variant, segment shape, batch)."""
    return e.model or f"{app}__{e.task}__{e.variant}__{e.mig}g{e.mps}p{e.batch}b"


def _same(cfg: model_config_pb2.ModelConfig, other: model_config_pb2.ModelConfig, name: str) -> bool:
    renamed = model_config_pb2.ModelConfig()
    renamed.CopyFrom(cfg)
    renamed.name = name
    return renamed == other


def name_apart(plan: Plan, inventory: Inventory, taken: dict[str, model_config_pb2.ModelConfig],
               admission_reserve: float = ADMISSION_RESERVE) -> Plan:
    """``plan`` with each runner named so that it can be loaded beside the models ``taken`` (name -> config)
    without changing any of them: its default name where that is free or already holds the same config,
    else the first such ``<name>__w<i>``. A standby plan is named so: its runners load while the live plan's
    serve, and taking it over later loads nothing (``with_standby``)."""
    plain = replace(plan, entries=[replace(e, model="") for e in plan.entries])
    configs = build_configs(plain, inventory, admission_reserve=admission_reserve).configs
    entries = []
    for e in plain.entries:
        default = runner_name(plan.app, e)
        cfg = configs[default]
        name, i = default, 0
        while name in taken and not _same(cfg, taken[name], name):
            i += 1
            name = f"{default}{STANDBY_SUFFIX}{i}"
        entries.append(replace(e, model="" if name == default else name))
    return replace(plan, entries=entries)


def with_standby(live: Rendered, standby: Rendered) -> Rendered:
    """The live plan's repository with the standby plan's other runners beside it: loaded and ready, but in
    no route (zero routing weight) until a later apply makes that plan live. ``manifest["standby"]`` names
    them (``control.apply`` loads them after the new routing is in place)."""
    extra = {n: c for n, c in standby.configs.items() if n not in live.configs and n != standby.graph}
    configs = {**live.configs, **extra}
    manifest = {**live.manifest, "models": sorted(configs), "standby": sorted(extra),
                "standby_demand_rps": standby.manifest.get("demand_rps"),
                "uses_mps": bool(live.manifest.get("uses_mps") or standby.manifest.get("uses_mps"))}
    return Rendered(configs, manifest, live.routing)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["pbjson"] = lambda obj: json.dumps(json.dumps(obj, sort_keys=True), ensure_ascii=False)
    return env


def _parse(name: str, text: str) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"rendered config of model {name!r} is not a valid ModelConfig: {exc}\n{text}") from None


def _fastest(plan: Plan) -> dict[str, float]:
    return {t: min(e.latency_ms for e in es) for t, es in plan.tasks().items() if es}


def _downstream(app: AppSpec, fastest: dict[str, float]) -> dict[str, float]:
    """Fastest remaining latency after each task: the slowest chain of children's fastest p95."""
    out: dict[str, float] = {}
    for t in reversed(app.tasks):
        out[t.name] = max((fastest[e.dst] + out[e.dst] for e in app.children(t.name)), default=0.0)
    return out


def runner_config(name: str, width: int, batch: int, runtime: dict[str, Any], groups: list[dict[str, Any]],
                  bindings: dict[str, list[dict[str, str]]], queue_delay_us: int | None,
                  sizes: list[int] | None = None, inputs: list[dict[str, Any]] | None = None,
                  outputs: list[dict[str, Any]] | None = None, runner_key: bool = False) -> model_config_pb2.ModelConfig:
    """A validated runner config: ``groups`` are instance groups (name, count, kind), ``bindings`` each
    group's per-process environment; ``queue_delay_us`` None renders no dynamic batcher (every request
    runs alone, as the profiler's probes need); ``sizes`` are the batch sizes a torch runner captures.
    ``inputs``/``outputs`` (TensorSpec JSON) make a typed runner: one item per request, batched ragged.
    With ``runner_key``, it answers only requests carrying the repository's runner key (the graph model's)."""
    settings: dict[str, Any] = {"role": "runner", "runtime": runtime, "width": width, "max_batch": batch,
                                "bindings": bindings}
    if runner_key:
        settings["runner_key"] = True
    if sizes:
        settings["sizes"] = sorted(sizes)
    if inputs is not None:
        settings.update(inputs=inputs, outputs=outputs)
    return _parse(name, _env().get_template("runner.pbtxt.j2").render(
        name=name, width=width, batch=batch, groups=groups, queue_delay_us=queue_delay_us, settings=settings,
        inputs=inputs, outputs=outputs))


def _typed_settings(typed: TypedIO) -> dict[str, Any]:
    """The graph's typed I/O: request tensors, and the response's per-item tensors of each sink with the
    ``<sink>_VARIANT`` tensor naming the variant that answered each item."""
    sinks = list(dict.fromkeys(o.task for o in typed.outputs))
    return {"inputs": [t.to_json() for t in typed.inputs],
            "outputs": [{**o.spec.to_json(), "task": o.task, "output": o.output} for o in typed.outputs],
            "variants": {s: f"{s}{VARIANT_SUFFIX}" for s in sinks}}


def _graph_io(typed: dict[str, Any]) -> dict[str, Any]:
    """The graph model's tensors for the template: the response's with a leading items dimension."""
    outputs = [{"name": o["name"], "dtype": o["dtype"], "shape": [-1, *o["shape"]]} for o in typed["outputs"]]
    outputs += [{"name": name, "dtype": "BYTES", "shape": [-1]} for name in typed["variants"].values()]
    return {"inputs": typed["inputs"], "outputs": outputs}


def build_configs(plan: Plan, inventory: Inventory, batch_wait_fraction: float = 0.25,
                  admission_reserve: float = ADMISSION_RESERVE, graph_instances: int = GRAPH_INSTANCES,
                  max_requests: int = MAX_REQUESTS) -> Rendered:
    """Render and validate every model config of ``plan`` (nothing is written); the stages admit a
    request only when its runners would answer ``admission_reserve`` x its budget (the SLO, or its
    tighter ``deadline_ms``) before its deadline. The graph model has ``graph_instances`` instances
    taking ``max_requests`` requests each."""
    if not 0 <= admission_reserve < 1:
        raise InputError(f"admission reserve {admission_reserve:g}: must be a fraction of a request's budget "
                         "in [0, 1)")
    if not plan.app_spec:
        raise InputError("plan JSON: no app_spec (plans written by `jigsaw plan` carry it; re-plan)")
    app = parse_app(plan.app_spec, origin="plan app_spec")
    gpu = gpu_type(plan.gpu_type)
    bindings = bind(plan.placement, gpu, inventory)
    env = _env()
    width = app.tensor_width
    configs: dict[str, model_config_pb2.ModelConfig] = {}

    def add(template: str, name: str, **values: Any) -> None:
        configs[name] = _parse(name, env.get_template(template).render(name=name, width=width, **values))

    by_entry: dict[tuple, list[SegmentBinding]] = {}
    for label, b in bindings.items():
        k = parse_label(label)
        by_entry.setdefault((k.task, k.variant, k.mig, k.mps, k.batch), []).append(b)
    for e in plan.entries:
        segs = sorted(by_entry.get((e.task, e.variant, e.mig, e.mps, e.batch), []), key=lambda b: b.key.index)
        if len(segs) != e.count:
            raise InputError(f"plan JSON: placement has {len(segs)} segments for {runner_name(app.name, e)}, "
                             f"the entry counts {e.count}")
        groups = [{"name": f"seg{b.key.index}", "count": e.mps,
                   "kind": "KIND_CPU" if b.processes[0].kind == "cpu" else "KIND_MODEL"} for b in segs]
        runtime = dict(app.task(e.task).variant(e.variant).runtime) or {"kind": "numpy_mlp"}
        name = runner_name(app.name, e)
        typed_io: dict[str, Any] = {}
        if app.typed:
            runtime = resolve_files(runtime, f"tasks.{e.task}.variants.{e.variant}.runtime")
            typed_io = {"inputs": [t.to_json() for t in app.typed.task_inputs[e.task]],
                        "outputs": [t.to_json() for t in app.typed.task_outputs[e.task]]}
        configs[name] = runner_config(name, width, e.batch, runtime, groups,
                                      {f"seg{b.key.index}": [dict(p.env) for p in b.processes] for b in segs},
                                      queue_delay_us=int(e.latency_ms * 1000 * batch_wait_fraction), runner_key=True,
                                      **typed_io)
    tasks = [{"task": t.name, "parents": [e.src for e in app.parents(t.name)],
              "children": {e.dst: {"factor": e.factor, "factors": dict(e.factors)} for e in app.children(t.name)}}
             for t in app.tasks]  # topological order
    typed = _typed_settings(app.typed) if app.typed else None
    for t in tasks if app.typed else []:
        t["inputs"] = [s.to_json() for s in app.typed.task_inputs[t["task"]]]
        t["outputs"] = [s.to_json() for s in app.typed.task_outputs[t["task"]]]
        t["adapter"] = app.typed.adapters.get(t["task"])
        for child, c in t["children"].items():
            c["adapter"] = app.typed.adapters.get(f"{t['task']}->{child}")
    # a request still queued for the graph model after the whole SLO cannot make it: Triton rejects it
    # there, so a backlog never outlives an overload (the stages' early drop, which knows the plan,
    # catches the rest)
    add("graph.pbtxt.j2", app.name, outputs=[f"{t['task']}_OUTPUT" for t in tasks if not t["children"]],
        instances=graph_instances, max_requests=max_requests, queue_timeout_us=int(app.latency_slo_ms * 1000),
        typed=_graph_io(typed) if typed else None,
        settings={"role": "graph", "app": app.name, "slo_ms": app.latency_slo_ms,
                  "admission_reserve": admission_reserve, "width": width, "tasks": tasks,
                  "routing": ROUTING, "runner_key": True, **({"typed": typed} if typed else {})})
    manifest = {"app": app.name, "model": app.name, "latency_slo_ms": app.latency_slo_ms, "demand_rps": plan.demand_rps,
                "gpu_type": plan.gpu_type, "uses_mps": uses_mps(bindings),
                "inventory": inventory.source, "models": sorted(configs),
                "bindings": {label: [p.description for p in b.processes] for label, b in sorted(bindings.items())}}
    return Rendered(configs, manifest, _routing(plan, app))


def _routing(plan: Plan, app: AppSpec) -> dict[str, Any]:
    """The graph model's routing file: per task, the runners with their shares, max batch, p95 and
    throughput (all segments), and the fastest remaining latency after it (for the early drop)."""
    downstream = _downstream(app, _fastest(plan))
    tasks: dict[str, Any] = {}
    for t in app.tasks:
        routes = [{"model": runner_name(app.name, e), "variant": e.variant, "share": e.share, "batch": e.batch,
                   "latency_ms": e.latency_ms, "throughput_rps": e.throughput_rps * e.count}
                  for e in plan.entries if e.task == t.name and e.share > 0]
        if not routes:
            raise InputError(f"plan JSON: task {t.name} has no entry with a positive share")
        tasks[t.name] = {"routes": routes, "downstream_ms": downstream[t.name]}
    return {"tasks": tasks}


def write_repository(rendered: Rendered, out: Path) -> None:
    """Write ``<model>/config.pbtxt`` and an empty version directory per model, the graph model's
    routing file (atomically) and the manifest. Model directories of an earlier render that the new
    one lacks are removed."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_dir() and (old / "config.pbtxt").exists() and old.name not in rendered.configs:
            shutil.rmtree(old)
    for name, cfg in rendered.configs.items():
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        (out / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    write_routing(routing_path(out, rendered.graph), rendered.routing_text())
    (out / MANIFEST).write_text(json.dumps(rendered.manifest, indent=2) + "\n")
    ensure_runner_key(out)


def ensure_runner_key(repo: Path) -> None:
    """Write the repository's runner key (owner-readable only) unless it has one: runners loaded earlier
    and the graph model keep the key they read at their start."""
    path = repo / RUNNER_KEY_FILE
    if path.is_file() and path.read_text().strip():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16))
    os.replace(tmp, path)
