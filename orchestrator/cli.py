"""The ``jigsaw`` command line. Exit codes: 0 success, 1 bad input, 2 no plan meets the SLOs."""
from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import click

from .spec.appspec import load_app
from .planning.capacity import max_demand
from .errors import InfeasibleError, InputError, UnreachableError
from .planning.features import Features
from .spec.gpus import gpu_type
from .planning.candidates import LATENCY_MODELS
from .planning.planner import METHODS, Deadline, PlanOptions, make_plan
from .spec.profiles import default_gpu, load_profiles

EXIT_INPUT, EXIT_INFEASIBLE = 1, 2


def _options(f, time_limit: float = 2.0, limit_help: str = "seconds the whole planning call may take (a hard bound)"):
    f = click.option("--latency-model", type=click.Choice(LATENCY_MODELS), default="batches", show_default=True,
                     help="worst case per task: batches = p95 x (1 + batches per request), what the runtime "
                          "needs under fan-out; paper = 2 x p95")(f)
    f = click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
                     help="auto: exact MILP within --time-limit, else LP relaxation + rounding")(f)
    f = click.option("--time-limit", type=float, default=time_limit, show_default=True, help=limit_help)(f)
    f = click.option("--features", default="ast", show_default=True,
                     help="subset of a (accuracy scaling), s (spatial partitions), t (task-graph budgets), or none")(f)
    f = click.option("--gpu-type", default=None, help="GPU type (default: the one the profiles cover)")(f)
    f = click.option("--profiles", "profiles_path", required=True, type=click.Path(),
                     help="profile CSV file or directory of CSV files")(f)
    return click.argument("app_path", metavar="APP.yaml", type=click.Path())(f)


def _load(app_path: str, profiles_path: str, gpu_name: str | None):
    app = load_app(app_path)
    profiles = load_profiles(profiles_path)
    return app, profiles, gpu_type(gpu_name or default_gpu(profiles))


@click.group()
@click.version_option(package_name="jigsawserve", prog_name="jigsaw")
def cli() -> None:
    """JigsawServe: plan and serve compound inference on GPU slices."""
    # SIGTERM (`timeout`, a job scheduler) unwinds like Ctrl-C, so that the servers and MPS daemons a
    # command started are stopped on the way out rather than left running
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@cli.command()
@_options
@click.option("--demand", type=float, required=True, help="requests per second entering the app")
@click.option("--gpus", type=int, default=None, help="GPUs available (default: unlimited)")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="objective weight of accuracy")
@click.option("--beta", type=float, default=None,
              help="objective cost per slice (default 0.035 x 28 / available slices, or 0.035)")
@click.option("--latency-reserve", type=float, default=0.0, show_default=True,
              help="share of the latency SLO the plan leaves unused; the jigsaw runtime's stages hold back "
                   "0.05 of every request's budget (`jigsaw experiment` and `watch` plan with it)")
@click.option("--queueing", is_flag=True,
              help="plan each instance at most 80% busy, with the p95 wait of a queue that busy in its worst-case "
                   "latency (docs/planning.md); default: no queueing wait")
@click.option("--accuracy", "accuracy_csv", type=click.Path(dir_okay=False), default=None,
              help="measured accuracies (task,variant,accuracy, as `jigsaw profile --accuracy` writes) in place of "
                   "the spec's cited ones; the plan's app_spec says per variant which it used (source)")
@click.option("--out", type=click.Path(), default=None, help="write the plan JSON here")
@click.option("--cluster", "cluster_path", type=click.Path(dir_okay=False), default=None,
              help="plan over the nodes of this cluster inventory (JSON, docs/planning.md), every request's path "
                   "inside one node; --out writes the cluster plan; --time-limit's default becomes 30 s")
@click.option("--nodes", "node_count", type=int, default=None,
              help="plan over this many identical nodes of --gpus-per-node GPUs (instead of --cluster)")
@click.option("--gpus-per-node", type=int, default=None, help="GPUs (of the profiles' type) of each of --nodes")
def plan(app_path: str, profiles_path: str, gpu_type: str | None, features: str, time_limit: float,
         method: str, latency_model: str, demand: float, gpus: int | None, alpha: float, beta: float | None,
         latency_reserve: float, queueing: bool, accuracy_csv: str | None, out: str | None,
         cluster_path: str | None, node_count: int | None, gpus_per_node: int | None) -> None:
    """Plan APP.yaml for a demand: variants, segments, batch sizes and instance counts; with --cluster or
    --nodes, the demand split over nodes, each serving the whole app with its own plan."""
    from .spec.typed import check_variants

    entry = time.monotonic()  # --time-limit counts from here: reading and checking the files are part of the call
    app, profiles, gpu = _load(app_path, profiles_path, gpu_type)
    if accuracy_csv:
        from .spec.accuracy import with_measured
        app, measured = with_measured(app, accuracy_csv)
        cited = [f"{t.name}/{v.name}" for t in app.tasks for v in t.variants if f"{t.name}/{v.name}" not in measured]
        click.echo(f"accuracy: measured ({accuracy_csv}) for {', '.join(measured)}; "
                   f"cited (the spec's) for {', '.join(cited) or 'none'}")
    check_variants(app)  # a typed app's model files and signatures, before any server starts
    nodes = None
    if cluster_path or node_count is not None or gpus_per_node is not None:
        from click.core import ParameterSource
        from .planning.cluster import DEFAULT_TIME_LIMIT, load_cluster, plan_cluster, uniform
        if gpus is not None:
            raise InputError("--gpus: a single pool's GPUs; with --cluster or --nodes each node has its own")
        if cluster_path and (node_count is not None or gpus_per_node is not None):
            raise InputError("--cluster: give a cluster file or --nodes N --gpus-per-node G, not both")
        if not cluster_path and (node_count is None or gpus_per_node is None):
            raise InputError("--nodes and --gpus-per-node: give both (or --cluster FILE)")
        nodes = load_cluster(cluster_path) if cluster_path else uniform(node_count or 0, gpus_per_node or 0)
        if click.get_current_context().get_parameter_source("time_limit") is ParameterSource.DEFAULT:
            time_limit = DEFAULT_TIME_LIMIT
    opts = PlanOptions(features=Features.parse(features), gpus=gpus, alpha=alpha, beta=beta,
                       method=method, time_limit=time_limit, latency_reserve=latency_reserve, queueing=queueing,
                       latency_model=latency_model)
    deadline = Deadline(time_limit, start=entry)  # reading and checking the files count against the limit
    result = (plan_cluster(app, profiles, gpu, demand, nodes, opts, deadline) if nodes
              else make_plan(app, profiles, gpu, demand, opts, deadline))
    click.echo(result.summary())
    if not nodes and gpus is None:
        unit = "CPU slices" if gpu.name == "cpu" else f"{gpu.name} GPUs"
        click.echo(f"no --gpus: {unit} unlimited (this plan takes {result.gpus}); give --gpus N to plan within N",
                   err=True)
    if out:
        result.save(out)
        click.echo(f"wrote {out}")


@cli.command()
@(lambda f: _options(f, 10.0, "seconds the whole search may take, for each latency model (a hard bound; the "
                               "first's counts from the command's start, reading the files included)"))
