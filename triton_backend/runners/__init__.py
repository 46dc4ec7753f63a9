"""Variants loaded from model files or Python code, for apps with typed tensors (the spec's
``inputs``/``outputs``): an ONNX model, a TorchScript program, or a ``module:Class``.

A typed variant takes a batch of items (each a dict of the task's declared input tensors, without a
batch dimension) and returns one dict of the task's declared outputs per item. ``check`` is what
``jigsaw plan``/``render`` run, so that a missing file or a signature that does not match the declared
tensors is an error there rather than at the first request.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np

from jigsawserve.triton_backend.tensors import Item, TensorSpec

KINDS = ("onnx", "torchscript", "python")


class TypedVariant(Protocol):
    def infer(self, items: list[Item]) -> list[Item]: ...


def same_shapes(items: list[Item], names: list[str]) -> list[list[int]]:
    """Indices of ``items`` grouped by the shapes of their tensors ``names``: each group stacks into
    one batch."""
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(tuple(np.shape(item[n]) for n in names), []).append(i)
    return list(groups.values())


def _module(kind: str) -> Any:
    if kind == "onnx":
        from jigsawserve.triton_backend.runners import onnx as module
    elif kind == "torchscript":
        from jigsawserve.triton_backend.runners import torchscript as module
    elif kind == "python":
        from jigsawserve.triton_backend.runners import python as module
    else:
        raise ValueError(f"unknown typed variant kind {kind!r} (known: {', '.join(KINDS)})")
    return module


def build(runtime: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> TypedVariant:
    """Load the variant ``runtime`` describes (model paths already absolute) for these tensors."""
    params = dict(runtime)
    return _module(params.pop("kind")).build(params, inputs, outputs)


def check(runtime: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """ValueError (naming the runtime field and file) when the variant cannot load or does not take
    ``inputs`` and give ``outputs``."""
    params = dict(runtime)
    _module(params.pop("kind")).check(params, inputs, outputs)
