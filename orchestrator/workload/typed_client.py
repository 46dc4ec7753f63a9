"""Clients' side of a typed app: files as the request's tensors, and the response's tensors per item.

A file becomes a tensor by the input's declared type: BYTES sends the file's bytes as they are (an
encoded image, a text file), a UINT8 [-1, -1, 3] (or [-1, -1, 1]) input the image decoded here with PIL,
any other type a ``.npy`` array. What is sent is ``[1, *shape]`` (one request; a scalar is [1, 1]).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.typed import VARIANT_SUFFIX
from jigsawserve.triton_backend.tensors import DTYPES, TensorSpec



def input_specs(client: grpcclient.InferenceServerClient, model: str) -> list[TensorSpec]:
    """The model's inputs as the server declares them (per request, without the batch dimension)."""
    meta = client.get_model_metadata(model, as_json=True)
    return [TensorSpec(i["name"], i["datatype"], tuple(int(d) for d in i["shape"][1:])) for i in meta["inputs"]]


def tensor_from_file(spec: TensorSpec, path: str | Path) -> np.ndarray:
    """The file at ``path`` as one request's ``spec`` tensor; InputError says why it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--input {path}: no such file")
    if spec.dtype == "BYTES":
        return np.array([[path.read_bytes()]], dtype=np.object_)
    if spec.dtype == "UINT8" and len(spec.shape) == 3 and spec.shape[2] in (1, 3, -1):
        try:
            with Image.open(path) as img:
                frame = np.asarray(img.convert("L" if spec.shape[2] == 1 else "RGB"), np.uint8)
        except OSError as exc:
            raise InputError(f"--input {path}: not an image PIL can read ({exc})") from None
        return frame.reshape(1, frame.shape[0], frame.shape[1], -1)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--input {path}: input {spec.name} is {spec.dtype} {list(spec.shape)}: give a .npy "
                         f"array ({exc})") from None
    return array.astype(DTYPES[spec.dtype])[None]


def file_requests(specs: dict[str, TensorSpec], files: list[str] | tuple[str, ...], model: str) -> list[dict[str, str]]:
    """``--input`` values as requests' files: with one model input each FILE (or NAME=FILE) is a request,
    with several the NAME=FILE pairs make one."""
    if len(specs) == 1:
        (name,) = specs
        return [{name: f.partition("=")[2] if f.startswith(f"{name}=") else f} for f in files]
    pairs = dict(f.partition("=")[::2] for f in files)
    if set(pairs) != set(specs):
        raise InputError(f"--input: model {model} takes {', '.join(specs)}: give NAME=FILE for each")
    return [pairs]


def payloads(client: grpcclient.InferenceServerClient, model: str, dataset: str | Path | None,
             files: list[str] | tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """Requests' tensors for a typed app's load (``jigsaw load``): a dataset's requests, then the files'."""
    specs = {s.name: s for s in input_specs(client, model)}
    out = [tensors for tensors, _ in read_dataset(list(specs.values()), dataset)] if dataset else []
    out += [{n: tensor_from_file(specs[n], f) for n, f in given.items()} for given in file_requests(specs, files, model)]
    return out


def read_dataset(specs: list[TensorSpec], path: str | Path) -> list[tuple[dict[str, np.ndarray], Any]]:
    """Each request of a dataset directory (``labels.jsonl``: per line ``{"inputs": {NAME: FILE},
    "label": ...}``) as its tensors (``tensor_from_file``) and label; InputError names the file and line."""
    path = Path(path)
    labels = path / "labels.jsonl"
    if not labels.is_file():
        raise InputError(f"{path}: not a dataset (no labels.jsonl)")
    by_name = {s.name: s for s in specs}
    out = []
    for i, line in enumerate(labels.read_text().splitlines()):
        doc = json.loads(line)
        if set(doc["inputs"]) != set(by_name):
            raise InputError(f"{labels}:{i + 1}: inputs {sorted(doc['inputs'])}, the app takes {sorted(by_name)}")
        out.append(({n: tensor_from_file(by_name[n], path / f) for n, f in doc["inputs"].items()}, doc.get("label")))
    return out


def infer(client: grpcclient.InferenceServerClient, model: str, tensors: dict[str, np.ndarray],
          timeout_s: float | None = None) -> dict[str, np.ndarray]:
    """One request; the response's tensors by name, without the request dimension."""
    inputs = []
    for name, value in tensors.items():
        dtype = "BYTES" if value.dtype == np.object_ else next(k for k, v in DTYPES.items() if np.dtype(v) == value.dtype)
        inp = grpcclient.InferInput(name, list(value.shape), dtype)
        inp.set_data_from_numpy(value)
        inputs.append(inp)
    result = client.infer(model, inputs, client_timeout=timeout_s)
    return {o["name"]: result.as_numpy(o["name"])[0] for o in result.get_response(as_json=True)["outputs"]}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.item() if isinstance(value, np.generic) else value


def sink_outputs(client: grpcclient.InferenceServerClient, model: str) -> dict[str, list[str]]:
    """Per sink task of the served app, the response tensors it fills (from the graph model's config)."""
    config = client.get_model_config(model, as_json=True)["config"]
    settings = json.loads(config["parameters"]["jigsaw"]["string_value"])
    if "typed" not in settings:
        raise InputError(f"model {model} is not a typed jigsaw app (it takes INPUT [1, items, width])")
    out: dict[str, list[str]] = {sink: [] for sink in settings["typed"]["variants"]}
    for o in settings["typed"]["outputs"]:
        out[o["task"]].append(o["name"])
    return out


def answers(response: dict[str, np.ndarray], sinks: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Per sink, one dict per item: its outputs and the variant that answered it (``variant``)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for sink, names in sinks.items():
        variants = response[f"{sink}{VARIANT_SUFFIX}"]
        out[sink] = [{**{n: _plain(np.asarray(response[n][i]).tolist()) for n in names},
                      "variant": _plain(variants[i])} for i in range(len(variants))]
    return out
