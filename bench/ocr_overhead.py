"""What real tensors through the jigsaw graph cost against a plain Triton ensemble of the same models.

One tritonserver serves both, from one repository: the OCR app pinned to one variant per task, planned and
rendered as jigsaw serves it (the graph model, a runner per variant), and ``ocr_ens``, an ordinary Triton
ensemble of two Python-backend models (bench/ensemble/: decode + detect + crop with the same Detector
class and crop_boxes adapter, then read all of a request's crops in one call with the same Recognizer
class), one instance each as the plan has one runner each. The two are measured interleaved, in rounds
that alternate which goes first: per round, ``--sequential`` requests one at a time (latency p50, the
per-request cost of the path) and ``--burst`` requests from 8 concurrent clients (throughput, p50). The
answers of the two are compared too. Writes ``--out`` (JSON): per system the median over rounds and the
min-max spread.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typed_bench import machine, pinned, serve  # noqa: E402

from jigsawserve.orchestrator.spec.appspec import AppSpec, load_app  # noqa: E402
from jigsawserve.orchestrator.spec.typed import resolve_files  # noqa: E402
from jigsawserve.tools import evaluate  # noqa: E402
from jigsawserve.orchestrator.workload.typed_client import infer  # noqa: E402

HERE = Path(__file__).resolve().parent
ENSEMBLE = "ocr_ens"
STEP = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "{inp}" data_type: TYPE_STRING dims: [ {in_dims} ] }} ]
output [ {outputs} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "bench" value: {{ string_value: {settings} }} }}
"""
ENSEMBLE_CONFIG = """name: "ocr_ens"
platform: "ensemble"
max_batch_size: 0
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1, 1 ] } ]
output [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }, { name: "SCORE" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [
  { model_name: "ens_det" model_version: -1 input_map { key: "IMAGE" value: "IMAGE" }
    output_map { key: "CROPS" value: "crops" } },
  { model_name: "ens_rec" model_version: -1 input_map { key: "CROPS" value: "crops" }
    output_map [ { key: "TEXT" value: "TEXT" }, { key: "SCORE" value: "SCORE" } ] }
] }
"""


def add_ensemble(app: AppSpec, choice: dict[str, str], repo: Path) -> list[str]:
    """Write the baseline's three models into ``repo`` and add them to its manifest; their names."""
    runtime = {t: resolve_files(app.task(t).variant(v).runtime, f"tasks.{t}.variants.{v}.runtime")
               for t, v in choice.items()}
    crop = {k: v for k, v in app.typed.adapters["det->rec"].items() if k not in ("use", "path")}
    steps = {"ens_det": ("det_model.py", "IMAGE", "1, 1", '{ name: "CROPS" data_type: TYPE_STRING dims: [ -1 ] }',
                         {"runtime": runtime["det"], "crop": crop}),
             "ens_rec": ("rec_model.py", "CROPS", "-1", '{ name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }, '
                                                        '{ name: "SCORE" data_type: TYPE_FP32 dims: [ -1 ] }',
                         {"runtime": runtime["rec"]})}
    for name, (source, inp, dims, outputs, settings) in steps.items():
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "ensemble" / source, repo / name / "1" / "model.py")
        (repo / name / "config.pbtxt").write_text(STEP.format(name=name, inp=inp, in_dims=dims, outputs=outputs,
                                                              settings=json.dumps(json.dumps(settings))))
    (repo / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
    (repo / ENSEMBLE / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    names = [*steps, ENSEMBLE]
    manifest = json.loads((repo / "jigsaw.json").read_text())
    manifest["models"] = manifest["models"] + names if isinstance(manifest["models"], list) else manifest["models"]
    (repo / "jigsaw.json").write_text(json.dumps(manifest, indent=1))
    return names


def send(client: grpcclient.InferenceServerClient, model: str, tensors: dict[str, np.ndarray]) -> dict:
    if model == ENSEMBLE:
        image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(tensors["IMAGE"])
        result = client.infer(model, [image], client_timeout=120)
        return {"TEXT": result.as_numpy("TEXT"), "SCORE": result.as_numpy("SCORE")}
    return infer(client, model, tensors, timeout_s=120)


def phase(client: grpcclient.InferenceServerClient, model: str, samples: list, n: int, clients: int) -> dict:
    """``n`` requests (the samples in turn) from ``clients`` concurrent clients: p50 latency and throughput."""
    def one(i: int) -> float:
        started = time.monotonic()
        send(client, model, samples[i % len(samples)].tensors)
        return (time.monotonic() - started) * 1000

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(n)))
    return {"p50_ms": float(np.percentile(latencies, 50)), "rps": n / (time.monotonic() - started)}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(float(np.median(values)), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", type=Path, default=Path("examples/ocr/app.yaml"))
    ap.add_argument("--profiles", type=Path, default=Path("examples/ocr/profiles.csv"))
    ap.add_argument("--det", default="det_v4")
    ap.add_argument("--rec", default="rec_v4")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sequential", type=int, default=16)
    ap.add_argument("--burst", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ocr-overhead"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    choice = {"det": args.det, "rec": args.rec}
    app = pinned(load_app(args.app), choice)
    samples = evaluate.load_dataset(app, evaluate.make_dataset(app, args.work / "dataset", args.images, seed=5))
    models = {"jigsaw": app.name, "ensemble": ENSEMBLE}
    rounds: list[dict[str, Any]] = []
    with serve(app, args.profiles, args.work, extra=lambda repo: add_ensemble(app, choice, repo)) as (server, plan):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            answers = {k: [send(client, m, s.tensors) for s in samples] for k, m in models.items()}  # + warm-up
            same = sum(list(a["TEXT"]) == list(b["TEXT"]) for a, b in zip(answers["jigsaw"], answers["ensemble"]))
            for r in range(args.rounds):
                order = list(models) if r % 2 == 0 else list(reversed(models))
                row: dict[str, Any] = {"order": order}
                for system in order:
                    row[system] = {"sequential": phase(client, models[system], samples, args.sequential, 1),
                                   "concurrent": phase(client, models[system], samples, args.burst, args.concurrency)}
                rounds.append(row)
                print(json.dumps(row), flush=True)
        finally:
            client.close()
    summary = {system: {"sequential_p50_ms": spread([r[system]["sequential"]["p50_ms"] for r in rounds]),
                        f"c{args.concurrency}_p50_ms": spread([r[system]["concurrent"]["p50_ms"] for r in rounds]),
                        f"c{args.concurrency}_rps": spread([r[system]["concurrent"]["rps"] for r in rounds])}
               for system in models}
    summary["overhead"] = {
        "sequential_p50_ms": round(summary["jigsaw"]["sequential_p50_ms"]["median"]
                                   - summary["ensemble"]["sequential_p50_ms"]["median"], 2),
        f"c{args.concurrency}_rps_ratio": round(summary["jigsaw"][f"c{args.concurrency}_rps"]["median"]
                                                / summary["ensemble"][f"c{args.concurrency}_rps"]["median"], 3)}
    result = {"command": "python3 " + " ".join(sys.argv), "machine": machine(), "choice": choice,
              "plan": {t: [{"variant": e.variant, "batch": e.batch, "count": e.count} for e in es]
                       for t, es in plan.tasks().items()},
              "answers_equal": f"{same}/{len(samples)} requests read the same lines",
              "summary": summary, "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