@click.option("--gpus", type=int, required=True, help="GPUs available")
@click.option("--json", "as_json", is_flag=True, help='print {"max_demand_rps": ...} as the last line')
def capacity(app_path: str, profiles_path: str, gpu_type: str | None, features: str, time_limit: float,
             method: str, latency_model: str, gpus: int, as_json: bool) -> None:
    """The maximum demand (req/s) that GPUS can serve within both SLOs, under --latency-model and, for
    comparison, the other latency model."""
    entry = time.monotonic()  # the first search's --time-limit counts from here, reading the files included
    app, profiles, gpu = _load(app_path, profiles_path, gpu_type)
    if gpus < 1:
        raise InputError(f"--gpus: expected at least 1, got {gpus}")
    results = {}
    for model in [latency_model] + [m for m in LATENCY_MODELS if m != latency_model]:
        opts = PlanOptions(features=Features.parse(features), gpus=gpus, method=method, time_limit=time_limit,
                           latency_model=model)
        click.echo(f"searching the demand for {app.name} on {gpus} {gpu.name} GPU(s), features "
                   f"{opts.features.label}, latency model {model}", err=True)
        results[model] = max_demand(app, profiles, gpu, opts, progress=lambda line: click.echo(line, err=True),
                                    deadline=Deadline(time_limit, start=entry if not results else None))
    for model, cap in results.items():
        slices = cap.plan.slices if cap.plan else 0
        click.echo(f"max serviceable demand ({model} latency model{'' if model == latency_model else ', for comparison'}):"
                   f" {cap.max_demand_rps:.1f} req/s ({slices} slices at that demand, {cap.probes} solves, "
                   f"{cap.seconds:.1f} s){'; ' + cap.note if cap.note else ''}")
    cap = results[latency_model]
    if as_json:
        click.echo(json.dumps({"max_demand_rps": cap.max_demand_rps, "upper_rps": cap.upper_rps,
                               "features": features and Features.parse(features).label, "gpus": gpus,
                               "gpu_type": gpu.name, "latency_model": latency_model, "probes": cap.probes,
                               "seconds": cap.seconds, "max_probe_seconds": max(cap.probe_seconds, default=0.0),
                               "by_latency_model": {m: c.max_demand_rps for m, c in results.items()},
                               **({"note": cap.note} if cap.note else {})}))


KEY_FILE, MANIFEST_FILE = ".jigsaw-control-key", "jigsaw.json"
# the CPU demo replays a whole day in a minute: demand can double within one apply, so it plans for 2x
DEMO_HEADROOM = 1.0


def _uses_mps(repo: Path) -> bool:
    """Whether the rendered repository's manifest asks for MPS (a missing or unreadable manifest: no)."""
    try:
        return json.loads((repo / MANIFEST_FILE).read_text()).get("uses_mps") is True
    except (OSError, ValueError, AttributeError):
        return False


