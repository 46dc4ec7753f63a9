"""Ground truth for the OCR app: images of text lines rendered with PIL in a DejaVu font, with the
strings and boxes they hold, and the score of one served answer against them.

A dataset is a directory of PNG files and ``labels.jsonl``, one request per line:
``{"inputs": {"IMAGE": "0000.png"}, "label": {"lines": [{"text": ..., "box": [x0, y0, x1, y1]}]}}``.
Lines vary in size (11-30 px), grey level, position and noise, so that the variants' resolutions and
generations differ in what they read.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = Path("/usr/share/fonts/truetype/dejavu")
WORDS = ("jigsaw serve triton graph model variant slice batch camera traffic hello world detect text line "
         "latency budget accuracy cloud queue runner stage plan demand request answer pixel frame").split()


def _font(size: int, bold: bool) -> ImageFont.FreeTypeFont:
    path = FONTS / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the DejaVu fonts are needed to render the ground truth "
                                "(Debian/Ubuntu: apt-get install fonts-dejavu-core)")
    return ImageFont.truetype(str(path), size)


def _line(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]
    words = [w.upper() if rng.random() < 0.3 else w.capitalize() if rng.random() < 0.3 else w for w in words]
    if rng.random() < 0.5:
        words.append(str(rng.randint(0, 9999)))
    return " ".join(words)


def render(rng: random.Random, width: int = 800, height: int = 360) -> tuple[Image.Image, list[dict]]:
    """One image of 0-4 non-overlapping text lines and their labels, top to bottom."""
    background = rng.randint(200, 255)
    img = Image.new("RGB", (width, height), (background,) * 3)
    draw, lines, y = ImageDraw.Draw(img), [], rng.randint(8, 30)
    for _ in range(rng.choice((0, 1, 2, 3, 3, 4))):
        text, font = _line(rng), _font(rng.randint(11, 30), rng.random() < 0.3)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        if y + (y1 - y0) > height - 8 or x1 - x0 > width - 16:
            break
        x = rng.randint(8, width - 8 - (x1 - x0))
        ink = rng.randint(0, background - 120)
        draw.text((x - x0, y - y0), text, fill=(ink,) * 3, font=font)
        lines.append({"text": text, "box": [x, y, x + x1 - x0, y + y1 - y0]})
        y += (y1 - y0) + rng.randint(12, 40)
    noisy = np.asarray(img, np.float32) + np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(0, 12),
                                                                                                (height, width, 1))
    img = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    return (img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8))), lines)


def make(out: str | Path, n: int = 40, seed: int = 0) -> Path:
    """Write ``n`` rendered images and their labels to ``out``."""
    out, rng = Path(out), random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.jsonl", "w") as f:
        for i in range(n):
            img, lines = render(rng)
            img.save(out / f"{i:04d}.png")
            f.write(json.dumps({"inputs": {"IMAGE": f"{i:04d}.png"}, "label": {"lines": lines}}) + "\n")
    return out


def _distance(a: str, b: str) -> int:
    """Levenshtein distance."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def texts(answer: dict[str, np.ndarray]) -> list[str]:
    """The lines the served answer read, in its order (top to bottom)."""
    return [t.decode() if isinstance(t, bytes) else str(t) for t in answer["TEXT"].reshape(-1)]


def score(label: dict, answer: dict[str, np.ndarray]) -> float:
    """Character accuracy of one answer: 1 - edit distance / length of the true text (lines joined with
    a newline, top to bottom), at least 0; an image without text scores 1 when nothing was read."""
    truth, read = "\n".join(line["text"] for line in label["lines"]), "\n".join(texts(answer))
    if not truth:
        return 1.0 if not read else 0.0
    return max(0.0, 1.0 - _distance(read, truth) / len(truth))


def exact_lines(label: dict, answer: dict[str, np.ndarray]) -> tuple[int, int]:
    """(true lines read exactly, true lines): a line counts once per exact reading."""
    read = texts(answer)
    hits = 0
    for line in label["lines"]:
        if line["text"] in read:
            read.remove(line["text"])
            hits += 1
    return hits, len(label["lines"])
