"""A plan: instance counts per (task, variant, segment, batch), routing shares and its metrics."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .candidates import worst_case_ms
from ..errors import InputError


def write_json(path: str | Path, doc: dict[str, Any], what: str) -> None:
    """``doc`` as indented JSON at ``path``, making its folder; InputError naming ``what`` when it cannot."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise InputError(f"{out}: cannot write {what} ({exc.strerror})") from None


@dataclass(frozen=True)
class Entry:
    """``count`` segments of ``mig`` slices, each running ``mps`` processes of ``variant`` at ``batch``."""

    task: str
    variant: str
    mig: int
    mps: int
    batch: int
    count: int
    latency_ms: float
    throughput_rps: float
    share: float = 0.0
    items: float = 1.0  # the most items one request brings to this task
    utilisation: float = 0.0  # the share of these instances' capacity that the plan's routing uses
    latency_model: str = "batches"
    model: str = ""  # the runner model serving it, where not the default name (render.runner_name)

    @property
    def wc_latency_ms(self) -> float:
        return worst_case_ms(self.latency_ms, self.batch, self.items, self.latency_model)


def segment_label(entry: Entry, index: int) -> str:
    """The placement label of the ``index``-th segment of ``entry``."""
    return f"{entry.task}/{entry.variant}/{entry.mig}g/mps{entry.mps}/b{entry.batch}#{index}"


@dataclass(frozen=True)
class SegmentKey:
    task: str
    variant: str
    mig: int
    mps: int
    batch: int
    index: int


def parse_label(label: str) -> SegmentKey:
    """Inverse of ``segment_label``."""
    try:
        task, variant, mig, mps, rest = label.split("/")
        batch, index = rest.split("#")
        return SegmentKey(task, variant, int(mig.rstrip("g")), int(mps[3:]), int(batch[1:]), int(index))
    except ValueError:
        raise InputError(f"placement: bad segment label {label!r}") from None


@dataclass
class Plan:
    app: str
    gpu_type: str
    features: str
    demand_rps: float
    latency_slo_ms: float
    accuracy_slo: float
    entries: list[Entry]
    routing: dict[str, dict[str, float]]
    task_demand: dict[str, float] = field(default_factory=dict)
    task_accuracy: dict[str, float] = field(default_factory=dict)
    accuracy: float = 0.0
    slices: int = 0
    gpus: int = 0
    paths: list[dict[str, Any]] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)
    solve_seconds: float = 0.0
    solver: dict[str, Any] = field(default_factory=dict)
    app_spec: dict[str, Any] = field(default_factory=dict)

    def tasks(self) -> dict[str, list[Entry]]:
        out: dict[str, list[Entry]] = {t: [] for t in self.routing}
        for e in self.entries:
            out.setdefault(e.task, []).append(e)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app, "gpu_type": self.gpu_type, "features": self.features,
            "demand_rps": self.demand_rps,
            "slo": {"latency_ms": self.latency_slo_ms, "accuracy": self.accuracy_slo},
            "tasks": {t: [{k: v for k, v in asdict(e).items() if k != "task" and (v or k != "model")} for e in es]
                      for t, es in self.tasks().items()},
            "routing": self.routing, "task_demand": self.task_demand,
            "accuracy": self.accuracy, "task_accuracy": self.task_accuracy,
            "slices": self.slices, "gpus": self.gpus, "paths": self.paths,
            "placement": self.placement, "solve_seconds": self.solve_seconds, "solver": self.solver,
            "app_spec": self.app_spec,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Plan":
        try:
            entries = [Entry(task=t, **e) for t, es in doc["tasks"].items() for e in es]
            return cls(app=doc["app"], gpu_type=doc["gpu_type"], features=doc["features"],
                       demand_rps=float(doc["demand_rps"]), latency_slo_ms=float(doc["slo"]["latency_ms"]),
                       accuracy_slo=float(doc["slo"]["accuracy"]), entries=entries, routing=doc["routing"],
                       task_demand=doc.get("task_demand", {}), task_accuracy=doc.get("task_accuracy", {}),
                       accuracy=float(doc.get("accuracy", 0.0)), slices=int(doc.get("slices", 0)),
                       gpus=int(doc.get("gpus", 0)), paths=doc.get("paths", []),
                       placement=doc.get("placement", {}), solve_seconds=float(doc.get("solve_seconds", 0.0)),
                       solver=doc.get("solver", {}), app_spec=doc.get("app_spec", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"plan JSON: missing or bad field {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the plan JSON, making the folder it goes in."""
        write_json(path, self.to_json(), "the plan")

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except OSError as exc:
            raise InputError(f"{path}: cannot read plan ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None

    def _gap_note(self) -> str:
        """How far the plan may be from the optimum: the solver's bound over its objective."""
        if self.solver.get("gap") is not None:
            return f", at most {self.solver['gap']:.2%} of its slices' worth from the optimum (the solver's bound)"
        if self.solver.get("relaxed_slices") is not None:
            return f", the relaxation needs {self.solver['relaxed_slices']:.1f} slices"
        return ""

    def _where(self) -> str:
        """What the plan takes: whole CPU slices (the ``cpu`` type: one slice a device), or slices on GPUs."""
        if self.gpu_type == "cpu":
            return f"{self.slices} whole-CPU slice{'s' * (self.slices != 1)}"
        return f"{self.slices} slices on {self.gpus} GPU{'s' * (self.gpus != 1)}"

    def summary(self) -> str:
        """A readable multi-line summary."""
        lines = [f"plan for {self.app} on {self.gpu_type} at {self.demand_rps:g} req/s, features {self.features}",
                 f"  accuracy {self.accuracy:.4f} (SLO {self.accuracy_slo:g} of max), {self._where()}, "
                 f"fragmentation {self.placement.get('fragmentation', 0):.1%}, "
                 f"solved in {self.solve_seconds:.2f} s ({self.solver.get('method', '?')}, "
                 f"{self.solver.get('status', '?')}{self._gap_note()})"]
        for task, es in self.tasks().items():
            lines.append(f"  task {task}: {self.task_demand.get(task, 0):.1f} items/s, "
                         f"accuracy {self.task_accuracy.get(task, 0):.4f}")
            for e in es:
                lines.append(f"    {e.count:3d} x {e.variant:<14} mig {e.mig} mps {e.mps} batch {e.batch:<3d} "
                             f"p95 {e.latency_ms:7.1f} ms  {e.count * e.throughput_rps:9.1f} items/s  "
                             f"share {e.share:.1%}  busy {e.utilisation:.0%}")
        reserve = self.solver.get("latency_reserve", 0.0)
        within = f", planned within {self.latency_slo_ms * (1 - reserve):.4g}" if reserve else ""
        for p in self.paths:
            lines.append(f"  path {' -> '.join(p['tasks'])}: worst-case {p['latency_ms']:.1f} ms "
                         f"(SLO {self.latency_slo_ms:g}{within}), accuracy {p['accuracy']:.4f}")
        if self.solver.get("queue_loads"):
            lines.append(f"  queueing term: every instance planned at most {max(self.solver['queue_loads']):.0%} busy, "
                         "its queue's p95 wait within the SLO (not in the worst cases above)")
        return "\n".join(lines)