def _write_key(path: Path, key: str) -> None:
    """Write the control key, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)


@cli.command()
@click.argument("repo_path", metavar="REPO", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="address the HTTP, gRPC and metrics ports bind to")
@click.option("--http-port", type=int, default=8000, show_default=True,
              help="HTTP/REST port (through the front that checks request sizes)")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC port")
@click.option("--metrics-port", type=int, default=8002, show_default=True,
              help="Prometheus metrics port (what jigsaw watch --metrics-url reads)")
@click.option("--control-key", default=None,
              help=f"value of the jigsaw-control-key header that model load/unload needs (default: random); "
                   f"written to REPO/{KEY_FILE}")
@click.option("--max-request-mb", type=float, default=64.0, show_default=True,
              help="largest HTTP request body (also decompressed) the HTTP front passes on, and largest gRPC "
                   "message the gRPC front takes (RESOURCE_EXHAUSTED beyond)")
@click.option("--restart", "restarts", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="when tritonserver dies, start it again on REPO (the last applied plan) and the same ports, "
                   "at most N times; then exit 1")
def serve(repo_path: str, host: str, http_port: int, grpc_port: int, metrics_port: int,
          control_key: str | None, max_request_mb: float, restarts: int) -> None:
    """Serve the model repository REPO with Triton until SIGINT or SIGTERM.

    The python and jigsaw backends are prepared in a temporary directory (removed on exit): Triton
    takes every subdirectory of REPO for a model. An MPS control daemon is started first when
    REPO/jigsaw.json has "uses_mps": true and MPS is available. Every stop of tritonserver (also its
    death) ends its stubs and removes its shared-memory regions.
    """
    from .serving.server import MpsDaemon, RepoBusy, RepoLock, TritonServer
    from .serving.supervise import supervise
    from .serving.tritonenv import prepare_backend_dir, server_env

    repo = Path(repo_path).resolve()
    if not repo.is_dir():
        raise InputError(f"REPO: no such directory: {repo_path}")
    lock = RepoLock(repo)  # first: a second serve of REPO changes nothing (the key file is the first one's)
    try:
        lock.acquire(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    except RepoBusy as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot lock {lock.path}: {exc}") from None
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in handlers:  # SIGTERM stops like Ctrl-C; SIGINT too when started with it ignored (`cmd &`)
        signal.signal(sig, signal.default_int_handler)
    try:
        key = control_key or secrets.token_hex(16)
        _write_key(repo / KEY_FILE, key)
        click.echo(f"control key in {repo / KEY_FILE} (header jigsaw-control-key)")  # never the key itself
        with ExitStack() as stack:
            env = server_env()
            if _uses_mps(repo):
                if MpsDaemon.available():
                    mps = stack.enter_context(MpsDaemon())
                    env.update(mps.env())
                    click.echo(f"MPS control daemon pid {mps.pid}, pipe {mps.env()['CUDA_MPS_PIPE_DIRECTORY']}")
                else:
                    click.echo("warning: REPO asks for MPS, which is unavailable here: serving without", err=True)
            backend_dir = prepare_backend_dir(Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="jigsaw-backends-"))))

            def start() -> TritonServer:  # stopped by the stack on exit (a no-op for one already stopped)
                server = stack.enter_context(TritonServer(repo, backend_dir, host=host, http_port=http_port,
                                                          grpc_port=grpc_port, metrics_port=metrics_port,
                                                          control_key=key, env=env,
                                                          max_request_bytes=int(max_request_mb * 2**20),
                                                          grpc_front=True))
                lock.update(tritonserver_pid=server.pid)
                click.echo(f"tritonserver pid {server.pid} ready: http {server.http_url}, grpc {server.grpc_url}, "
                           f"metrics {server.metrics_url}, log {server.log_path}")
                return server
            try:
                supervise(start, restarts, click.echo)
            except KeyboardInterrupt:
                for sig in handlers:
                    signal.signal(sig, signal.SIG_IGN)  # let the shutdown finish
                click.echo("stopping")
    except RuntimeError as exc:  # the server or MPS failed to start, or the server died (supervise.ServerDied)
        raise click.ClickException(str(exc)) from exc
    finally:
        lock.release()  # after the server stopped (the ExitStack): the next serve of REPO may start
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    click.echo("stopped")


@cli.command()
@click.argument("plan_path", metavar="PLAN.json", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(), help="model repository directory to write")
@click.option("--inventory", default=None, type=click.Path(),
              help="simulated GPU inventory JSON (default: read the GPUs through NVML; none = CPU)")
def render(plan_path: str, out: str, inventory: str | None) -> None:
    """Render PLAN.json into a Triton model repository (every config validated as a ModelConfig)."""
    from .serving.inventory import detect
    from .planning.plan import Plan
    from .serving.render import build_configs, write_repository

    from .spec.appspec import parse_app
    from .spec.typed import check_variants

    inv = detect(inventory)
    plan = Plan.load(plan_path)
    if plan.app_spec:
        check_variants(parse_app(plan.app_spec, origin=f"{plan_path} app_spec"))
    rendered = build_configs(plan, inv)
    write_repository(rendered, Path(out))
    click.echo(f"wrote {len(rendered.configs)} models to {out} (clients call {rendered.manifest['model']!r}; "
               f"devices: {inv.source})")
    for label, procs in rendered.manifest["bindings"].items():
        click.echo(f"  {label}: {'; '.join(procs)}")


@cli.command()
@click.argument("plan_path", metavar="PLAN.json", type=click.Path())
@click.option("--repo", "repo_path", default=None, type=click.Path(), help="the repository the server serves")
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="the server's gRPC address")
@click.option("--control-key", default=None, help=f"model-control key (default: REPO/{KEY_FILE})")
@click.option("--inventory", default=None, type=click.Path(), help="simulated GPU inventory JSON")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="instead: PLAN.json is a cluster plan; move the cluster that `jigsaw serve-cluster` serves on the "
                   "Ray cluster at ADDRESS (or 'auto') to it, node by node")
def apply(plan_path: str, repo_path: str | None, url: str, control_key: str | None, inventory: str | None,
          ray_address: str | None) -> None:
    """Move the server at URL to PLAN.json without failing requests in flight (rolls back on failure).

    With --ray: each node's server moves as one server does; nodes that gain a plan start, the front door takes
    the new shares once the nodes that grow have moved (before those that shrink), and nodes that lose their
    plan get no new request, drain, then stop."""
    if ray_address:
        _apply_cluster(plan_path, ray_address)
        return
    if repo_path is None:
        raise click.UsageError("--repo is required (or --ray for a cluster plan)")
    import tritonclient.grpc as grpcclient

    from .serving.control import apply as apply_plan, control_headers
    from .serving.inventory import detect
    from .planning.plan import Plan
    from .serving.render import build_configs

    repo = Path(repo_path)
    key_file = repo / KEY_FILE
    key = control_key or (key_file.read_text().strip() if key_file.exists() else None)
    rendered = build_configs(Plan.load(plan_path), detect(inventory))
    client = grpcclient.InferenceServerClient(url)
    try:
        report = apply_plan(rendered, repo, client, control_headers(key, grpc=True),
                            progress=lambda line: click.echo(f"  {line}", err=True))
    except (RuntimeError, UnreachableError) as exc:  # rolled back, or nothing answers at URL (nothing changed)
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
    click.echo(f"applied: {len(report.loaded)} loaded, {len(report.unchanged)} unchanged, "
               f"{len(report.unloaded)} unloaded" + "".join(f"; {g} rerouted in place" for g in report.rerouted))


def _load_cluster_plan(plan_path: str):
    from .planning.cluster import ClusterPlan
    try:
        doc = json.loads(Path(plan_path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{plan_path}: cannot read the cluster plan ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
        raise InputError(f"{plan_path}: not a cluster plan (no \"nodes\"; `jigsaw plan --nodes` writes one)")
    return ClusterPlan.from_json(doc)


def _connect_for(plan_path: str, ray_address: str) -> ClusterPlan:
    """The cluster plan at ``plan_path``, read before this process joins the Ray cluster at ``ray_address``."""
    from .serving.ray_cluster import connect

    plan = _load_cluster_plan(plan_path)
    try:
        connect(ray_address)
    except UnreachableError as exc:
        raise click.ClickException(str(exc)) from None
    return plan


def _apply_cluster(plan_path: str, ray_address: str) -> None:
    import ray

    from .serving.ray_cluster import ClusterServing

    plan = _connect_for(plan_path, ray_address)
    try:
        serving = ClusterServing(progress=lambda line: click.echo(f"  {line}", err=True)).attach()
        report = serving.apply(plan)
    except (RuntimeError, ValueError) as exc:  # nothing served there, another app, a node's apply rolled back
        raise click.ClickException(str(exc)) from None
    finally:
        ray.shutdown()
    click.echo(f"applied to {len(report['applied'])} node(s); started {', '.join(report['started']) or 'none'}; "
               f"stopped {', '.join(report['stopped']) or 'none'}")


@cli.command("serve-cluster")
@click.argument("plan_path", metavar="PLAN.json", type=click.Path())
@click.option("--ray", "ray_address", default="auto", show_default=True, metavar="ADDRESS",
              help="the Ray cluster (its GCS host:port); its nodes carry the resource jigsaw_node:<name>")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8001, show_default=True,
              help="the front door's gRPC port on the head node (0: any free one)")
@click.option("--http-port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True,
              help="the front door's HTTP port on the head node (0: any free one)")
def serve_cluster(plan_path: str, ray_address: str, port: int, http_port: int) -> None:
    """Serve a cluster plan on a Ray cluster until SIGINT or SIGTERM: one tritonserver per node with a plan
    (a Ray actor pinned to the node), and one front door on the head node speaking Triton's gRPC and HTTP
    protocols, which spreads requests over the nodes by their planned shares. `jigsaw apply --ray` moves it."""
    import ray

    from .serving.ray_cluster import ClusterServing

    plan = _connect_for(plan_path, ray_address)
    try:
        with ClusterServing(progress=lambda line: click.echo(line, err=True)) as serving:
            try:
                url = serving.start(plan, port, http_port)
            except ValueError as exc:  # a node of the plan is not in the cluster
                raise InputError(str(exc)) from None
            click.echo(f"serving {plan.app} on {len(plan.nodes)} node(s); front door at {url} (gRPC) and "
                       f"{serving.http_url} (HTTP)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                click.echo("stopping", err=True)
    finally:
        ray.shutdown()
    click.echo("stopped")


@cli.command()
@click.argument("run_path", metavar="RUN", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the summary JSON as the last line")
@click.option("--bins", "bin_s", type=float, default=None, metavar="SECONDS",
              help="also print the requests by outcome per SECONDS of the replay, with the plan changes")
def report(run_path: str, as_json: bool, bin_s: float | None) -> None:
    """Report on the run in RUN/: write summary.json and PNG plots there and print a short summary.
    An archived run may keep its files compressed (requests.csv.gz or .xz)."""
    from jigsawserve.orchestrator.reporting.report import SUMMARY_FILE, format_bins, format_summary, outcomes_per_bin, plot, summarize

    summary = summarize(run_path)
    pngs = plot(run_path)
    click.echo(format_summary(summary))
    click.echo(f"wrote {SUMMARY_FILE}, {', '.join(p.name for p in pngs)} in {run_path}")
    if bin_s is not None:
        click.echo(format_bins(outcomes_per_bin(run_path, bin_s)))
    if as_json:
        click.echo(json.dumps(summary))


@cli.command("refine-profiles")
@click.argument("run_paths", metavar="RUN...", nargs=-1, required=True, type=click.Path())
@click.option("--profiles", "profiles_path", required=True, type=click.Path(),
              help="the profiles the runs were planned with (CSV file or directory)")
@click.option("--out", required=True, type=click.Path(), help="refined profile CSV to write")
@click.option("--quantile", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="of a segment shape's per-step ratios of measured to profiled batch time")
@click.option("--min-ratio", type=click.FloatRange(min=1), default=1.05, show_default=True,
              help="scale a shape's rows only when it ran slower than this")
@click.option("--min-steps", type=click.IntRange(min=1), default=3, show_default=True,
              help="controller steps a shape must have run in (each with --min-batches batches)")
@click.option("--min-batches", type=click.IntRange(min=1), default=20, show_default=True,
              help="batches a runner must have run in a controller step for the step to count")
@click.option("--min-busy", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="count a step only when the runner's processes were in batches this share of it")
@click.option("--extend", is_flag=True,
              help="scale a shape that never ran by the ratio of the same variant's nearest shape (MIG size) "
                   "with the same process count, the larger of two as near")
def refine_profiles(run_paths: tuple[str, ...], profiles_path: str, out: str, quantile: float, min_ratio: float,
                    min_steps: int, min_batches: int, min_busy: float, extend: bool) -> None:
    """Scale the profile rows of every variant x segment shape that ran slower than profiled in the
    recorded runs RUN... (their events.jsonl) by its measured slowdown; write the result to --out."""
    from .spec.profiles import save_profiles
    from jigsawserve.tools.runner_speed import extended, observations, refined, slowdowns

    profiles = load_profiles(profiles_path)
    obs = [o for run in run_paths for o in observations(Path(run), profiles, min_batches=min_batches)]
    found = slowdowns(obs, quantile, min_steps, min_busy)
    if not found:
        raise InputError(f"no runner ran {min_batches}+ batches, busy {min_busy:g} of the time, in {min_steps}+ "
                         "steps of the runs given (their events.jsonl have no runner counters, or the load was low)")
    click.echo(f"{'variant':<28} {'gpu':<12} {'segment':<8} {'steps':>5} {'ratio':>6}  rows")
    for (variant, gpu, mig, mps), (ratio, steps) in found.items():
        action = f"x{ratio:.3f}" if ratio > min_ratio else "kept"
        click.echo(f"{variant:<28} {gpu:<12} {f'{mig}g x{mps}':<8} {steps:>5} {ratio:>6.3f}  {action}")
    borrowed = extended(profiles, found) if extend else {}
    for (variant, gpu, mig, mps), ((_, _, m, n), ratio) in borrowed.items():
        action = f"x{ratio:.3f} (from {m}g x{n})" if ratio > min_ratio else "kept"
        click.echo(f"{variant:<28} {gpu:<12} {f'{mig}g x{mps}':<8} {'-':>5} {ratio:>6.3f}  {action}")
    save_profiles(refined(profiles, {**found, **{s: (r, 0) for s, (_, r) in borrowed.items()}}, min_ratio), out)
    click.echo(f"wrote {out}: {sum(r > min_ratio for r, _ in found.values())} of {len(found)} shapes seen scaled "
               f"(p{100 * quantile:g} of their steps' ratios over {min_ratio:g})"
               + (f", {sum(r > min_ratio for _, r in borrowed.values())} not seen scaled like a neighbour"
                  if extend else ""))


@cli.command()
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="the server's gRPC address")
@click.option("--model", required=True, help="the app's model (named after the app)")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Poisson arrivals at this many req/s (with --duration)")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="seconds of Poisson load (with --rate)")
@click.option("--trace", "trace_path", type=click.Path(), default=None,
              help="demand trace: per-interval CSV (interval_start_s,rate_rps) or one arrival time (s) per line")
@click.option("--peak", type=click.FloatRange(min=0, min_open=True), default=None,
              help="scale the trace so its busiest interval is this many req/s")
@click.option("--compress", type=click.FloatRange(min=0, min_open=True), default=None,
              help="replay the whole trace in this many seconds")
@click.option("--items", type=click.IntRange(min=1), default=1, show_default=True, help="items per request")
@click.option("--dataset", type=click.Path(file_okay=False), default=None,
              help="a typed app: send this dataset's requests (labels.jsonl; e.g. written by its evaluation.make), "
                   "in turn")
@click.option("--input", "files", multiple=True, metavar="[NAME=]FILE",
              help="a typed app, repeatable: requests from files, as jigsaw infer reads them (after --dataset's)")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="INPUT width (default: from the model's input metadata)")
@click.option("--slo-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="answers slower than this are 'late' (default: the SLO the served app stamps)")
@click.option("--deadline-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="send this tighter deadline with each request")
@click.option("--send-deadline/--no-send-deadline", default=True, show_default=True,
              help="send each request's absolute deadline (deadline_ns, this host's clock): only for a server "
                   "on this host or on a clock in step with it")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the arrival times")
@click.option("--out", type=click.Path(), default="requests.csv", show_default=True,
              help="per-request CSV, written as requests complete")
@click.option("--json", "as_json", is_flag=True, help="print the summary JSON as the last line")
def load(url: str, model: str, rate: float | None, duration: float | None, trace_path: str | None,
         peak: float | None, compress: float | None, items: int, dataset: str | None, files: tuple[str, ...],
         width: int | None, slo_ms: float | None, deadline_ms: float | None, send_deadline: bool, seed: int, out: str,
         as_json: bool) -> None:
    """Open-loop load on the app MODEL at URL: Poisson (--rate, --duration) or a trace (--trace); a typed
    app's requests come from --dataset or --input."""
    from jigsawserve.orchestrator.workload import trace as traces
    from jigsawserve.orchestrator.workload.loadgen import run_load, summary_text

    if trace_path is None:
        if rate is None or duration is None or peak is not None or compress is not None:
            raise click.UsageError("give either --rate and --duration (Poisson) or --trace "
                                   "[--peak RPS] [--compress SECONDS]")
        times = traces.poisson(rate, duration, seed)
        what = f"Poisson {rate:g} req/s for {duration:g} s"
    else:
        if rate is not None or duration is not None:
            raise click.UsageError("--rate/--duration and --trace are alternatives: give one")
        demand = traces.load_trace(trace_path)
        demand = traces.scale_to_peak(demand, peak) if peak else demand
        demand = traces.compress(demand, compress) if compress else demand
        times = traces.arrivals(demand, seed)
        what = (f"trace {trace_path}: {len(demand.rates)} intervals of {demand.interval_s:g} s, "
                f"peak {demand.peak_rps:.1f} req/s, {demand.duration_s:g} s")
    payloads = None
    if dataset or files:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        from jigsawserve.orchestrator.workload.typed_client import payloads as typed_payloads
        client = grpcclient.InferenceServerClient(url)
        try:
            payloads = typed_payloads(client, model, dataset, files)
        except InferenceServerException as exc:
            raise InputError(f"--model {model} at {url}: {exc.message() or exc}") from None
        finally:
            client.close()
        if not payloads:
            raise InputError(f"--dataset {dataset}: no requests in it")
    sent = f"{len(payloads)} typed request(s) in turn" if payloads else f"{items} item(s)"
    click.echo(f"sending {len(times)} requests of {sent} to {model} at {url} ({what}); log {out}", err=True)
    result = run_load(url, model, times, items, width, slo_ms, deadline_ms,
                      on_progress=lambda p: click.echo(p.line(), err=True), stream_to=out, progress_s=3.0,
                      send_deadline=send_deadline, payloads=payloads)
    summary = result.summary()
    click.echo(summary_text(summary))
    if as_json:
        click.echo(json.dumps(summary))


