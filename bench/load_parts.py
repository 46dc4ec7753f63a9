"""Where a GPU runner's load goes, per architecture: in a fresh process each, the CUDA context, the build,
and per batch size the first eager forward (a shape's one-time work: kernel loading, cuDNN plans), the
second, the capture and a replay (ms, mean of 50), and the CPU time the process spent in the first
forward and in the capture (all its threads: what a load takes from the serving processes); with
cuDNN on, off, off for depthwise convolutions only (wrapped in a module that turns cuDNN off), and on
through its older v7 API (``TORCH_CUDNN_V8_API_DISABLED=1``: heuristics instead of built plans); and
a second runner in the same process (what stays warm in a process). Needs torch and a GPU; the full
GPU, no MPS share.

    python3 bench/load_parts.py --arch efficientnet_b0 resnet152 --sizes 1 2 4 8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
arch, sizes, setting, repeat = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3], int(sys.argv[4])
torch.backends.cudnn.enabled = setting != "no-cudnn"


class WithoutCudnn(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.backends.cudnn.flags(enabled=False):
            return self.inner(x)


def native_depthwise(model):
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, torch.nn.Conv2d) and child.groups > 1 and child.groups == child.in_channels]
    for parent, name, child in found:
        setattr(parent, name, WithoutCudnn(child))


out = []
t = time.monotonic(); torch.cuda.init(); torch.empty(1, device="cuda"); torch.cuda.synchronize()
ctx = time.monotonic() - t
from jigsawserve.triton_backend import zoo
for r in range(repeat):
    row = {"context": ctx if r == 0 else 0.0}
    t = time.monotonic()
    spec = zoo.ARCHS[arch]()
    with torch.device("cuda"):
        model = spec.build()
    model = model.to(device="cuda", dtype=torch.float16).eval()
    if spec.family in ("classification", "detection"):
        model = model.to(memory_format=torch.channels_last)
    if setting == "native-depthwise":
        native_depthwise(model)
    torch.cuda.synchronize(); row["build"] = time.monotonic() - t
    with torch.inference_mode(), torch.device("cuda"):
        for b in sizes:
            x = spec.inputs(b, torch.device("cuda"), torch.float16)
            for step in ("first", "second"):
                t, c = time.monotonic(), time.process_time(); spec.forward(model, x); torch.cuda.synchronize()
                row[f"b{b} {step}"] = time.monotonic() - t
                if step == "first":
                    row[f"b{b} first cpu"] = time.process_time() - c
            g = torch.cuda.CUDAGraph()
            t, c = time.monotonic(), time.process_time()
            with torch.cuda.graph(g):
                spec.forward(model, x)
            torch.cuda.synchronize(); row[f"b{b} capture"] = time.monotonic() - t
            row[f"b{b} capture cpu"] = time.process_time() - c
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            g.replay(); start.record()
            for _ in range(50):
                g.replay()
            end.record(); torch.cuda.synchronize(); row[f"b{b} replay ms"] = start.elapsed_time(end) / 50
    out.append(row)
print(json.dumps(out))
"""


SETTINGS = ("cudnn", "no-cudnn", "native-depthwise", "cudnn-v7")


def measure(arch: str, sizes: list[int], setting: str, repeat: int = 2) -> list[dict[str, float]]:
    """One fresh process: ``repeat`` runners of ``arch`` built and captured one after the other, under
    ``setting``: cuDNN on, off, off for depthwise convolutions only, or on through its v7 API."""
    env = {**os.environ, **({"TORCH_CUDNN_V8_API_DISABLED": "1"} if setting == "cudnn-v7" else {})}
    done = subprocess.run([sys.executable, "-c", CHILD, arch, ",".join(map(str, sizes)), setting, str(repeat)],
                          cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", required=True)
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--repeat", type=int, default=2, help="runners built one after the other in each process")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    for arch in args.arch:
        for setting in args.settings:
            for i, row in enumerate(measure(arch, args.sizes, setting, args.repeat)):
                rows.append({"arch": arch, "setting": setting, "runner": i + 1, **row})
                print(f"{arch} {setting} runner {i + 1}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
