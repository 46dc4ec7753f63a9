"""A TorchScript program as a typed variant: ``forward`` takes the task's declared inputs in their order
(batched), and returns its outputs in their order (a tensor, a tuple, or a dict by name). On the GPU
when torch sees one."""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jigsawserve.triton_backend.runners import same_shapes
from jigsawserve.triton_backend.tensors import DTYPES, Item, TensorSpec, conform


def _load(path: str) -> tuple[Any, Any]:
    try:
        import torch
    except ImportError:
        raise ValueError("torchscript variants need torch (pip install torch)") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such TorchScript file: {path}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.jit.load(path, map_location=device).eval(), device


class TorchScriptVariant:
    def __init__(self, model: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.inputs, self.outputs = inputs, outputs
        self.module, self.device = _load(model)

    def _split(self, out: Any) -> list[Any]:
        if isinstance(out, dict):
            return [out[s.name] for s in self.outputs]
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def infer(self, items: list[Item]) -> list[Item]:
        import torch
        results: list[Item] = [{} for _ in items]
        for group in same_shapes(items, [s.name for s in self.inputs]):
            args = [torch.from_numpy(np.stack([np.asarray(items[i][s.name], DTYPES[s.dtype]) for i in group]))
                    .to(self.device) for s in self.inputs]
            with torch.inference_mode():
                outs = self._split(self.module(*args))
            for spec, out in zip(self.outputs, outs):
                values = out.detach().cpu().numpy()
                for k, i in enumerate(group):
                    results[i][spec.name] = conform(spec, values[k])
        return results


def build(params: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> TorchScriptVariant:
    return TorchScriptVariant(inputs=inputs, outputs=outputs, **params)


def check(params: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    if set(params) != {"model"}:
        raise ValueError("torchscript takes one field, model (the TorchScript file)")
    try:
        module, _ = _load(str(params["model"]))
    except FileNotFoundError as exc:
        raise ValueError(f"model: {exc}") from None
    except RuntimeError as exc:
        raise ValueError(f"model: {params['model']}: torch.jit.load cannot load it: {exc}") from None
    args = [a for a in module.forward.schema.arguments if a.name != "self"]
    if len(args) != len(inputs):
        raise ValueError(f"model: {params['model']}: forward takes {len(args)} argument(s) "
                         f"({', '.join(a.name for a in args)}), the task declares {len(inputs)} input(s) "
                         f"({', '.join(s.name for s in inputs)})")
