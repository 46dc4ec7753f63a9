"""The served OCR pipeline against the same models run in this process, on the same inputs: does serving
(the graph, the runners' dynamic batching, the wire) change any answer?

For each pinning of one variant per task (so that both sides run the same models), a fresh ground-truth
dataset is sent through a real tritonserver (``bench/typed_bench.py``) from ``--clients`` gRPC clients and
run through ``jigsawserve.tools.evaluate.LocalPipeline`` (the same runner classes and adapters, no Triton); per request
the lines read are compared item by item (text exactly, score to the last bit and within 1e-6) and the app's
metric is computed on both. Writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typed_bench import machine, pinned, serve  # noqa: E402

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.tools import evaluate  # noqa: E402
from jigsawserve.orchestrator.workload.typed_client import infer  # noqa: E402

CHOICES = ({"det": "det_v4", "rec": "rec_v4"}, {"det": "det_v6", "rec": "rec_v6"})


def compare(app_path: Path, profiles: Path, work: Path, n: int, seed: int, clients: int) -> dict:
    base = load_app(app_path)
    samples = evaluate.load_dataset(base, evaluate.make_dataset(base, work / "dataset", n, seed=seed))
    _, score = evaluate.scorer(base)
    runs = []
    for choice in CHOICES:
        app = pinned(base, choice)
        local = evaluate.LocalPipeline(app)
        started = time.monotonic()
        expected = [local(s.tensors, choice)[0] for s in samples]
        local_s = time.monotonic() - started
        with serve(app, profiles, work / "-".join(choice.values())) as (server, _):
            client = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                started = time.monotonic()
                with ThreadPoolExecutor(clients) as pool:
                    served = list(pool.map(lambda s: infer(client, app.name, s.tensors, timeout_s=120), samples))
                served_s = time.monotonic() - started
            finally:
                client.close()
        texts = [(list(e["TEXT"]), list(a["TEXT"])) for e, a in zip(expected, served)]
        diffs = [float(np.max(np.abs(e["SCORE"] - a["SCORE"]))) for e, a in zip(expected, served) if len(e["SCORE"])
                 and len(e["SCORE"]) == len(a["SCORE"])]
        mismatched = [i for i, (e, a) in enumerate(texts) if e != a]
        acc_local = [score(s.label, e) for s, e in zip(samples, expected)]
        acc_served = [score(s.label, a) for s, a in zip(samples, served)]
        runs.append({
            "choice": choice, "requests": n,
            "items_local": sum(len(e) for e, _ in texts), "items_served": sum(len(a) for _, a in texts),
            "requests_text_equal": n - len(mismatched),
            "mismatches": [{"request": i, "local": [t.decode() for t in texts[i][0]],
                            "served": [t.decode() for t in texts[i][1]]} for i in mismatched[:5]],
            "scores_bitwise_equal": sum(np.array_equal(e["SCORE"], a["SCORE"]) for e, a in zip(expected, served)),
            "score_max_abs_diff": max(diffs, default=0.0),
            "accuracy_local": float(np.mean(acc_local)), "accuracy_served": float(np.mean(acc_served)),
            "accuracy_per_request_equal": sum(a == b for a, b in zip(acc_local, acc_served)),
            "variants_answered": sorted({v.decode() for a in served for v in a["rec_VARIANT"]}),
            "seconds_local": round(local_s, 2), "seconds_served": round(served_s, 2),
        })
        print(json.dumps(runs[-1]), flush=True)
    return {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", type=Path, default=Path("examples/ocr/app.yaml"))
    ap.add_argument("--profiles", type=Path, default=Path("examples/ocr/profiles.csv"))
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ocr-parity"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = compare(args.app, args.profiles, args.work, args.requests, args.seed, args.clients)
    result.update(command="python3 " + " ".join(sys.argv), machine=machine(), dataset_seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
