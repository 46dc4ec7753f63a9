"""Adapters: the step that turns one parent item (its inputs and the outputs a variant gave) into the
child task's items. Their number is the edge's fan-out for that item, so the data decides it.

An adapter is ``fn(inputs, outputs, **args) -> list[Item]``; the app spec names a built-in below or a
``module:function`` (imported from ``path`` when given). A source task's adapter gets the request's
tensors as ``inputs`` and no outputs. The graph keeps the child's declared inputs of each item it returns
and checks their types; an exception fails that request only, with its message.
"""
from __future__ import annotations

import importlib
import io
import sys
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from jigsawserve.triton_backend.tensors import Item, TensorSpec, conform

Adapter = Callable[[Item, Item], list[Item]]


def _text(value: np.ndarray) -> str:
    raw = value.reshape(-1)[0] if value.size else b""
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def passthrough(inputs: Item, outputs: Item, map: Mapping[str, str] | None = None) -> list[Item]:  # noqa: A002
    """One child item: the parent's inputs and outputs (an output wins over an input of the same name),
    ``map`` naming a child input after the parent tensor it takes."""
    merged = {**inputs, **outputs}
    item = dict(merged)
    for child_name, parent_name in (map or {}).items():
        if parent_name not in merged:
            raise KeyError(f"map: the parent has no tensor {parent_name!r} (it has {', '.join(sorted(merged))})")
        item[child_name] = merged[parent_name]
    return [item]


def decode_image(inputs: Item, outputs: Item, input: str = "IMAGE", output: str = "IMAGE",  # noqa: A002
                 mode: str = "RGB") -> list[Item]:
    """An encoded image (BYTES: PNG, JPEG, ...) as one UINT8 [height, width, channels] frame."""
    raw = inputs[input].reshape(-1)
    if raw.size != 1 or not isinstance(raw[0], bytes):
        raise ValueError(f"{input} must hold one encoded image (BYTES), got {raw.size} element(s)")
    try:
        with Image.open(io.BytesIO(raw[0])) as img:
            frame = np.asarray(img.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        what = "not an image format PIL reads" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ValueError(f"{input} is not a decodable image: {len(raw[0])} bytes starting {raw[0][:8]!r}, "
                         f"{what}") from None
    return [{output: frame if frame.ndim == 3 else frame[..., None]}]


def _quad_crop(img: Image.Image, quad: np.ndarray) -> Image.Image:
    """The quadrilateral (top-left, top-right, bottom-right, bottom-left) warped to an upright rectangle."""
    tl, tr, br, bl = quad.astype(np.float64)
    width = int(round(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))))
    height = int(round(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))))
    if width < 1 or height < 1:
        raise ValueError(f"box {quad.tolist()} is empty")
    # PIL's QUAD data: upper-left, lower-left, lower-right, upper-right corners of the source
    data = (*tl, *bl, *br, *tr)
    return img.transform((width, height), Image.Transform.QUAD, data, Image.Resampling.BICUBIC)


def crop_boxes(inputs: Item, outputs: Item, image: str = "IMAGE", boxes: str = "BOXES", scores: str | None = None,
               min_score: float = 0.0, labels: str | None = None, keep: list[Any] | None = None,
               output: str = "IMAGE", rotate_tall: float | None = None) -> list[Item]:
    """One child item per detected box: the parent's ``image`` cropped to it. Boxes are [n, 4]
    (x0, y0, x1, y1) or [n, 4, 2] quadrilaterals (top-left, top-right, bottom-right, bottom-left);
    those scoring under ``min_score`` (output ``scores``) or whose label (output ``labels``) is not in
    ``keep`` are skipped. ``rotate_tall``: a crop taller than this times its width is turned upright
    by 90 degrees (vertical text lines)."""
    frame = inputs[image] if image in inputs else outputs[image]
    found = np.asarray(outputs[boxes], dtype=np.float64)
    if found.size == 0:
        return []
    if not (found.ndim == 2 and found.shape[1] == 4 or found.ndim == 3 and found.shape[1:] == (4, 2)):
        raise ValueError(f"{boxes} must be [n, 4] or [n, 4, 2] boxes, got shape {list(found.shape)}")
    chosen = np.ones(len(found), dtype=bool)
    if scores is not None:
        chosen &= np.asarray(outputs[scores]).reshape(-1) >= min_score
    if labels is not None and keep is not None:
        chosen &= np.isin(np.asarray(outputs[labels]).reshape(-1), keep)
    img = Image.fromarray(frame.squeeze(-1) if frame.ndim == 3 and frame.shape[-1] == 1 else frame)
    crops = []
    for box in found[chosen]:
        if box.ndim == 1:
            x0, y0, x1, y1 = box
            box = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        crop = _quad_crop(img, box)
        if rotate_tall and crop.height > rotate_tall * crop.width:
            crop = crop.transpose(Image.Transpose.ROTATE_90)
        crops.append({output: np.asarray(crop, dtype=np.uint8).reshape(crop.height, crop.width, -1)})
    return crops


