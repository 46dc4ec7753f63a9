"""An ONNX model as a typed variant (onnxruntime: CUDA where the installed build has it, else CPU).

The model's inputs and outputs are the task's declared tensors with a leading batch dimension, by name
(``bind`` maps a declared name to the model's own where they differ)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jigsawserve.triton_backend.runners import same_shapes
from jigsawserve.triton_backend.tensors import DTYPES, Item, TensorSpec, conform

ORT_TYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(bool)": "BOOL",
             "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
             "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
             "tensor(int64)": "INT64", "tensor(string)": "BYTES"}


def providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it, the CPU always."""
    import onnxruntime as ort
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


def session(path: str, threads: int = 0) -> Any:
    """An inference session of the model at ``path``; ``threads`` bounds its intra-op threads (0: onnxruntime's
    default, every core), so that several runner processes on one CPU do not oversubscribe it."""
    import onnxruntime as ort
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such ONNX model file: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1 if threads else 0
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=providers())


def _dims(dims: list[Any]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


def problems(sess: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], bind: Mapping[str, str]) -> list[str]:
    """How the session's signature differs from the declared tensors (batched: one more leading dimension)."""
    found = []
    have = {"input": {a.name: a for a in sess.get_inputs()}, "output": {a.name: a for a in sess.get_outputs()}}
    for role, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            name = bind.get(spec.name, spec.name)
            arg = have[role].get(name)
            if arg is None:
                found.append(f"the model has no {role} {name!r} (its {role}s: {', '.join(have[role])}) for the "
                             f"declared {spec.name}")
                continue
            dtype, dims = ORT_TYPES.get(arg.type, arg.type), _dims(arg.shape)
            if dtype != spec.dtype:
                found.append(f"{role} {name!r} is {dtype}, the task declares {spec.name} {spec.dtype}")
            if len(dims) != len(spec.shape) + 1 or any(m not in (-1, d) and d != -1
                                                       for m, d in zip(dims[1:], spec.shape)):
                found.append(f"{role} {name!r} has shape {dims} (batch first), the task declares {spec.name} "
                             f"{list(spec.shape)} per item")
    fed = {bind.get(s.name, s.name) for s in inputs}
    found += [f"model input {n!r} is not fed by any declared input" for n in have["input"] if n not in fed]
    return found


class OnnxVariant:
    def __init__(self, model: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 bind: Mapping[str, str] | None = None, threads: int = 0) -> None:
        self.inputs, self.outputs, self.bind = inputs, outputs, dict(bind or {})
        self.session = session(model, threads)
        self.out_names = [self.bind.get(s.name, s.name) for s in outputs]

    def infer(self, items: list[Item]) -> list[Item]:
        """Items of equal shapes run as one batch; a ragged batch as one run per shape."""
        results: list[Item] = [{} for _ in items]
        for group in same_shapes(items, [s.name for s in self.inputs]):
            feed = {self.bind.get(s.name, s.name): np.stack([np.asarray(items[i][s.name], DTYPES[s.dtype])
                                                             for i in group]) for s in self.inputs}
            outs = self.session.run(self.out_names, feed)
            for spec, out in zip(self.outputs, outs):
                for k, i in enumerate(group):
                    results[i][spec.name] = conform(spec, np.asarray(out[k]))
        return results


def build(params: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> OnnxVariant:
    return OnnxVariant(inputs=inputs, outputs=outputs, **params)


def check(params: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    unknown = sorted(set(params) - {"model", "bind", "threads"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (onnx takes model, bind, threads)")
    if "model" not in params:
        raise ValueError("model: required (the ONNX file)")
    try:
        sess = session(str(params["model"]))
    except FileNotFoundError as exc:
        raise ValueError(f"model: {exc}") from None
    except Exception as exc:  # onnxruntime's own errors: not an ONNX file, unsupported operators
        raise ValueError(f"model: {params['model']}: onnxruntime cannot load it: {exc}") from None
    found = problems(sess, inputs, outputs, params.get("bind") or {})
    if found:
        raise ValueError(f"model: {params['model']}: " + "; ".join(found))
