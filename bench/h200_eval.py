"""The paper's empirical comparison on one GPU: JigsawServe (A+S+T) against A+T, S+T and A+S.

For each app (``--app``, repeatable: one directory per app under ``--out``), in one run, on real
Triton with the jigsaw backend:
  1. the demand every system is tested at: the shipped synthetic diurnal day scaled so that its peak
     is ``--peak-fraction`` of what A+S+T can serve on the GPUs (``capacity.max_demand``);
  2. per system, a closed-loop run (orchestrator/loop/experiment.py): plan, render, serve, replay the day
     compressed to ``--duration`` seconds, the controller replanning every ``--interval`` seconds;
  3. per system: mean GPU slices in use, SLO violation rate (drops count), accuracy vs max.
A system that cannot place the app at all (A+T needs a whole GPU per task) is reported as such.

    python3 bench/h200_eval.py --app examples/h200/traffic.yaml --app examples/h200/social.yaml \\
        --profiles examples/h200/profiles.csv --out bench/results/h200-eval
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jigsawserve.orchestrator.spec.appspec import load_app  # noqa: E402
from jigsawserve.orchestrator.planning.capacity import max_demand  # noqa: E402
from jigsawserve.orchestrator.errors import InfeasibleError  # noqa: E402
from jigsawserve.orchestrator.loop.controller import Policy  # noqa: E402
from jigsawserve.orchestrator.loop.experiment import Experiment, run  # noqa: E402
from jigsawserve.orchestrator.planning.features import Features  # noqa: E402
from jigsawserve.orchestrator.spec.gpus import gpu_type  # noqa: E402
from jigsawserve.orchestrator.serving.inventory import detect  # noqa: E402
from jigsawserve.orchestrator.planning.planner import PlanOptions  # noqa: E402
from jigsawserve.orchestrator.spec.profiles import default_gpu, load_profiles  # noqa: E402

# jigsawserve.triton_backend.zoo.CAPTURE_ENV and CAPTURE_POLICIES, without importing torch here
CAPTURE_ENV, CAPTURE_POLICIES = "JIGSAW_CAPTURE", ("cheap", "half", "all", "background")
from jigsawserve.orchestrator.workload.trace import compress, scale_to_peak, synthetic_diurnal, with_burst  # noqa: E402

SYSTEMS = {"ast": "JigsawServe (A+S+T)", "at": "A+T (Loki-like)", "st": "S+T (ParvaGPU-like)",
           "as": "A+S (Clover-like)"}


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def plot(results: list[dict], out: Path) -> None:
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        log("matplotlib is not installed: no comparison.png (--merge draws it elsewhere)")
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ran = [r for r in results if r.get("summary")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for r in ran:
        tl = r["summary"]["slices"]["timeline"] + [(r["summary"]["run"]["duration_s"], None)]
        tl[-1] = (tl[-1][0], tl[-2][1])  # the last plan holds to the end of the replay
        axes[0].step([t for t, _ in tl], [s for _, s in tl], where="post", label=r["label"])
    axes[0].set_xlabel("time (s)")
    axes[0].set_ylabel("GPU slices in use")
    axes[0].legend()
    names = [r["label"] for r in ran]
    axes[1].bar(names, [100 * (r["summary"]["slo_violation_rate"] or 0) for r in ran])
    axes[1].set_ylabel("SLO violations (%), drops counted")
    axes[1].tick_params(axis="x", rotation=20)
    fig.suptitle(f"{results[0]['app']} on {results[0]['device']} (MIG emulated with MPS)")
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)


def evaluate(app_path: str, args: argparse.Namespace, out: Path) -> list[dict]:
    """Every system of ``args.systems`` on one app; results.{json,md}, comparison.png and per system the
    runners' load-time lines of the server log (``<system>-runner-loads.txt``) in ``out``."""
    app = load_app(app_path)
    profiles = load_profiles(args.profiles)
    gpu = gpu_type(default_gpu(profiles))
    inventory = detect(None)
    device = ", ".join(d.name for d in inventory.gpus) or "CPU"
    out.mkdir(parents=True, exist_ok=True)
    cap = max_demand(app, profiles, gpu, PlanOptions(features=Features.parse("ast"), gpus=args.gpus))
    peak = args.peak or args.peak_fraction * cap.max_demand_rps
    log(f"{app.name}: A+S+T capacity on {args.gpus} GPU(s): {cap.max_demand_rps:.1f} req/s; trace peak {peak:.1f} req/s")
    day = scale_to_peak(synthetic_diurnal(), peak)
    trace = compress(with_burst(day, args.burst, args.burst_fraction) if args.burst else day, args.duration)
    total = gpu.slices * args.gpus
    results = []
    for key in args.systems.split(","):
        label = SYSTEMS[key]
        opts = PlanOptions(features=Features.parse(key), gpus=args.gpus, queueing=args.queueing)
        run_dir = Path(args.runs) / f"{app.name}-{key}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        entry = {"system": key, "label": label, "app": app.name, "device": device, "gpus": args.gpus,
                 "peak_rps": peak, "capacity_ast_rps": cap.max_demand_rps, "slices_total": total,
                 "duration_s": args.duration, "interval_s": args.interval, "headroom": args.headroom,
                 "surge_poll_s": args.surge_poll, "admission_reserve": args.admission_reserve,
                 "refine_drift": args.refine_drift, "shed_limit": args.shed_limit, "surge_headroom": args.surge_headroom,
                 "profiles": str(args.profiles), "capture": args.capture, "client_deadline": args.client_deadline,
                 "queueing": args.queueing, "standby": args.standby, "standby_slices": args.standby_slices, "burst": args.burst,
                 "burst_fraction": args.burst_fraction,
                 "run_dir": str(run_dir)}
        log(f"--- {app.name}: {label}")
        try:
            exp = Experiment(app=app, profiles=profiles, gpu=gpu, opts=opts, inventory=inventory, trace=trace,
                             interval_s=args.interval, out=run_dir, system=label, ready_timeout_s=300.0,
                             policy=Policy(headroom=args.headroom, surge_poll_s=args.surge_poll,
                                           admission_reserve=args.admission_reserve,
                                           refine_drift=args.refine_drift, shed_limit=args.shed_limit,
                                           surge_headroom=args.surge_headroom, standby=args.standby,
                                           standby_slices=args.standby_slices),
                             notes="bench/h200_eval.py; MIG emulated with MPS SM caps and memory limits",
                             send_deadline=args.client_deadline)
            entry["summary"] = run(exp, progress=log)
            s = entry["summary"]
            log(f"{label}: violations {100 * (s['slo_violation_rate'] or 0):.2f}%, slices mean {s['slices']['mean']:.2f}"
                f" of {total}, accuracy {s['accuracy']['ratio_to_max']}")
        except InfeasibleError as exc:
            entry["infeasible"] = str(exc)  # starts with the binding constraint
            log(f"{label}: cannot be planned: {exc}")
        server_log = run_dir / "server.log"
        if server_log.is_file():  # where the applies' time went (bench/runner_loads.py reads these lines)
            loads = [line for line in server_log.read_text(errors="replace").splitlines() if "jigsaw runner " in line]
            (out / f"{key}-runner-loads.txt").write_text("".join(line + "\n" for line in loads))
        results.append(entry)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(results, out)
    return results