@cli.command()
@click.argument("app_paths", metavar="APP.yaml...", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="profile CSV to write")
@click.option("--device", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="gpu: torch variants under emulated MIG segments; cpu: numpy variants in-process")
@click.option("--gpu-type", "gpu_name", default="h200-141gb", show_default=True,
              help="GPU catalogue entry whose segment shapes are emulated (gpu device)")
@click.option("--reuse", type=click.Path(exists=True, dir_okay=False), default=None,
              help="gpu device: an earlier in-process grid (<stem>.isolated.csv); its variants are not measured "
                   "again (the calibration through Triton always runs)")
@click.option("--dataset", type=click.Path(), default=None,
              help="cpu device, typed apps: a dataset (labels.jsonl) whose requests give the items variants are "
                   "timed on")
@click.option("--accuracy", "accuracy_dataset", type=click.Path(), default=None,
              help="measure each variant's accuracy on this dataset instead of its speed (a typed app with an "
                   "evaluation); --out gets task,variant,metric,accuracy,requests,others")
def profile(app_paths: tuple[str, ...], out: str, device: str, gpu_name: str, reuse: str | None,
            dataset: str | None, accuracy_dataset: str | None) -> None:
    """Measure the apps' variants per segment and batch into the canonical profile CSV.

    On a GPU: in-process under emulated MIG segments, then calibrated to what Triton serves
    (tools/profile_gpu.py). With --accuracy: each variant's accuracy on a dataset, the app's metric
    with this variant at its task and the most accurate one by the spec at the others (tools/evaluate.py)."""
    apps = [load_app(p) for p in app_paths]
    if accuracy_dataset:
        from jigsawserve.tools.evaluate import load_dataset, variant_accuracy, write_accuracy
        rows = [r for a in apps for r in variant_accuracy(a, load_dataset(a, accuracy_dataset),
                                                          progress=lambda line: click.echo(line, err=True))]
        write_accuracy(rows, out)
        click.echo(f"wrote {len(rows)} variants' accuracy to {out}")
        return
    kinds = {dict(v.runtime).get("kind", "numpy_mlp") for a in apps for t in a.tasks for v in t.variants}
    if device == "auto":
        device = "gpu" if kinds == {"torch"} else "cpu"
    if device == "cpu":
        from jigsawserve.tools.profile_cpu import profile_cpu
        if kinds - {"numpy_mlp"} and not all(a.typed for a in apps if any(
                dict(v.runtime).get("kind", "numpy_mlp") != "numpy_mlp" for t in a.tasks for v in t.variants)):
            raise InputError(f"--device cpu profiles numpy_mlp variants and typed apps' variants; these apps have "
                             f"{sorted(kinds)}")
        try:
            rows = profile_cpu(apps, out, progress=lambda line: click.echo(line, err=True), dataset=dataset)
        except ValueError as exc:
            raise InputError(f"--dataset: {exc}") from None
        click.echo(f"wrote {rows} rows to {out} (device: this CPU)")
        return
    from jigsawserve.tools.profile_gpu import run as profile_gpu
    try:
        result = profile_gpu(apps, gpu_type(gpu_name), out, progress=lambda line: click.echo(line, err=True),
                             reuse=reuse)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    rep = result.report
    click.echo(f"wrote {len(result.rows)} rows to {out} ({rep['rows_measured']} measured, the rest interpolated) "
               f"in {rep['seconds']:.0f} s on {rep['device']}; report {out}.report.json")
    if rep.get("calibration"):
        cal = rep["calibration"]
        click.echo(f"calibrated to Triton: served p95 = {cal['offset_ms']} ms + {cal['factor']} x in-process "
                   f"(fit error mean {cal['fit_mean_abs_error_pct']}%, max {cal['fit_max_abs_error_pct']}%)")
    if rep.get("validation"):
        click.echo(f"interpolation error on held-out points: mean {rep['validation_mean_abs_error_pct']}%, "
                   f"max {rep['validation_max_abs_error_pct']}%")


