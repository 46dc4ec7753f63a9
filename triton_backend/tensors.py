"""Typed tensors of an app's data path: Triton's data types as numpy dtypes, and the per-item checks
the graph applies to what adapters and runners hand it (Triton checks only the request's own tensors)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

# Triton's data type names (model config TYPE_<name>, client datatype <name>) -> numpy dtype
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}

Item = dict[str, np.ndarray]  # one item of a task: its tensors by name, without a batch dimension


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of one item: Triton data type and shape (-1: any size)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "TensorSpec":
        return cls(doc["name"], doc["dtype"], tuple(doc["shape"]))

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not one item of this tensor, or None when it is."""
        if not isinstance(value, np.ndarray):
            return f"{self.name} must be a numpy array, got {type(value).__name__}"
        if np.dtype(DTYPES[self.dtype]) != value.dtype and not (self.dtype == "BYTES" and value.dtype.kind in "OSU"):
            return f"{self.name} must be {self.dtype}, got {value.dtype}"
        if value.ndim != len(self.shape) or any(d not in (-1, v) for d, v in zip(self.shape, value.shape)):
            return f"{self.name} must have shape {list(self.shape)}, got {list(value.shape)}"
        return None


def to_wire(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    """One item as one request's tensor: a batch dimension of 1, a scalar as [1, 1] (Triton has no
    scalar dims; model configs declare it as dims [1])."""
    value = conform(spec, np.asarray(value))
    return value.reshape(1, *value.shape) if spec.shape else value.reshape(1, 1)


def from_wire(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    """The item in one request's tensor (the inverse of ``to_wire``)."""
    return value[0] if spec.shape else value.reshape(())


def as_bytes(value: np.ndarray) -> np.ndarray:
    """A BYTES tensor as Triton's Python backend takes it: an object array of bytes (str encoded UTF-8)."""
    if value.dtype.kind == "O" and all(isinstance(v, bytes) for v in value.flat):
        return value
    flat = [v.encode() if isinstance(v, str) else bytes(v) for v in value.flat]
    return np.array(flat, dtype=np.object_).reshape(value.shape)


def conform(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    """``value`` in the representation Triton sends for ``spec`` (BYTES as an object array of bytes)."""
    return as_bytes(value) if spec.dtype == "BYTES" else value


def empty(spec: TensorSpec, leading: tuple[int, ...]) -> np.ndarray:
    """A tensor of zero items: ``leading`` dimensions, then the spec's shape with any size taken as 0."""
    return np.zeros(leading + tuple(max(d, 0) for d in spec.shape), dtype=DTYPES[spec.dtype])
