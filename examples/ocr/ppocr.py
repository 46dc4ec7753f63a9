"""PP-OCR text detection and recognition as typed variants (``kind: python``) of examples/ocr/app.yaml.

The ONNX models are the ones the PyPI wheels ship (rapidocr-onnxruntime 1.4.4: PP-OCRv4; rapidocr
3.10.0: PP-OCRv6 small), run by the project's onnxruntime session (CUDA where present, else CPU);
the DB box decoding and the CTC decoding are rapidocr-onnxruntime's own, with the character
dictionary stored in each recognition model's metadata. Images arrive as RGB (the decode_image
adapter); PaddleOCR's models were trained on BGR.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

from jigsawserve.triton_backend.runners.onnx import session


def _expect_image_model(model: str, channels: int = 3, height: int | None = None) -> None:
    """ValueError unless ``model`` takes one float NCHW image batch of ``channels`` (and ``height``)."""
    inputs = session(model, threads=1).get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(shape) != 4 or shape[1] != channels \
            or height is not None and shape[2] not in (height, "?") and isinstance(shape[2], int):
        raise ValueError(f"{model}: expected one float image input [N, {channels}, H, W], got "
                         f"{[(i.name, i.type, i.shape) for i in inputs]}")


class Detector:
    """Text lines of an image: BOXES [n, 4, 2] (top-left, top-right, bottom-right, bottom-left, pixels of
    the image given) and SCORES [n], top to bottom. ``side`` and ``limit`` set the resolution the model
    sees (``max``: the longer side at most ``side``), which trades accuracy for time."""

    inputs = {"IMAGE": "UINT8"}
    outputs = {"BOXES": "FP32", "SCORES": "FP32"}

    @classmethod
    def check(cls, model: str, **_: object) -> None:
        _expect_image_model(model)

    def load(self, model: str, side: int = 640, limit: str = "max", threads: int = 1, thresh: float = 0.3,
             box_thresh: float = 0.5, unclip_ratio: float = 1.6) -> None:
        self.session = session(model, threads)
        self.pre = DetPreProcess(side, limit, [0.5] * 3, [0.5] * 3)
        self.post = DBPostProcess(thresh=thresh, box_thresh=box_thresh, unclip_ratio=unclip_ratio,
                                  use_dilation=True, score_mode="fast")

    def _detect(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        height, width = rgb.shape[:2]
        x = self.pre(np.ascontiguousarray(rgb[..., ::-1]))
        if x is None:
            return {"BOXES": np.zeros((0, 4, 2), np.float32), "SCORES": np.zeros(0, np.float32)}
        pred = self.session.run(None, {self.session.get_inputs()[0].name: x})[0]
        boxes, scores = self.post(pred, (height, width))
        kept = []
        for box, score in zip(boxes, scores):
            box = _clockwise(box.astype(np.float32))
            box[:, 0] = box[:, 0].clip(0, width - 1)
            box[:, 1] = box[:, 1].clip(0, height - 1)
            if np.linalg.norm(box[0] - box[1]) > 3 and np.linalg.norm(box[0] - box[3]) > 3:
                kept.append((box, score))
        kept.sort(key=lambda k: (round(float(k[0][0, 1]) / 10), float(k[0][0, 0])))  # rows, then left to right
        return {"BOXES": np.array([b for b, _ in kept], np.float32).reshape(-1, 4, 2),
                "SCORES": np.array([s for _, s in kept], np.float32)}

    def infer(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [self._detect(item["IMAGE"]) for item in items]  # images differ in size: one run each


def _clockwise(pts: np.ndarray) -> np.ndarray:
    """The four corners as top-left, top-right, bottom-right, bottom-left."""
    by_x = pts[np.argsort(pts[:, 0])]
    (tl, bl), (tr, br) = by_x[:2][np.argsort(by_x[:2, 1])], by_x[2:][np.argsort(by_x[2:, 1])]
    return np.array([tl, tr, br, bl], np.float32)


class Recognizer:
    """The text of a line crop: TEXT (UTF-8) and SCORE (mean character confidence). Each crop is resized to
    ``height`` and padded to its own width (at least ``width``); crops of one width run as one model call."""

    inputs = {"IMAGE": "UINT8"}
    outputs = {"TEXT": "BYTES", "SCORE": "FP32"}

    @classmethod
    def check(cls, model: str, height: int = 48, **_: object) -> None:
        _expect_image_model(model, height=height)
        if "character" not in session(model, threads=1).get_modelmeta().custom_metadata_map:
            raise ValueError(f"{model}: no 'character' dictionary in its metadata")

    def load(self, model: str, height: int = 48, width: int = 320, threads: int = 1) -> None:
        self.session = session(model, threads)
        self.height, self.width = height, width
        chars = self.session.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.decode = CTCLabelDecode(character=chars)

    def _normalised(self, rgb: np.ndarray, width: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        resized_w = min(width, int(math.ceil(self.height * w / max(h, 1))))
        x = cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), (max(resized_w, 1), self.height)).astype(np.float32)
        out = np.zeros((3, self.height, width), np.float32)
        out[:, :, :x.shape[1]] = (x.transpose(2, 0, 1) / 255 - 0.5) / 0.5
        return out

    def infer(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        # each crop padded to its own width, crops of one width in one model call: a crop's answer does not
        # depend on what it is batched with, so the served pipeline (the runners' dynamic batches) reads
        # what the same models read in process (padding to the batch's widest crop did not, bench/ocr_parity.py)
        widths = [max(self.width, int(self.height * i["IMAGE"].shape[1] / max(i["IMAGE"].shape[0], 1))) for i in items]
        out: list[dict[str, np.ndarray]] = [{} for _ in items]
        for width in sorted(set(widths)):
            picked = [k for k, w in enumerate(widths) if w == width]
            batch = np.stack([self._normalised(items[k]["IMAGE"], width) for k in picked])
            preds = self.session.run(None, {self.session.get_inputs()[0].name: batch})[0]
            for k, (text, score) in zip(picked, self.decode(preds)):
                out[k] = {"TEXT": np.array(text.encode(), dtype=np.object_), "SCORE": np.float32(score)}
        return out
