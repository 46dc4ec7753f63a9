"""Python-class variants and an adapter of the typed test app (app.yaml): find bright squares in an
image, then measure each square's crop. Fast and exact, so the serving tests check the data path.
Its ground truth (``make``, ``score``) draws ``SQUARES`` squares per image, more than the spec's fan-out
factor (2): the controller's fan-out refinement must find 3."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from jigsawserve.triton_backend.adapters import crop_boxes


class Finder:
    """Boxes [n, 4] (x0, y0, x1, y1) of the connected regions brighter than ``threshold``."""

    inputs = {"IMAGE": "UINT8"}
    outputs = {"BOXES": "FP32", "SCORES": "FP32"}

    def load(self, threshold: int = 128) -> None:
        self.threshold = threshold

    def infer(self, items: list[dict]) -> list[dict]:
        out = []
        for item in items:
            gray = item["IMAGE"].mean(axis=2)
            labels, _ = ndimage.label(gray > self.threshold)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)]
            scores = [float(gray[s].mean() / 255) for s in ndimage.find_objects(labels)]
            out.append({"BOXES": np.array(boxes, np.float32).reshape(-1, 4),
                        "SCORES": np.array(scores, np.float32)})
        return out


class Meter:
    """A crop's mean brightness and its size (height, width)."""

    inputs = {"IMAGE": "UINT8"}
    outputs = {"MEAN": "FP32", "SIZE": "INT32"}

    def load(self, scale: float = 1.0) -> None:
        self.scale = scale

    def infer(self, items: list[dict]) -> list[dict]:
        return [{"MEAN": np.float32(item["IMAGE"].mean() * self.scale),
                 "SIZE": np.array(item["IMAGE"].shape[:2], np.int32)} for item in items]


class Broken:
    """Declares outputs it does not give: a signature mismatch caught at plan time."""

    inputs = {"IMAGE": "UINT8"}
    outputs = {"MEAN": "FP32"}

    def load(self) -> None:
        pass

    def infer(self, items: list[dict]) -> list[dict]:
        return []


def picky_crops(inputs: dict, outputs: dict, **args) -> list[dict]:
    """crop_boxes, but an image 13 pixels wide makes it raise (the serving tests' failing adapter)."""
    if inputs["IMAGE"].shape[1] == 13:
        raise ValueError("refusing an image 13 pixels wide")
    return crop_boxes(inputs, outputs, **args)


SQUARES = 3


def make(out: str | Path, n: int, seed: int = 0) -> Path:
    """``n`` PNGs of ``SQUARES`` bright squares each on black, labelled with their sizes (height, width)."""
    out, rng = Path(out), random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img, sizes = np.zeros((48, 96, 3), np.uint8), []
        for k in range(SQUARES):
            h, w = rng.randint(4, 12), rng.randint(4, 12)
            x, y = 4 + 30 * k, rng.randint(2, 46 - h)
            img[y:y + h, x:x + w] = rng.randint(150, 255)
            sizes.append([h, w])
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        (out / f"{i:04d}.png").write_bytes(buf.getvalue())
        lines.append(json.dumps({"inputs": {"IMAGE": f"{i:04d}.png"}, "label": sorted(sizes)}))
    (out / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return out


def score(label: list, answer: dict) -> float:
    """1 when the answer's sizes are the label's, else 0."""
    return float(sorted(np.asarray(answer["SIZE"]).reshape(-1, 2).tolist()) == label)


class Shrink:
    """The image at half its size (every other row and column): the join app's second path to measure."""

    inputs = {"IMAGE": "UINT8"}
    outputs = {"IMAGE": "UINT8"}

    def load(self) -> None:
        pass

    def infer(self, items: list[dict]) -> list[dict]:
        return [{"IMAGE": np.ascontiguousarray(item["IMAGE"][::2, ::2])} for item in items]
