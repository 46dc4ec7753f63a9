"""Typed I/O of an app spec: the request's tensors, the response's, each task's, and the adapters on
the edges. An app without ``inputs`` keeps the untyped data path (``INPUT [1, items, width]``).

YAML (see examples/ocr/app.yaml)::

    inputs:  {IMAGE: {dtype: BYTES, shape: []}}        # one request: these tensors ([1, *shape] on the wire)
    outputs: {TEXT: rec.TEXT, SCORE: rec.SCORE}          # response: a sink's output, [1, items, *shape]
    tasks:
      det:
        inputs:  {IMAGE: {dtype: UINT8, shape: [-1, -1, 3]}}
        outputs: {BOXES: {dtype: FP32, shape: [-1, 4, 2]}}
        adapter: decode_image                            # a source: the request -> its items
        variants: {v4: {accuracy: 0.9, runtime: {kind: onnx, model: det.onnx}}}
    edges:
      - {from: det, to: rec, factor: 3, adapter: {use: crop_boxes, min_score: 0.5}}

Model files (``model`` of a runtime or of its ``args``) are paths relative to the spec's directory, or
``package:NAME/path`` inside an installed Python package (located at plan/render time, so that the
weights a wheel ships need not be copied).
"""
from __future__ import annotations

import importlib.util
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from jigsawserve.triton_backend.adapters import BUILTINS
from jigsawserve.triton_backend.tensors import DTYPES, TensorSpec

from ..errors import InputError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VARIANT_SUFFIX = "_VARIANT"  # the response's <sink>_VARIANT: which variant answered each item
TYPED_KINDS = ("onnx", "torchscript", "python")


@dataclass(frozen=True)
class ResponseOutput:
    """A response tensor: output ``output`` of sink task ``task``, one row per item."""

    name: str
    task: str
    output: str
    spec: TensorSpec


@dataclass(frozen=True)
class TypedIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[ResponseOutput, ...]
    task_inputs: Mapping[str, tuple[TensorSpec, ...]]
    task_outputs: Mapping[str, tuple[TensorSpec, ...]]
    adapters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "src->dst" or a source task
    evaluation: Mapping[str, Any] = field(default_factory=dict)


def parse_tensors(raw: Any, where: str) -> tuple[TensorSpec, ...]:
    """``{NAME: {dtype: FP32, shape: [-1, 4]}}`` (shape default [], one value) as TensorSpecs."""
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"{where}: expected a non-empty mapping of tensor name -> {{dtype, shape}}")
    out = []
    for name, body in raw.items():
        w = f"{where}.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            raise InputError(f"{w}: tensor names are letters, digits and '_', not starting with a digit")
        if not isinstance(body, Mapping) or "dtype" not in body:
            raise InputError(f"{w}: expected {{dtype: ..., shape: [...]}}")
        unknown = sorted(set(body) - {"dtype", "shape"})
        if unknown:
            raise InputError(f"{w}: unknown field(s) {', '.join(unknown)} (allowed: dtype, shape)")
        dtype = str(body["dtype"]).upper().removeprefix("TYPE_")
        dtype = "BYTES" if dtype == "STRING" else dtype
        if dtype not in DTYPES:
            raise InputError(f"{w}.dtype: {body['dtype']!r} is not a Triton data type ({', '.join(DTYPES)})")
        shape = body.get("shape", [])
        if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d == 0 or d < -1
                                              for d in shape):
            raise InputError(f"{w}.shape: expected a list of positive sizes or -1 (any), got {shape!r}")
        out.append(TensorSpec(name, dtype, tuple(shape)))
    return tuple(out)


def parse_adapter(raw: Any, where: str) -> dict[str, Any]:
    """``NAME`` or ``{use: NAME, <args>}`` (NAME a built-in or ``module:function``) as ``{use, <args>}``;
    a built-in's arguments are checked against its signature."""
    spec = {"use": raw} if isinstance(raw, str) else dict(raw) if isinstance(raw, Mapping) else None
    if spec is None or not isinstance(spec.get("use"), str):
        raise InputError(f"{where}: expected an adapter name or {{use: NAME, <args>}}")
    name = spec["use"]
    if name in BUILTINS:
        try:
            inspect.signature(BUILTINS[name]).bind({}, {}, **{k: v for k, v in spec.items() if k != "use"})
        except TypeError as exc:
            raise InputError(f"{where}: bad arguments for adapter {name}: {exc}") from None
    elif ":" not in name:
        raise InputError(f"{where}.use: {name!r} is neither a built-in adapter ({', '.join(BUILTINS)}) "
                         "nor module:function")
    return spec