def _trace(trace_path: str | None, peak: float, duration: float):
    """The demand trace: a file or the shipped synthetic day, scaled to ``peak`` and replayed in ``duration`` s."""
    from jigsawserve.orchestrator.workload.trace import compress, load_trace, scale_to_peak, synthetic_diurnal
    trace = load_trace(trace_path) if trace_path else synthetic_diurnal()
    return compress(scale_to_peak(trace, peak), duration)


def _run_experiment(app_path: str, profiles_path: str, gpu_name: str | None, features: str, method: str,
                    time_limit: float, gpus: int | None, trace_path: str | None, peak: float, duration: float,
                    interval: float, out: str, inventory: str | None, forecaster: str, system: str,
                    headroom: float, notes: str = "", surge_poll: float | None = None,
                    shed_limit: float | None = None, latency_model: str = "batches",
                    dataset: str | None = None, standby: bool = False) -> dict:
    from .loop.experiment import Experiment, run as run_exp
    from .serving.inventory import detect

    app, profiles, gpu = _load(app_path, profiles_path, gpu_name)
    opts = PlanOptions(features=Features.parse(features), gpus=gpus, method=method, time_limit=time_limit,
                       latency_model=latency_model)
    exp = Experiment(app=app, profiles=profiles, gpu=gpu, opts=opts, inventory=detect(inventory),
                     trace=_trace(trace_path, peak, duration), interval_s=interval, out=Path(out),
                     system=system or opts.features.label, forecaster=forecaster, notes=notes,
                     policy=_policy(headroom, surge_poll, shed_limit, standby), dataset=Path(dataset) if dataset else None)
    try:
        return run_exp(exp, progress=lambda line: click.echo(line, err=True))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _policy(headroom: float, surge_poll: float | None, shed_limit: float | None = None, standby: bool = False):
    """The controller's policy: the defaults, with the options given."""
    from .loop.controller import Policy
    given = {"surge_poll_s": surge_poll, "shed_limit": shed_limit}
    return Policy(headroom=headroom, standby=standby, **{k: v for k, v in given.items() if v is not None})


STANDBY_HELP = ("keep the runners of a plan for (1 + headroom)^2 x the planned demand loaded beside the live plan's, "
                "in no route (within the GPUs' spare slices on real MIG, their slices with MIG emulated): a "
                "scale-up it covers is a routing swap, nothing loads")


SURGE_HELP = ("between measurements, check this often (s) whether arrivals already exceed the plan and replan up "
              "at once; 0: never [default: 2]")
SHED_HELP = ("in those checks, step the plan up by the headroom when its stages shed (drop, or answer late) more "
             "than this share of the requests; 0: never [default: 0.02]")


def _experiment_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="print the report summary JSON as the last line")(f)
    f = click.option("--dataset", type=click.Path(file_okay=False), default=None,
                     help="a typed app: the requests to send, in turn (labels.jsonl; default: 32 that its "
                          "evaluation.make writes into the run directory)")(f)
    f = click.option("--standby", is_flag=True, help=STANDBY_HELP)(f)
    f = click.option("--shed-limit", type=click.FloatRange(min=0, max=1), default=None, help=SHED_HELP)(f)
    f = click.option("--surge-poll", type=click.FloatRange(min=0), default=None, help=SURGE_HELP)(f)
    f = click.option("--headroom", type=click.FloatRange(min=0), default=0.3, show_default=True,
                     help="plan for the forecast x (1 + headroom): runners stay below ~1/(1 + headroom) busy")(f)
    f = click.option("--forecaster", type=click.Choice(["holt", "moving-average"]), default="holt", show_default=True,
                     help="holt: level + trend + residual-quantile slack; moving-average: the paper's (5 bins + 5%)")(f)
    f = click.option("--inventory", default=None, type=click.Path(),
                     help="simulated GPU inventory JSON (default: NVML; none = CPU)")(f)
    f = click.option("--interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
                     help="controller interval in seconds (metrics, forecast, replan)")(f)
    f = click.option("--duration", type=click.FloatRange(min=1), default=60.0, show_default=True,
                     help="seconds the whole trace is replayed in")(f)
    f = click.option("--peak", type=click.FloatRange(min=0, min_open=True), required=True,
                     help="the trace is scaled to this peak (req/s)")(f)
    f = click.option("--trace", "trace_path", type=click.Path(), default=None,
                     help="demand trace file (default: the shipped synthetic diurnal day)")(f)
    return f


