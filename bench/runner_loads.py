"""Where a runner's load time goes, from the runners' own log lines ("jigsaw runner <model> <instance>:
ready X s after its stub started (build and capture Y s; context a, imports i, build b, b1 c, b2 d, ...)",
tritonserver's log at info level; older lines lack the part after the semicolon).

    python3 bench/runner_loads.py bench/results/h200-eval/day-200s-shed/*/*-runner-loads.txt
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"jigsaw runner (\S+) \S+: ready ([\d.]+) s after its stub started \(build and capture ([\d.]+) s"
                  r"(?:; ([^)]*))?\)")
PART = re.compile(r"(\w+) ([\d.]+)")


def _matches(lines: list[str]) -> list[tuple[str, re.Match]]:
    """The runners' load lines among ``lines``, each with its architecture (the model name's third field)."""
    return [(m.group(1).split("__")[2], m) for m in map(LINE.search, lines) if m]


def summarize(lines: list[str]) -> tuple[dict[str, list[tuple[float, float]]], float]:
    """Per architecture the (ready, build) seconds of each instance, and the share of all ready time
    that went into building and capturing."""
    per_arch: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for arch, m in _matches(lines):
        per_arch[arch].append((float(m.group(2)), float(m.group(3))))
    ready = sum(r for v in per_arch.values() for r, _ in v)
    build = sum(b for v in per_arch.values() for _, b in v)
    return dict(per_arch), build / ready if ready else 0.0


def breakdown(lines: list[str]) -> dict[str, dict[str, float]]:
    """Per architecture, the mean seconds of each part of the build, from lines that carry them: the
    CUDA context, the imports of its library (where the lines have that part), the model's build, and
    the captures of all its batch sizes together."""
    per_arch: dict[str, list[dict[str, float]]] = defaultdict(list)
    for arch, m in _matches(lines):
        if m.group(4):
            parts = {k: float(v) for k, v in PART.findall(m.group(4))}
            per_arch[arch].append({
                **{k: parts[k] for k in ("context", "imports", "build") if k in parts},
                "capture": sum(v for k, v in parts.items() if k.startswith("b") and k[1:].isdigit())})
    keys = ("context", "imports", "build", "capture")
    return {arch: {k: sum(d[k] for d in v if k in d) / n for k in keys if (n := sum(k in d for d in v))}
            for arch, v in per_arch.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", help="server logs, or files of their 'jigsaw runner' lines")
    args = ap.parse_args()
    lines = [line for path in args.logs for line in Path(path).read_text().splitlines()]
    per_arch, share = summarize(lines)
    for arch, v in sorted(per_arch.items(), key=lambda kv: -max(r for r, _ in kv[1])):
        print(f"{arch}: {len(v)} instances, ready {min(r for r, _ in v):.1f}-{max(r for r, _ in v):.1f} s "
              f"after the stub started, {sum(b for _, b in v) / sum(r for r, _ in v):.0%} of it build and capture")
    rest = [r - b for v in per_arch.values() for r, b in v]
    print(f"all {len(rest)} instances: {share:.0%} of the time to ready is build and capture; the rest (the stub's "
          f"start and imports) {min(rest):.1f}-{max(rest):.1f} s")
    for arch, means in sorted(breakdown(lines).items()):
        print(f"{arch}: mean " + ", ".join(f"{k} {v:.2f} s" for k, v in means.items()))


if __name__ == "__main__":
    main()