def _response_outputs(raw: Any, task_outputs: Mapping[str, tuple[TensorSpec, ...]],
                      sinks: tuple[str, ...]) -> tuple[ResponseOutput, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise InputError("outputs: expected a mapping of response tensor name -> TASK.OUTPUT of a sink task")
    out = []
    for name, ref in raw.items():
        where = f"outputs.{name}"
        if not isinstance(name, str) or not NAME.match(name) or name.endswith(VARIANT_SUFFIX):
            raise InputError(f"{where}: response names are letters, digits and '_' (not ending in {VARIANT_SUFFIX}, "
                             "which names the variants that answered)")
        task, _, output = str(ref).partition(".")
        if task not in sinks:
            raise InputError(f"{where}: {ref!r}: {task!r} is not a sink task (sinks: {', '.join(sinks)})")
        spec = next((s for s in task_outputs[task] if s.name == output), None)
        if spec is None:
            raise InputError(f"{where}: task {task} has no output {output!r} "
                             f"(it has {', '.join(s.name for s in task_outputs[task])})")
        if -1 in spec.shape:
            raise InputError(f"{where}: {ref} has shape {list(spec.shape)}: the response stacks one row per item, "
                             "so it needs a fixed shape")
        out.append(ResponseOutput(name, task, output, TensorSpec(name, spec.dtype, spec.shape)))
    return tuple(out)


def parse_typed(doc: Mapping[str, Any], task_names: list[str], edges: list[tuple[str, str]],
                sources: tuple[str, ...], sinks: tuple[str, ...]) -> TypedIO | None:
    """The typed I/O of a spec (``edges`` in the order of ``doc['edges']``), or None for an untyped app."""
    tasks_raw, edges_raw = doc["tasks"], doc.get("edges") or []
    if "inputs" not in doc:
        stray = [f"tasks.{t}.{k}" for t in task_names for k in ("inputs", "outputs", "adapter")
                 if isinstance(tasks_raw[t], Mapping) and k in tasks_raw[t]]
        stray += [f"edges[{i}].adapter" for i, e in enumerate(edges_raw) if "adapter" in e]
        stray += [k for k in ("outputs", "evaluation") if k in doc]
        if stray:
            raise InputError(f"{stray[0]}: typed tensors and adapters need the request's tensors declared "
                             "(top-level inputs)")
        return None
    inputs = parse_tensors(doc["inputs"], "inputs")
    task_in, task_out, adapters = {}, {}, {}
    for t in task_names:
        body = tasks_raw[t]
        for key in ("inputs", "outputs"):
            if key not in body:
                raise InputError(f"tasks.{t}.{key}: required in an app with typed inputs")
        task_in[t] = parse_tensors(body["inputs"], f"tasks.{t}.inputs")
        task_out[t] = parse_tensors(body["outputs"], f"tasks.{t}.outputs")
        for v, vbody in body["variants"].items():
            kind = (vbody.get("runtime") or {}).get("kind") if isinstance(vbody, Mapping) else None
            if kind not in TYPED_KINDS:
                raise InputError(f"tasks.{t}.variants.{v}.runtime.kind: an app with typed inputs needs "
                                 f"{', '.join(TYPED_KINDS)}, got {kind!r}")
        if "adapter" in body:
            if t not in sources:
                raise InputError(f"tasks.{t}.adapter: only a source task takes one (the request -> its items); "
                                 "other tasks' items come from their edges' adapters")
            adapters[t] = parse_adapter(body["adapter"], f"tasks.{t}.adapter")
    for i, (src, dst) in enumerate(edges):
        if "adapter" in edges_raw[i]:
            adapters[f"{src}->{dst}"] = parse_adapter(edges_raw[i]["adapter"], f"edges[{i}].adapter")
    evaluation = doc.get("evaluation") or {}
    if evaluation and (not isinstance(evaluation, Mapping) or not {"make", "score", "metric"} <= set(evaluation)):
        raise InputError("evaluation: expected {metric: NAME, make: module:function, score: module:function[, path]}")
    return TypedIO(inputs, _response_outputs(doc.get("outputs"), task_out, sinks), task_in, task_out, adapters,
                   dict(evaluation))


def absolute_paths(doc: Any, base: Path) -> Any:
    """``doc`` with its relative model files and import paths made absolute against ``base`` (the spec's
    directory), and ``path: base`` added where a ``module:...`` is imported: a plan carries the spec, and
    the runners load from wherever the server runs."""
    if not isinstance(doc, Mapping) or "inputs" not in doc or not isinstance(doc.get("tasks"), Mapping):
        return doc

    def fix(node: Any, imports: bool) -> Any:
        if not isinstance(node, Mapping):
            return node
        out = dict(node)
        if isinstance(out.get("model"), str) and not out["model"].startswith("package:"):
            out["model"] = str((base / out["model"]).resolve())
        if isinstance(out.get("args"), Mapping):
            out["args"] = fix(out["args"], False)
        if imports and any(":" in str(out.get(k, "")) for k in ("class", "use", "make")):
            out["path"] = str((base / out.get("path", ".")).resolve())
        return out

    doc = dict(doc)
    tasks = {}
    for t, body in doc["tasks"].items():
        body = dict(body) if isinstance(body, Mapping) else body
        if isinstance(body, Mapping):
            if isinstance(body.get("adapter"), (Mapping, str)):
                body["adapter"] = fix(parse_adapter(body["adapter"], f"tasks.{t}.adapter"), True)
            if isinstance(body.get("variants"), Mapping):
                body["variants"] = {v: {**vb, "runtime": fix(vb["runtime"], True)}
                                    if isinstance(vb, Mapping) and isinstance(vb.get("runtime"), Mapping) else vb
                                    for v, vb in body["variants"].items()}
        tasks[t] = body
    doc["tasks"] = tasks
    if isinstance(doc.get("edges"), list):
        doc["edges"] = [{**e, "adapter": fix(parse_adapter(e["adapter"], f"edges[{i}].adapter"), True)}
                        if isinstance(e, Mapping) and "adapter" in e else e for i, e in enumerate(doc["edges"])]
    if isinstance(doc.get("evaluation"), Mapping):
        doc["evaluation"] = fix(doc["evaluation"], True)
    return doc


def locate(ref: str, where: str) -> Path:
    """The model file ``ref`` names: an absolute path, or ``package:NAME/path`` inside the installed
    package NAME; InputError naming ``where`` and the file when it is not there."""
    if ref.startswith("package:"):
        package, _, rel = ref[len("package:"):].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"{where}: {ref}: the Python package {package!r} that ships it is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    else:
        path = Path(ref)
    if not path.is_file():
        raise InputError(f"{where}: model file {path} does not exist")
    return path


def resolve_files(runtime: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``runtime`` with its ``model`` files (its own and its ``args``') located (see ``locate``)."""
    out = dict(runtime)
    if isinstance(out.get("model"), str):
        out["model"] = str(locate(out["model"], f"{where}.model"))
    if isinstance(out.get("args"), Mapping) and isinstance(out["args"].get("model"), str):
        out["args"] = {**out["args"], "model": str(locate(out["args"]["model"], f"{where}.args.model"))}
    return out


def check_variants(app: Any) -> None:
    """Load every variant of a typed app the way its runner will, once, and compare it with the task's
    declared tensors: InputError naming the field and the file (``jigsaw plan`` and ``render`` call it)."""
    from jigsawserve.triton_backend import runners
    from jigsawserve.triton_backend.adapters import import_object

    typed: TypedIO | None = app.typed
    if typed is None:
        return
    for task in app.tasks:
        for v in task.variants:
            where = f"tasks.{task.name}.variants.{v.name}.runtime"
            runtime = resolve_files(v.runtime, where)
            try:
                runners.check(runtime, list(typed.task_inputs[task.name]), list(typed.task_outputs[task.name]))
            except ValueError as exc:
                raise InputError(f"{where}.{exc}") from None
    for key, spec in typed.adapters.items():
        if spec["use"] not in BUILTINS:
            try:
                import_object(spec["use"], spec.get("path"))
            except (ImportError, ValueError) as exc:
                raise InputError(f"adapter of {key}: {spec['use']}: {exc}") from None