def _print_report(summary: dict, out: str, as_json: bool) -> None:
    from jigsawserve.orchestrator.reporting.report import format_summary
    click.echo(format_summary(summary))
    click.echo(f"report: {Path(out) / 'summary.json'} and plots in {out}")
    if as_json:
        click.echo(json.dumps(summary))


@cli.command()
@_options
@_experiment_options
@click.option("--gpus", type=int, default=None, help="GPUs available (default: unlimited)")
@click.option("--out", required=True, type=click.Path(), help="run directory")
@click.option("--system", default="", help="label of this run in the report (default: the features)")
def experiment(app_path: str, profiles_path: str, gpu_type: str | None, features: str, time_limit: float,
               method: str, latency_model: str, trace_path: str | None, peak: float, duration: float, interval: float,
               inventory: str | None, forecaster: str, headroom: float, surge_poll: float | None,
               shed_limit: float | None, standby: bool, dataset: str | None, as_json: bool, gpus: int | None, out: str,
               system: str) -> None:
    """Serve APP.yaml under a replayed demand trace with live replanning, then report (closed loop)."""
    summary = _run_experiment(app_path, profiles_path, gpu_type, features, method, time_limit, gpus, trace_path,
                              peak, duration, interval, out, inventory, forecaster, system, headroom,
                              surge_poll=surge_poll, shed_limit=shed_limit, latency_model=latency_model,
                              dataset=dataset, standby=standby)
    _print_report(summary, out, as_json)


def _mig_type_of(device_name: str):
    """The catalogue's MIG GPU type for an NVML device name (its shapes are what the demo emulates): A100,
    H100, H200 by name; any other GPU as an H100's shapes scaled to its SMs and memory by the binding."""
    for marker, name in (("A100", "a100-80gb"), ("H200", "h200-141gb"), ("H100", "h100-80gb")):
        if marker in device_name.upper():
            return gpu_type(name)
    return gpu_type("h100-80gb")


def _gpu_available() -> bool:
    """An NVIDIA GPU without MIG (NVML) and torch, for the GPU demo."""
    import importlib.util

    from .serving.inventory import detect
    inventory = detect(None)
    return bool(inventory.gpus) and not inventory.gpus[0].mig_enabled and importlib.util.find_spec("torch") is not None


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(), help="run directory")
@click.option("--duration", type=click.FloatRange(min=10), default=60.0, show_default=True,
              help="seconds the synthetic day is replayed in")
@click.option("--peak", type=click.FloatRange(min=0, min_open=True), default=None,
              help="peak demand of the replayed day (req/s; default: 40 on a CPU, 30% of the planned capacity on a GPU); "
                   "with --app: replay the day (closed loop, the controller replanning) instead of --requests")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="auto: the GPU when NVML sees one (without MIG) and torch is installed")
@click.option("--json", "as_json", is_flag=True, help="print the report summary JSON as the last line")
@click.option("--app", "typed_app", type=click.Path(), default=None,
              help="instead: this typed app with ground truth (e.g. examples/ocr/app.yaml) served on the CPU, its "
                   "answers scored (quality) and its fan-out measured")
@click.option("--requests", type=click.IntRange(min=1), default=40, show_default=True,
              help="with --app: ground-truth requests to send")
@click.option("--demand", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="with --app: the demand (req/s) the plan is made for, on 4 whole-CPU slices")
@click.option("--nodes", type=click.IntRange(min=1), default=None,
              help="instead: the CPU example on a local Ray cluster of this many nodes (each its own raylet and "
                   "tritonserver, on 127.0.0.1), the day sent through the front door, the cluster controller replanning "
                   "the split across the nodes")
def demo(out: str, duration: float, peak: float | None, device: str, as_json: bool, typed_app: str | None,
         requests: int, demand: float, nodes: int | None) -> None:
    """The bundled example end to end: profile, plan, render, serve, replay a day with live replanning, report.

    On a CPU: examples/cpu/app.yaml (numpy stand-in variants, emulated device time), profiled here
    first, on 4 whole-CPU slices. On a GPU: examples/h200/traffic.yaml (torchvision models as CUDA
    graphs) on one GPU with MIG emulated by MPS (the MIG shapes of an A100, H100 or H200, by the GPU's name),
    with examples/h200/profiles.csv on an H200, profiles.<gpu type>.csv beside it where one exists (H100),
    and a fresh `jigsaw profile` (about 5 minutes, written into --out) elsewhere.

    With --app: a typed app with an evaluation, planned from the profiles.csv beside it (profiled here
    first when there is none), served, sent a fresh ground-truth dataset; the summary has its quality
    (the app's metric on what the server returned) and per edge the planned and measured fan-out. With
    --app and --peak: the closed loop instead (the day replayed with the app's evaluation.make requests,
    the controller replanning and refining fan-out), reported as `jigsaw report` does.

    With --nodes N: the CPU example served across N nodes of a local Ray cluster (tools/cluster_demo.py), the
    day (peak 40 req/s by default) replayed through the front door while the cluster controller replans the split
    across the nodes and applies it node by node; the summary adds "nodes" and per node its slices and requests,
    the plans and the nodes lost or added, and per-node plots (nodes.png, placement-nodes.png)."""
    root = Path(__file__).resolve().parent.parent
    Path(out).mkdir(parents=True, exist_ok=True)
    if nodes:
        _cluster_demo(root, Path(out), nodes, peak or 40.0, duration, as_json)
        return
    if typed_app:
        _typed_demo(Path(typed_app), Path(out), requests, demand, as_json, peak, duration)
        return
    if device == "gpu" or (device == "auto" and _gpu_available()):
        app_path = root / "examples" / "h200" / "traffic.yaml"
        from .serving.inventory import detect
        device_name = detect(None).gpus[0].name
        catalogue = _mig_type_of(device_name)
        profiles_path = root / "examples" / "h200" / ("profiles.csv" if catalogue.name == "h200-141gb"
                                                      else f"profiles.{catalogue.name}.csv")
        if not profiles_path.is_file():
            from jigsawserve.tools.profile_gpu import run as profile_gpu
            profiles_path = Path(out) / "profiles.csv"
            click.echo(f"no profile for {device_name}: profiling {app_path} on it as {catalogue.name} (MIG emulated "
                       f"with MPS) -> {profiles_path}", err=True)
            profile_gpu([load_app(app_path)], catalogue, str(profiles_path),
                        progress=lambda line: click.echo(line, err=True))
        gpus, label, headroom = 1, "A+S+T (demo, GPU, MIG emulated)", 0.5
        if peak is None:
            app, profiles, gpu = _load(str(app_path), str(profiles_path), None)
            opts = PlanOptions(features=Features.parse("ast"), gpus=1)
            peak = 0.3 * max_demand(app, profiles, gpu, opts).max_demand_rps
    else:
        from jigsawserve.tools.profile_cpu import profile_cpu
        app_path = root / "examples" / "cpu" / "app.yaml"
        profiles_path = Path(out) / "profiles.csv"
        click.echo(f"profiling {app_path} on this CPU -> {profiles_path}", err=True)
        profile_cpu([load_app(app_path)], str(profiles_path), repeats=10,
                    progress=lambda line: click.echo(f"  {line}", err=True))
        gpus, label, headroom, peak = 4, "A+S+T (demo, CPU)", DEMO_HEADROOM, peak or 40.0
    summary = _run_experiment(str(app_path), str(profiles_path), None, "ast", "auto", 2.0, gpus, None, peak,
                              duration, max(2.0, duration / 20), out, None, "holt", label, headroom, standby=gpus == 1,
                              notes=f"jigsaw demo: {app_path.relative_to(root)}, synthetic diurnal day compressed "
                                    f"to {duration:g} s")
    _print_report(summary, out, as_json)


