"""The report's fan-out part: per edge and parent variant, the factor the app spec gave, the one the plans
used last, the one measured, and after how many controller intervals the refinement settled (from the
controller's ``fanout`` events in events.jsonl, ``jigsawserve.orchestrator.loop.controller``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fanout_summary(events_path: str | Path) -> list[dict[str, Any]] | None:
    """One row per (edge, parent variant) the controller measured, in first-seen order; None when it
    measured none (an untyped app, or too few items). ``converged_interval``: the controller interval
    (1-based, counted from its first) of the first measurement that agreed with the plan's factor after
    the last refinement; None when the last measurement still refined."""
    path = Path(events_path)
    if not path.is_file():
        return None
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    intervals = 0
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line: orchestrator/reporting/report.py warns about it
        if doc.get("kind") == "interval":
            intervals += 1
        if doc.get("kind") != "fanout":
            continue
        key = (doc["edge"], doc["variant"])
        row = rows.setdefault(key, {"edge": doc["edge"], "variant": doc["variant"], "spec": doc["planned"],
                                    "refinements": 0, "converged_interval": None})
        row.update(measured=doc["measured"], parents=doc["parents"], children=doc["children"])
        if doc["refined"]:
            row["refinements"] += 1
            row["planned"], row["converged_interval"] = doc["measured"], None
        else:
            row["planned"] = doc["planned"]
            if row["converged_interval"] is None:
                row["converged_interval"] = intervals
    return list(rows.values()) or None


def fanout_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    """The fan-out rows as the report's text lines."""
    return [f"  fan-out {r['edge']} after {r['variant']}: spec {r['spec']:g}, measured {r['measured']:.3f} over "
            f"{r['parents']:.0f} items, planned last {r['planned']:g} ({r['refinements']} refinement(s); "
            + (f"settled at interval {r['converged_interval']})" if r["converged_interval"] else "not settled)")
            for r in rows or []]