def write_report(results: list[dict], out: Path) -> None:
    """results.json, results.md and comparison.png in ``out`` for one app's systems (entries as
    ``evaluate`` makes them: one run each, the same trace and controller settings)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out)
    first = results[0]
    app, device, peak, cap = first["app"], first["device"], first["peak_rps"], first["capacity_ast_rps"]
    total = first["slices_total"]
    lines = [f"# {app} on {device}, {first['gpus']} GPU(s), MIG emulated with MPS", "",
             f"Trace: synthetic diurnal day scaled to peak {peak:.1f} req/s "
             + (f"({peak / cap:.2g} x the A+S+T capacity {cap:.1f})" if cap > 0 else "(A+S+T capacity not found)")
             + f", replayed in {first['duration_s']:g} s; controller every "
             f"{first['interval_s']:g} s, planning for the forecast x {1 + first['headroom']:g}"
             + (f" (surges: x {1 + first['surge_headroom']:g})" if first.get("surge_headroom") is not None else "")
             + (f", refining profiles {100 * first['refine_drift']:g}% slower" if first.get("refine_drift") else "")
             + (f", stepping up past {100 * first['shed_limit']:g}% shed" if first.get("shed_limit") else "")
             + (f"; profiles {first['profiles']}" if first.get("profiles") else "")  # older records lack it
             + (f"; runners' captures: {first['capture']}" if first.get("capture") else "")
             + ("; plans with the queueing term" if first.get("queueing") else "")
             + {True: "; requests carry the client's deadline (deadline_ns)",
                False: "; requests carry no client deadline"}.get(first.get("client_deadline"), "")
             + ".", "",
             "| system | requests | SLO violations (drops count) | late / dropped | late at the server "
             "| mean slices | accuracy / max | plan changes | applies (mean / max s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "summary" not in r:
            lines.append(f"| {r['label']} | - | cannot be placed: {r['infeasible'][:80]} | - | - | - | - | - | - |")
            continue
        s = r["summary"]
        applies = s["plan_changes"].get("applies") or {}  # older records lack it
        server = s.get("server")  # answers leaving a sink stage late; older records lack it
        lines.append(f"| {r['label']} | {s['requests']['total']} | {100 * (s['slo_violation_rate'] or 0):.2f}% | "
                     f"{s['requests']['late']} / {s['requests']['dropped']} | "
                     f"{server['sink_misses'] if server else '-'} | "
                     f"{s['slices']['mean']:.2f} of {total} ({100 * s['slices']['mean'] / (total):.1f}%) | "
                     f"{s['accuracy']['ratio_to_max']:.4f} | {s['plan_changes']['count']} | "
                     + (f"{applies['mean_s']:.1f} / {applies['max_s']:.1f} |" if applies.get("mean_s") is not None
                        else "- |"))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def merge(paths: list[str]) -> list[dict]:
    """The entries of several results.json files of one app, in ``SYSTEMS`` order; each must have run
    on the same trace (peak, replay length) and controller settings."""
    entries = [e for p in paths for e in json.loads(Path(p).read_text())]
    keys = ("app", "peak_rps", "duration_s", "interval_s", "headroom", "refine_drift", "shed_limit", "slices_total",
            "profiles", "capture")
    for e in entries[1:]:
        differ = [k for k in keys if e.get(k) != entries[0].get(k)]
        if differ:
            raise SystemExit(f"--merge: {e['system']} differs from {entries[0]['system']} in {', '.join(differ)}")
    return sorted(entries, key=lambda e: list(SYSTEMS).index(e["system"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", action="append", help="app spec; repeat for several apps (out/<app>/)")
    ap.add_argument("--profiles")
    ap.add_argument("--systems", default="ast,at,st,as")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--peak-fraction", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=100.0)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--headroom", type=float, default=0.5,
                    help="plan for forecast x (1 + headroom): keeps runners below ~1/(1+headroom) utilisation")
    ap.add_argument("--standby", action="store_true",
                    help="keep a standby plan's runners loaded (Policy.standby): most scale-ups a routing swap")
    ap.add_argument("--standby-slices", type=int, default=None,
                    help="the standby runners beside the live plan's take at most this many slices (default: the "
                         "GPUs' spare slices; with MIG emulated a standby runner holds memory only)")
    ap.add_argument("--burst", type=float, default=0.0,
                    help="add a burst of this x the day's peak (jigsawserve.orchestrator.workload.trace.with_burst; 0: none)")
    ap.add_argument("--burst-fraction", type=float, default=0.1, help="... lasting this share of the day")
    ap.add_argument("--surge-poll", type=float, default=Policy().surge_poll_s,
                    help="the controller's surge checks between steps, every this many seconds (0: none)")
    ap.add_argument("--admission-reserve", type=float, default=Policy().admission_reserve,
                    help="the stages admit a request only when it would be answered this fraction of its "
                         "budget before its deadline")
    ap.add_argument("--peak", type=float, help="the trace's peak in req/s (default: --peak-fraction x the A+S+T "
                    "capacity), to replay the same day as an earlier run when the planner's capacity changed")
    ap.add_argument("--refine-drift", type=float, default=Policy().refine_drift,
                    help="refine a runner's profile when its batches take this fraction longer than profiled")
    ap.add_argument("--shed-limit", type=float, default=Policy().shed_limit,
                    help="step the plan up when its stages shed more than this share of the requests over "
                         "the surge window (0: never)")
    ap.add_argument("--surge-headroom", type=float, default=None,
                    help="a surge's plan is for the projected rate x (1 + this) (default: --headroom); the "
                         "projection already looks ahead over the apply")
    ap.add_argument("--capture", choices=CAPTURE_POLICIES, default=None,
                    help="the batch sizes the runners capture (zoo.capture_policy; default: the runtime's, all: every "
                         "size; cheap: between 1 and the max only where the max's capture was cheap; half: a "
                         "costly architecture also the largest size below its max; background: 1 and the max "
                         "before ready, the rest while serving)")
    ap.add_argument("--queueing", action="store_true",
                    help="plan with the queueing term (PlanOptions.queueing, docs/planning.md)")
    ap.add_argument("--no-client-deadline", dest="client_deadline", action="store_false",
                    help="the load generator sends no deadline_ns: a request's deadline starts when a graph "
                         "instance takes it (as older records ran)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", default="/tmp/jigsaw-runs", help="where the full run directories go")
    ap.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                    help="instead of running: one app's results.json files from several calls (a device call "
                         "may be too short for every system) merged into --out's results.{json,md} and plot")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `timeout` stops the servers started, too
    out = Path(args.out)
    if args.merge:
        write_report(merge(args.merge), out)
        return
    if not args.app or not args.profiles:
        ap.error("--app and --profiles are required (unless --merge)")
    if args.capture is not None:  # the servers pass their environment to the runners
        os.environ[CAPTURE_ENV] = args.capture
    for app_path in args.app:
        evaluate(app_path, args, out / Path(app_path).stem if len(args.app) > 1 else out)


if __name__ == "__main__":
    main()