def _cluster_demo(root: Path, out: Path, nodes: int, peak: float, duration: float, as_json: bool) -> None:
    """``jigsaw demo --nodes N``: the CPU example profiled here, served on a local N-node Ray cluster."""
    from jigsawserve.tools import cluster_demo
    from jigsawserve.tools.profile_cpu import profile_cpu

    app_path = root / "examples" / "cpu" / "app.yaml"
    profiles_path = out / "profiles.csv"
    click.echo(f"profiling {app_path} on this CPU -> {profiles_path}", err=True)
    profile_cpu([load_app(app_path)], str(profiles_path), repeats=10,
                progress=lambda line: click.echo(f"  {line}", err=True))
    summary = cluster_demo.run(load_app(app_path), profiles_path, nodes, out, peak, duration,
                               progress=lambda line: click.echo(line, err=True))
    click.echo(cluster_demo.format_summary(summary))
    click.echo(f"summary: {out / 'summary.json'}")
    if as_json:
        click.echo(json.dumps(summary))


def _typed_demo(app_path: Path, out: Path, requests: int, demand: float, as_json: bool, peak: float | None,
                duration: float) -> None:
    """``jigsaw demo --app``: ``requests`` ground-truth requests scored (typed_demo), or with ``peak`` the closed
    loop on the app's real requests (a synthetic day, the controller refining runner speeds and fan-out)."""
    from jigsawserve.tools import typed_demo
    from jigsawserve.tools.evaluate import make_dataset
    from jigsawserve.tools.profile_cpu import profile_cpu
    from .spec.typed import check_variants

    app = load_app(app_path)
    if app.typed is None or not app.typed.evaluation:
        raise InputError(f"--app {app_path}: a typed app with an evaluation (ground truth) is needed")
    check_variants(app)
    profiles_path = app_path.parent / "profiles.csv"
    if not profiles_path.is_file():
        profiles_path = out / "profiles.csv"
        click.echo(f"profiling {app_path} on this CPU -> {profiles_path}", err=True)
        profile_cpu([app], str(profiles_path), repeats=5, progress=lambda line: click.echo(line, err=True),
                    dataset=str(make_dataset(app, out / "profile-dataset", 8)))
    if peak is not None:
        summary = _run_experiment(str(app_path), str(profiles_path), None, "ast", "auto", 2.0, 4, None, peak, duration,
                                  max(2.0, duration / 20), str(out), None, "holt", "A+S+T (demo, typed, CPU)", 0.3,
                                  notes=f"jigsaw demo --app {app_path}: synthetic diurnal day compressed to "
                                        f"{duration:g} s, the app's evaluation.make requests")
        _print_report(summary, str(out), as_json)
        return
    summary = typed_demo.run(app, profiles_path, out, requests=requests, demand=demand,
                             progress=lambda line: click.echo(line, err=True))
    q, fan = summary["quality"], summary["fanout"]
    click.echo(f"{summary['answered']}/{summary['requests']} answered ({summary['errors']} errors), "
               f"p50 {summary['latency_ms'].get('p50', 0):.0f} ms, p95 {summary['latency_ms'].get('p95', 0):.0f} ms; "
               f"{q['metric']} {q['measured']:.4f} over {q['items']} requests; fan-out "
               + ", ".join(f"{e} planned {v['planned']:g} measured {v['measured']}" for e, v in fan.items())
               + f"; bad input: {'healthy after' if summary['bad_input']['healthy_after'] else 'UNHEALTHY after'}")
    click.echo(f"summary: {out / 'summary.json'}")
    if as_json:
        click.echo(json.dumps(summary))


@cli.command()
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="the server's gRPC address")
@click.option("--model", required=True, help="the typed app's model (named after the app)")
@click.option("--input", "files", multiple=True, required=True, metavar="[NAME=]FILE",
              help="repeatable: with one model input, each FILE is a request; with several, NAME=FILE pairs make one")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="seconds to wait for each answer")
@click.option("--json", "as_json", is_flag=True, help="print the answers as JSON (one list, the last line)")
def infer(url: str, model: str, files: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Send real inputs (e.g. a PNG) to a typed app and print its answers per item, with the variant that
    answered each. BYTES inputs get the file's bytes, UINT8 frames the image decoded here, others a .npy."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from jigsawserve.orchestrator.workload.typed_client import answers, file_requests, infer as send, input_specs, sink_outputs, tensor_from_file

    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            specs, sinks = {s.name: s for s in input_specs(client, model)}, sink_outputs(client, model)
        except InferenceServerException as exc:
            raise InputError(f"--model {model} at {url}: {exc.message() or exc}") from None
        batches = file_requests(specs, files, model)
        results, failed = [], 0
        for given in batches:
            tensors = {n: tensor_from_file(specs[n], f) for n, f in given.items()}
            label = ", ".join(given.values())
            try:
                answer = answers(send(client, model, tensors, timeout_s=timeout), sinks)
            except InferenceServerException as exc:
                failed += 1
                results.append({"input": label, "error": exc.message() or str(exc)})
                click.echo(f"{label}: error: {results[-1]['error']}", err=True)
                continue
            results.append({"input": label, "answers": answer})
            for sink, items in answer.items():
                click.echo(f"{label}: {sink}: {len(items)} item(s)")
                for item in items:
                    fields = "  ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:.4g}"
                                       if isinstance(v, float) else f"{k}={v}" for k, v in item.items() if k != "variant")
                    click.echo(f"  [{item['variant']}] {fields}")
        if as_json:
            click.echo(json.dumps(results))
        if failed:
            raise click.ClickException(f"{failed} of {len(batches)} request(s) failed")
    finally:
        client.close()


@cli.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the tarball to write (.tar.xz)")
@click.option("--python", "python_version", default="{}.{}".format(*sys.version_info[:2]), show_default=True,
              help="the target's Python (X.Y): its backend stub and wheels are packed")
@click.option("--platform", "platforms", multiple=True,
              help="target wheel platform tag, repeatable; older manylinux tags are implied "
                   "[default: manylinux_2_35_<this machine>, the glibc the runtime needs]")
@click.option("--deps/--no-deps", default=True, show_default=True,
              help="pack the wheels of the dependencies (--no-deps: the project's wheel and --require'd ones only)")
@click.option("--wheels-from", type=click.Path(file_okay=False), default=None,
              help="take every wheel from this directory, with no package index (offline)")
@click.option("--exclude", multiple=True, metavar="NAME[,NAME...]",
              help="packages the target already has (or a run does not import): not packed, nor what only they "
                   "need; install.sh checks the target's versions")
@click.option("--require", multiple=True, metavar="REQ",
              help="another requirement, e.g. 'scs<3.3'; one naming a project requirement replaces it")
@click.option("--project", type=click.Path(file_okay=False), default=None,
              help="the project source to build the wheel of (default: this checkout)")
@click.option("--level", type=click.IntRange(0, 9), default=9, show_default=True, help="xz preset")
@click.option("--repack/--no-repack", default=True, show_default=True,
              help="store the wheels uncompressed inside the tarball, so that xz compresses their contents")
