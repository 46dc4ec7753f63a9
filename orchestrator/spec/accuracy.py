"""Measured variant accuracies over the spec's cited ones (``jigsaw plan --accuracy CSV``).

A spec's accuracies are often a model card's, measured on another dataset; ``jigsaw profile APP --accuracy
DATASET`` measures each variant on the app's own ground truth. This puts those numbers into the app's
document (``accuracy``, and ``source`` saying where each came from) and re-parses it: the plan carries the
document (``app_spec``), so it says which accuracy each variant was planned with.
"""
from __future__ import annotations

import copy
import csv
from pathlib import Path

from .appspec import AppSpec, parse_app
from ..errors import InputError

COLUMNS = ("task", "variant", "accuracy")


def read_accuracy(path: str | Path, app: AppSpec) -> dict[tuple[str, str], tuple[float, str]]:
    """(task, variant) -> (accuracy, what was measured) from a CSV with at least ``COLUMNS`` (the file
    ``jigsaw profile --accuracy`` writes); InputError names the file, line and field."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
            fields = set(rows[0]) if rows else set()
    except OSError as exc:
        raise InputError(f"--accuracy {path}: cannot read ({exc.strerror})") from None
    missing = [c for c in COLUMNS if c not in fields]
    if not rows or missing:
        raise InputError(f"--accuracy {path}: expected a header with {', '.join(COLUMNS)}; "
                         + (f"missing {', '.join(missing)}" if rows else "the file has no rows"))
    variants = {(t.name, v.name) for t in app.tasks for v in t.variants}
    out = {}
    for line, row in enumerate(rows, 2):
        key, where = (row["task"], row["variant"]), f"--accuracy {path} line {line}"
        if key not in variants:
            raise InputError(f"{where}: {key[0]}/{key[1]} is not a variant of app {app.name}")
        try:
            value = float(row["accuracy"])
        except ValueError:
            raise InputError(f"{where}: accuracy: expected a number, got {row['accuracy']!r}") from None
        if not 0 < value <= 1:
            raise InputError(f"{where}: accuracy {value} is not in (0, 1] (a measured fraction)")
        what = ", ".join(f"{k} {row[k]}" for k in ("metric", "requests") if row.get(k))
        out[key] = (value, what)
    return out


def with_measured(app: AppSpec, path: str | Path) -> tuple[AppSpec, list[str]]:
    """``app`` with the accuracies measured in ``path`` in place of the cited ones, and the variants that
    got one (``task/variant``); every variant's ``source`` says where its accuracy came from."""
    measured = read_accuracy(path, app)
    doc = copy.deepcopy(dict(app.doc))
    for (task, variant), (value, what) in measured.items():
        body = doc["tasks"][task]["variants"][variant]
        body = dict(body) if isinstance(body, dict) else {}
        cited = body.get("accuracy", app.task(task).variant(variant).raw_accuracy)
        body.update(accuracy=value, source=f"measured: {Path(path).name}" + (f" ({what})" if what else "")
                    + f"; cited {cited}" + (f" ({body['source']})" if body.get("source") else ""))
        doc["tasks"][task]["variants"][variant] = body
    try:
        return parse_app(doc, origin=f"app {app.name} with --accuracy {path}"), [f"{t}/{v}" for t, v in measured]
    except InputError as exc:
        hint = " (measure every variant of a task whose cited accuracies are percentages)" if "mixes" in str(exc) else ""
        raise InputError(f"--accuracy {path}: {exc}{hint}") from None
