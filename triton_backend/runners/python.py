"""A Python class as a typed variant: ``class: module:Class`` (imported with ``path`` first on sys.path),
instantiated without arguments, then ``load(**args)`` once in the runner and ``infer(items)`` per batch.

The class may declare ``inputs`` and ``outputs`` (tensor name -> Triton data type), which ``check``
compares with the task's, and a classmethod ``check(**args)`` that raises when ``args`` cannot load
(a missing file, a model of another signature), so that ``jigsaw plan`` reports it."""
from __future__ import annotations

from typing import Any, Mapping

from jigsawserve.triton_backend.adapters import import_object
from jigsawserve.triton_backend.tensors import TensorSpec


def _class(params: Mapping[str, Any]) -> type:
    if "class" not in params:
        raise ValueError("class: required (module:Class)")
    try:
        cls = import_object(str(params["class"]), params.get("path"))
    except ImportError as exc:
        raise ValueError(f"class: {params['class']}: cannot import it ({exc}; path {params.get('path')})") from None
    if not isinstance(cls, type) or not callable(getattr(cls, "load", None)) or not callable(getattr(cls, "infer", None)):
        raise ValueError(f"class: {params['class']} is not a class with load and infer methods")
    return cls


def build(params: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Any:
    variant = _class(params)()
    variant.load(**dict(params.get("args") or {}))
    return variant


def check(params: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    unknown = sorted(set(params) - {"class", "path", "args"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (python takes class, path, args)")
    cls = _class(params)
    for role, specs in (("inputs", inputs), ("outputs", outputs)):
        declared = getattr(cls, role, None)
        if declared is None:
            continue
        want = {s.name: s.dtype for s in specs}
        if dict(declared) != want:
            raise ValueError(f"class: {params['class']} has {role} {dict(declared)}, the task declares {want}")
    own_check = getattr(cls, "check", None)
    if callable(own_check):
        try:
            own_check(**dict(params.get("args") or {}))
        except (ValueError, OSError, TypeError) as exc:
            raise ValueError(f"args: {params['class']}.check: {exc}") from None