def bundle(out: str, python_version: str, platforms: tuple[str, ...], deps: bool, wheels_from: str | None,
           exclude: tuple[str, ...], require: tuple[str, ...], project: str | None, level: int, repack: bool) -> None:
    """Pack the tritonserver runtime, the project's wheel and its dependencies' wheels for another host's
    Python into one .tar.xz that installs offline (tar xf it, then ./install.sh --target DIR)."""
    from .packaging.bundle import BundleOptions, build_bundle

    opts = BundleOptions(out=Path(out), python=python_version, platforms=platforms, deps=deps,
                         wheels_from=Path(wheels_from) if wheels_from else None, exclude=exclude, require=require,
                         project=Path(project) if project else None, level=level, repack=repack)
    report = build_bundle(opts, progress=lambda line: click.echo(line, err=True))
    click.echo(f"wrote {report.out}: {report.size / 2**20:.1f} MiB")
    click.echo(report.summary())


@cli.command()
@_options
@click.option("--plan", "plan_path", required=True, type=click.Path(), help="the plan the server runs now")
@click.option("--repo", "repo_path", required=True, type=click.Path(), help="the repository the server serves")
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="the server's gRPC address")
@click.option("--metrics-url", default="http://127.0.0.1:8002/metrics", show_default=True,
              help="the server's Prometheus metrics endpoint (arrivals, variant items, runner batch times)")
@click.option("--control-key", default=None, help=f"model-control key (default: REPO/{KEY_FILE})")
@click.option("--interval", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="seconds between measurements (and possible replans)")
@click.option("--gpus", type=int, default=None, help="GPUs available (default: unlimited)")
@click.option("--headroom", type=click.FloatRange(min=0), default=0.3, show_default=True,
              help="plan for the forecast x (1 + headroom)")
@click.option("--surge-poll", type=click.FloatRange(min=0), default=None, help=SURGE_HELP)
@click.option("--shed-limit", type=click.FloatRange(min=0, max=1), default=None, help=SHED_HELP)
@click.option("--standby", is_flag=True, help=STANDBY_HELP)
@click.option("--forecaster", type=click.Choice(["holt", "moving-average"]), default="holt", show_default=True,
              help="holt: level + trend + residual-quantile slack; moving-average: the paper's (5 bins + 5%)")
@click.option("--inventory", default=None, type=click.Path(), help="simulated GPU inventory JSON")
@click.option("--events", default="events.jsonl", show_default=True, type=click.Path(),
              help="where decisions are logged (orchestrator/reporting/report.py reads it)")
def watch(app_path: str, profiles_path: str, gpu_type: str | None, features: str, time_limit: float, method: str,
          latency_model: str, plan_path: str, repo_path: str, url: str, metrics_url: str, control_key: str | None, interval: float,
          gpus: int | None, headroom: float, surge_poll: float | None, shed_limit: float | None, standby: bool,
          forecaster: str, inventory: str | None, events: str) -> None:
    """Keep a running server's plan matched to its demand: measure, forecast, replan, apply (Ctrl-C stops)."""
    import threading

    import tritonclient.grpc as grpcclient

    from .serving.control import Applier, control_headers, reload_runner
    from .loop.controller import Controller, EventLog
    from .loop.experiment import FORECASTERS
    from .serving.inventory import detect
    from .planning.plan import Plan

    app, profiles, gpu = _load(app_path, profiles_path, gpu_type)
    current = Plan.load(plan_path)
    if current.app != app.name:
        raise InputError(f"--plan: {plan_path} is a plan for app {current.app!r}, not {app.name!r}")
    repo = Path(repo_path)
    key_file = repo / KEY_FILE
    key = control_key or (key_file.read_text().strip() if key_file.exists() else None)
    client = grpcclient.InferenceServerClient(url)
    headers = control_headers(key, grpc=True)
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    opts = PlanOptions(features=Features.parse(features), gpus=gpus, method=method, time_limit=time_limit,
                       latency_model=latency_model)
    applier = Applier(repo, client, headers, progress=echo)
    controller = Controller(app, profiles, gpu, opts, detect(inventory), repo, metrics_url, FORECASTERS[forecaster](),
                            EventLog(Path(events), time.time()), _policy(headroom, surge_poll, shed_limit, standby),
                            apply_plan=applier,
                            progress=echo)
    controller.plan = current
    controller.reload_runner = lambda name: reload_runner(client, headers, repo, name)
    if standby:
        controller.restandby()
    echo(f"watching {app.name} at {url} (metrics {metrics_url}) every {interval:g} s; plan for "
         f"{current.demand_rps:g} req/s; decisions in {events}")
    try:
        controller.run(interval, threading.Event())
    except KeyboardInterrupt:
        echo("stopped")
    finally:
        applier.wait()
        client.close()


@cli.command()
@click.argument("plan_path", metavar="PLAN.json", type=click.Path())
@click.option("--image", required=True, help="the pods' image: Ray, the jigsaw runtime and tritonserver")
@click.option("--namespace", default="default", show_default=True, help="the RayCluster's namespace")
@click.option("--gpu-namespace", default="gpu-operator", show_default=True,
              help="the GPU operator's namespace, where its MIG manager reads the mig-parted ConfigMap")
@click.option("--command", "command", default=None,
              help="the driver the head runs once Ray answers (exec'd; the plan is at /etc/jigsaw/plan.json)")
@click.option("--node", default="node-0", show_default=True, help="the node name of a single-node PLAN.json")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for raycluster.yaml and mig-config.yaml")
def k8s(plan_path: str, image: str, namespace: str, gpu_namespace: str, command: str | None, node: str,
        out: str) -> None:
    """Render what a Kubernetes operator applies for PLAN.json (a cluster plan, or one node's plan): a KubeRay
    RayCluster and the GPU operator's mig-parted config, and print the node labels and the order to apply."""
    from shlex import quote

    from .packaging.k8s import MIG_PARTED_CONFIGMAP, label_commands, load_cluster_plan, render as render_k8s

    manifests = render_k8s(load_cluster_plan(plan_path, node), image, namespace, command, gpu_namespace)
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "raycluster.yaml").write_text(manifests.raycluster)
        (folder / "mig-config.yaml").write_text(manifests.mig_config)
    except OSError as exc:
        raise InputError(f"{out}: cannot write the manifests ({exc.strerror})") from None
    policy = json.dumps({"spec": {"mig": {"strategy": "mixed"},
                                  "migManager": {"config": {"name": MIG_PARTED_CONFIGMAP}}}})
    click.echo(f"wrote {folder / 'raycluster.yaml'} (RayCluster {manifests.name} in {namespace}, one worker group "
               f"per node) and {folder / 'mig-config.yaml'}; to apply (nothing was applied):")
    for line in [f"kubectl apply -f {quote(str(folder / 'mig-config.yaml'))}",
                 f"kubectl patch clusterpolicies.nvidia.com/cluster-policy --type merge -p {quote(policy)}",
                 *label_commands(manifests), f"kubectl apply -f {quote(str(folder / 'raycluster.yaml'))}"]:
        click.echo(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps bad input to exit 1 and infeasible SLOs to exit 2."""
    try:
        cli.main(args=argv, prog_name="jigsaw", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.UsageError as exc:
        exc.show()
        return EXIT_INPUT
    except click.exceptions.ClickException as exc:
        exc.show()
        return EXIT_INPUT
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_INPUT
    except InfeasibleError as exc:
        click.echo(f"infeasible: {exc}", err=True)
        return EXIT_INFEASIBLE
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