def resize_normalize(inputs: Item, outputs: Item, size: list[int], input: str = "IMAGE",  # noqa: A002
                     output: str = "IMAGE", mean: list[float] | None = None, std: list[float] | None = None,
                     scale: float = 1 / 255, layout: str = "CHW") -> list[Item]:
    """One FP32 item: the UINT8 image resized to ``size`` [height, width], scaled, less ``mean``, over
    ``std`` (per channel), in ``layout`` CHW or HWC."""
    frame = {**inputs, **outputs}[input]
    img = Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame)
    height, width = size
    x = np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) * scale
    x = x.reshape(height, width, -1)
    x = (x - np.asarray(mean or 0.0, np.float32)) / np.asarray(std or 1.0, np.float32)
    if layout not in ("CHW", "HWC"):
        raise ValueError(f"layout must be CHW or HWC, got {layout!r}")
    return [{output: np.ascontiguousarray(x.transpose(2, 0, 1) if layout == "CHW" else x, dtype=np.float32)}]


def split_text(inputs: Item, outputs: Item, input: str = "TEXT", output: str = "TEXT",  # noqa: A002
               sep: str | None = None) -> list[Item]:
    """One child item per non-empty piece of the text split at ``sep`` (default: any whitespace)."""
    text = _text({**inputs, **outputs}[input])
    return [{output: np.array(piece.strip().encode(), dtype=np.object_)}
            for piece in text.split(sep) if piece.strip()]


BUILTINS: dict[str, Callable[..., list[Item]]] = {
    "pass": passthrough, "decode_image": decode_image, "crop_boxes": crop_boxes,
    "resize_normalize": resize_normalize, "split_text": split_text,
}


def import_object(ref: str, path: str | None = None) -> Any:
    """The object ``module:name`` names, its module imported with ``path`` first on ``sys.path``."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{ref!r} is not of the form module:name")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name} ({getattr(module, '__file__', '?')}) has no {attr!r}") from None


def resolve(spec: Mapping[str, Any] | None) -> tuple[str, Adapter]:
    """``(name, adapter)`` of an adapter spec ``{use: NAME | module:function, path: DIR, <args>}``;
    None is the pass-through."""
    spec = dict(spec or {"use": "pass"})
    name, path = spec.pop("use"), spec.pop("path", None)
    fn = BUILTINS[name] if name in BUILTINS else import_object(name, path)
    if not callable(fn):
        raise ValueError(f"adapter {name!r} is not callable")
    return name, lambda inputs, outputs: list(fn(inputs, outputs, **spec))


def apply(adapter: Adapter, inputs: Item, outputs: Item, child: list[TensorSpec]) -> list[Item]:
    """The child items ``adapter`` makes of one parent item, each narrowed to the child's declared inputs
    and checked against them; ValueError says which tensor is missing or of the wrong type or shape."""
    made = adapter(inputs, outputs)
    items = []
    for k, item in enumerate(made):
        missing = [s.name for s in child if s.name not in item]
        if missing:
            raise ValueError(f"child item {k} lacks {', '.join(missing)} (it has {', '.join(sorted(item)) or 'nothing'})")
        picked = {s.name: conform(s, np.asarray(item[s.name])) for s in child}
        problems = [p for s in child if (p := s.problem(picked[s.name]))]
        if problems:
            raise ValueError(f"child item {k}: " + "; ".join(problems))
        items.append(picked)
    return items
