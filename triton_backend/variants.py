"""Variant implementations a runner model can execute, selected by the spec's ``runtime.kind``."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]
# the runners' metric of the rows they padded their batches with (jigsawserve.orchestrator.loop.controller reads it)
PADDING_METRIC = "jigsaw_runner_padding_rows_total"


class NumpyMlp:
    """A CPU stand-in model: ``depth`` dense tanh layers of ``hidden`` units, ``in_width`` -> ``width``.
    ``delay_ms`` (+ ``delay_per_item_ms`` per row) emulates device time without using a CPU core,
    so that a 2-core test machine can host many instances with realistic service times. ``pad_to``:
    batch sizes it runs at, as a GPU runner that captured only those (a batch is timed at the next
    size up and ``padded_rows`` counts the rows added)."""

    def __init__(self, width: int, in_width: int, depth: int = 2, hidden: int = 64, seed: int = 0,
                 delay_ms: float = 0.0, delay_per_item_ms: float = 0.0, pad_to: list[int] | None = None) -> None:
        rng = np.random.default_rng(seed)
        dims = [in_width] + [hidden] * max(depth - 1, 0) + [width]
        self.weights = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
                        for a, b in zip(dims[:-1], dims[1:])]
        self.delay_ms, self.delay_per_item_ms = delay_ms, delay_per_item_ms
        self.pad_to = sorted(pad_to or [])
        self.padded_rows = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = len(x)
        if self.pad_to:
            most = self.pad_to[-1]  # chunks of the largest size, the last one padded (as zoo.GraphRunner)
            rows = sum(next(b for b in self.pad_to if b >= min(most, len(x) - i)) for i in range(0, len(x), most))
            self.padded_rows += rows - len(x)
        if self.delay_ms or self.delay_per_item_ms:
            time.sleep((self.delay_ms + self.delay_per_item_ms * rows) / 1000)
        for w in self.weights:
            x = np.tanh(x @ w)
        return x.astype(np.float32)


def torch_model(width: int, in_width: int, arch: str, max_batch: int = 1, dtype: str = "float16",
                seed: int = 0, sizes: list[int] | None = None) -> Runner:
    """A real architecture on the GPU as captured CUDA graphs (triton_backend/zoo.py; imports torch). Rows
    are descriptors of ``width`` features (``in_width`` is the same); the architecture fixes its own input.
    ``sizes``: the batch sizes captured (default: ``zoo.batch_sizes(max_batch)``)."""
    from jigsawserve.triton_backend.zoo import GraphRunner
    return GraphRunner(arch, width, max_batch, dtype=dtype, seed=seed, sizes=sizes)


KINDS: dict[str, Callable[..., Runner]] = {"numpy_mlp": NumpyMlp, "torch": torch_model}


def build(runtime: dict[str, Any], width: int, max_batch: int = 1, sizes: list[int] | None = None) -> Runner:
    """Instantiate the variant described by ``runtime`` for tensors of ``width`` features and
    batches of at most ``max_batch`` rows (a ``torch`` kind captures the batch ``sizes`` given)."""
    params = dict(runtime)
    kind = params.pop("kind", "numpy_mlp")
    if kind not in KINDS:
        raise ValueError(f"unknown variant runtime kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "torch":
        params["max_batch"] = max_batch
        if sizes:
            params["sizes"] = sizes
    return KINDS[kind](width=width, in_width=width, **params)
