"""What every benchmark record states: the date, the machine and the exact command, in its JSON and at
the head of its markdown table."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def provenance() -> dict[str, str]:
    return {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
            "machine": f"{platform.node()} ({platform.machine()}, {len(os.sched_getaffinity(0))} cores)"}


def write(out: Path, record: dict[str, Any], table: list[str]) -> None:
    """The JSON at ``out`` and the table, headed by the provenance, beside it (.md); the table on stdout."""
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(f"{record['date']}, {record['machine']}:\n\n    {record['command']}\n\n"
                                      + "\n".join(table) + "\n")
    print("\n".join(table))
