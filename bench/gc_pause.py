"""How long a full garbage collection stops a runner's process, before and after ``gc.freeze()``.

A runner stub holds torch, its libraries and the model (``triton_backend/zoo.py``): in a fresh
process per architecture, this builds the zoo's model (on the CPU: what counts here is the Python
objects, not where the weights live), then times full collections (best of 5) with everything
tracked and after ``gc.freeze()``, which ``triton_backend/model.py``'s runner calls once it is built.

    python3 bench/gc_pause.py [--arch resnet152 efficientnet_b4 retinanet_resnet50_fpn_v2 git-large vits] \
        [--out bench/results/gc-pause.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, sys, time
from jigsawserve.triton_backend import zoo
model = zoo.ARCHS[sys.argv[1]]().build().eval()


def full_ms():
    start = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - start) * 1000


full_ms()
row = {"tracked": len(gc.get_objects()), "full_ms": min(full_ms() for _ in range(5))}
gc.freeze()
row.update(tracked_after_freeze=len(gc.get_objects()), full_ms_after_freeze=min(full_ms() for _ in range(5)))
print(json.dumps(row))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+",
                    default=["resnet152", "efficientnet_b4", "retinanet_resnet50_fpn_v2", "git-large", "vits"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for arch in args.arch:
        done = subprocess.run([sys.executable, "-c", CHILD, arch], cwd=ROOT, capture_output=True, text=True,
                              check=True)
        row = {"arch": arch, **json.loads(done.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.node(),
                                        "processor": platform.processor(), "python": platform.python_version(),
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
