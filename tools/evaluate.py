"""Accuracy of a typed app on a dataset with ground truth: each variant's, measured in this process
for the planner (``jigsaw profile --accuracy``), and the served answers' (``jigsaw demo``).

A dataset is a directory with ``labels.jsonl``: per line one request, ``{"inputs": {NAME: FILE},
"label": ...}`` (files as ``jigsawserve.orchestrator.workload.typed_client.tensor_from_file`` reads them); the app's
``evaluation.score`` (module:function) scores one answer against its label, in [0, 1], and
``evaluation.make`` writes such a directory.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.typed import VARIANT_SUFFIX, resolve_files
from jigsawserve.triton_backend import runners
from jigsawserve.triton_backend.adapters import apply, import_object, resolve
from jigsawserve.triton_backend.tensors import Item, empty, from_wire
from jigsawserve.orchestrator.workload.typed_client import read_dataset



@dataclass
class Sample:
    tensors: dict[str, np.ndarray]  # one request's, [1, *shape]
    label: Any


def _evaluation(app: Any) -> dict[str, Any]:
    evaluation = dict(app.typed.evaluation) if app.typed else {}
    if not evaluation:
        raise InputError(f"app {app.name} has no evaluation (metric, make, score): no ground truth to measure")
    return evaluation


def make_dataset(app: Any, out: str | Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` requests with their labels to ``out`` with the app's ``evaluation.make``."""
    evaluation = _evaluation(app)
    return Path(import_object(evaluation["make"], evaluation.get("path"))(out, n, seed))


def scorer(app: Any) -> tuple[str, Callable[[Any, dict[str, np.ndarray]], float]]:
    """``(metric name, score(label, answer))`` of the app."""
    evaluation = _evaluation(app)
    return evaluation["metric"], import_object(evaluation["score"], evaluation.get("path"))


def load_dataset(app: Any, path: str | Path) -> list[Sample]:
    return [Sample(tensors, label) for tensors, label in read_dataset(list(app.typed.inputs), path)]


class LocalPipeline:
    """The typed app run in this process with one variant per task: the variants and adapters a server
    runs, without Triton. Variants are loaded once per (task, variant) and kept."""

    def __init__(self, app: Any) -> None:
        self.app, self.typed = app, app.typed
        self._variants: dict[tuple[str, str], Any] = {}
        self.adapters = {key: resolve(spec) for key, spec in self.typed.adapters.items()}

    def variant(self, task: str, name: str) -> Any:
        if (task, name) not in self._variants:
            where = f"tasks.{task}.variants.{name}.runtime"
            runtime = resolve_files(self.app.task(task).variant(name).runtime, where)
            self._variants[task, name] = runners.build(runtime, list(self.typed.task_inputs[task]),
                                                       list(self.typed.task_outputs[task]))
        return self._variants[task, name]

    def __call__(self, tensors: dict[str, np.ndarray], choice: dict[str, str]) -> tuple[dict[str, np.ndarray],
                                                                                          dict[str, list[Item]]]:
        """The response (without the request dimension) to one request, and each task's items."""
        given = {s.name: from_wire(s, tensors[s.name]) for s in self.typed.inputs}
        items: dict[str, list[Item]] = {}
        answered: dict[str, list[Item]] = {}
        for task in self.app.tasks:
            name = task.name
            parents = self.app.parents(name)
            if not parents:
                items[name] = apply(self.adapters.get(name, resolve(None))[1], given, {},
                                    list(self.typed.task_inputs[name]))
            else:
                items[name] = [child for e in parents for item, out in zip(items[e.src], answered[e.src])
                               for child in apply(self.adapters.get(f"{e.src}->{name}", resolve(None))[1], item, out,
                                                  list(self.typed.task_inputs[name]))]
            answered[name] = self.variant(name, choice[name]).infer(items[name]) if items[name] else []
        response = {}
        for o in self.typed.outputs:
            rows = [np.asarray(out[o.output]) for out in answered[o.task]]
            response[o.name] = np.stack(rows) if rows else empty(o.spec, ())[None][:0]
        for sink in {o.task for o in self.typed.outputs}:
            response[f"{sink}{VARIANT_SUFFIX}"] = np.array([choice[sink].encode()] * len(answered[sink]), np.object_)
        return response, items


def reference_choice(app: Any) -> dict[str, str]:
    """Each task's most accurate variant by the spec (the first of equals)."""
    return {t.name: t.best.name for t in app.tasks}


def variant_accuracy(app: Any, samples: list[Sample], progress: Callable[[str], None] = print) -> list[dict]:
    """Per task and variant, the app's metric over ``samples`` with that variant at its task and the
    reference variant (``reference_choice``) at every other task."""
    metric, score = scorer(app)
    pipeline, reference = LocalPipeline(app), reference_choice(app)
    rows = []
    for task in app.tasks:
        for v in task.variants:
            choice = {**reference, task.name: v.name}
            value = float(np.mean([score(s.label, pipeline(s.tensors, choice)[0]) for s in samples]))
            rows.append({"task": task.name, "variant": v.name, "metric": metric, "accuracy": round(value, 4),
                         "requests": len(samples), "others": ";".join(f"{t}={x}" for t, x in choice.items()
                                                                     if t != task.name)})
            progress(f"{task.name:8s} {v.name:14s} {metric} {value:.4f} (others: {rows[-1]['others']})")
    return rows


def write_accuracy(rows: list[dict], out: str | Path) -> None:
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def task_samples(app: Any, samples: list[Sample], limit: int = 16) -> dict[str, list[Item]]:
    """Up to ``limit`` real items of every task (the reference variants' path through ``samples``): what
    the profiler times each variant on."""
    pipeline, choice = LocalPipeline(app), reference_choice(app)
    found: dict[str, list[Item]] = {t.name: [] for t in app.tasks}
    for s in samples:
        for task, items in pipeline(s.tensors, choice)[1].items():
            found[task].extend(items[:max(0, limit - len(found[task]))])
        if all(len(v) >= limit for v in found.values()):
            break
    return found
