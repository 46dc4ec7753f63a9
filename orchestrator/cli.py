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

from .appspec import load_app
from .capacity import max_demand
from .errors import InfeasibleError, InputError
from .features import Features
from .gpus import gpu_type
from .planner import METHODS, PlanOptions, make_plan
from .profiles import default_gpu, load_profiles

EXIT_INPUT, EXIT_INFEASIBLE = 1, 2


def _options(f):
    f = click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
                     help="auto: exact MILP within --time-limit, else LP relaxation + rounding")(f)
    f = click.option("--time-limit", type=float, default=2.0, show_default=True,
                     help="seconds the exact MILP may take per solve")(f)
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
def cli() -> None:
    """JigsawServe: plan and serve compound inference on GPU slices."""


@cli.command()
@_options
@click.option("--demand", type=float, required=True, help="requests per second entering the app")
@click.option("--gpus", type=int, default=None, help="GPUs available (default: unlimited)")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="objective weight of accuracy")
@click.option("--beta", type=float, default=None,
              help="objective cost per slice (default 0.035 x 28 / available slices, or 0.035)")
@click.option("--out", type=click.Path(), default=None, help="write the plan JSON here")
def plan(app_path: str, profiles_path: str, gpu_type: str | None, features: str, time_limit: float,
         method: str, demand: float, gpus: int | None, alpha: float, beta: float | None, out: str | None) -> None:
    """Plan APP.yaml for a demand: variants, segments, batch sizes and instance counts."""
    app, profiles, gpu = _load(app_path, profiles_path, gpu_type)
    opts = PlanOptions(features=Features.parse(features), gpus=gpus, alpha=alpha, beta=beta,
                       method=method, time_limit=time_limit)
    result = make_plan(app, profiles, gpu, demand, opts)
    click.echo(result.summary())
    if out:
        result.save(out)
        click.echo(f"wrote {out}")


@cli.command()
@_options
@click.option("--gpus", type=int, required=True, help="GPUs available")
@click.option("--json", "as_json", is_flag=True, help='print {"max_demand_rps": ...} as the last line')
def capacity(app_path: str, profiles_path: str, gpu_type: str | None, features: str, time_limit: float,
             method: str, gpus: int, as_json: bool) -> None:
    """The maximum demand (req/s) that GPUS can serve within both SLOs."""
    app, profiles, gpu = _load(app_path, profiles_path, gpu_type)
    if gpus < 1:
        raise InputError(f"--gpus: expected at least 1, got {gpus}")
    opts = PlanOptions(features=Features.parse(features), gpus=gpus, method=method, time_limit=time_limit)
    click.echo(f"bisecting the demand for {app.name} on {gpus} {gpu.name} GPU(s), features {opts.features.label}",
               err=True)
    cap = max_demand(app, profiles, gpu, opts, progress=lambda line: click.echo(line, err=True))
    slices = cap.plan.slices if cap.plan else 0
    click.echo(f"max serviceable demand: {cap.max_demand_rps:.1f} req/s ({slices} slices at that demand, "
               f"{cap.probes} solves, {cap.seconds:.1f} s)")
    if as_json:
        click.echo(json.dumps({"max_demand_rps": cap.max_demand_rps, "features": opts.features.label,
                               "gpus": gpus, "gpu_type": gpu.name, "probes": cap.probes,
                               "max_probe_seconds": max(cap.probe_seconds, default=0.0)}))


KEY_FILE, MANIFEST_FILE = ".jigsaw-control-key", "jigsaw.json"


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
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--control-key", default=None,
              help=f"value of the jigsaw-control-key header that model load/unload needs (default: random); "
                   f"written to REPO/{KEY_FILE}")
def serve(repo_path: str, host: str, http_port: int, grpc_port: int, metrics_port: int,
          control_key: str | None) -> None:
    """Serve the model repository REPO with Triton until SIGINT or SIGTERM.

    The python and jigsaw backends are prepared in a temporary directory (removed on exit): Triton
    takes every subdirectory of REPO for a model. An MPS control daemon is started first when
    REPO/jigsaw.json has "uses_mps": true and MPS is available.
    """
    from .server import MpsDaemon, TritonServer
    from .tritonenv import prepare_backend_dir, server_env

    repo = Path(repo_path).resolve()
    if not repo.is_dir():
        raise InputError(f"REPO: no such directory: {repo_path}")
    key = control_key or secrets.token_hex(16)
    _write_key(repo / KEY_FILE, key)
    click.echo(f"control key{'' if control_key else ' ' + key} in {repo / KEY_FILE} "
               f"(header jigsaw-control-key)")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    try:
        with ExitStack() as stack:
            env = server_env()
            if _uses_mps(repo):
                if MpsDaemon.available():
                    mps = stack.enter_context(MpsDaemon())
                    env.update(mps.env())
                    click.echo(f"MPS control daemon pid {mps.pid}, pipe {mps.env()['CUDA_MPS_PIPE_DIRECTORY']}")
                else:
                    click.echo("warning: REPO asks for MPS, which is unavailable here: serving without", err=True)
            backends = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jigsaw-backends-")))
            server = stack.enter_context(TritonServer(repo, prepare_backend_dir(backends), host=host,
                                                      http_port=http_port, grpc_port=grpc_port,
                                                      metrics_port=metrics_port, control_key=key, env=env))
            click.echo(f"tritonserver pid {server.pid} ready: http {server.http_url}, grpc {server.grpc_url}, "
                       f"metrics {server.metrics_url}, log {server.log_path}")
            try:
                while server.exit_code is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                for sig in handlers:
                    signal.signal(sig, signal.SIG_IGN)  # let the shutdown finish
                click.echo("stopping")
            else:
                raise click.ClickException(f"tritonserver exited with code {server.exit_code}; last lines of "
                                           f"{server.log_path}:\n{server.log_tail()}")
    except RuntimeError as exc:  # the server or MPS failed to start
        raise click.ClickException(str(exc)) from exc
    finally:
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
    from .inventory import detect
    from .plan import Plan
    from .render import build_configs, write_repository

    inv = detect(inventory)
    rendered = build_configs(Plan.load(plan_path), inv)
    write_repository(rendered, Path(out))
    click.echo(f"wrote {len(rendered.configs)} models to {out} (ensemble {rendered.manifest['ensemble']!r}; "
               f"devices: {inv.source})")
    for label, procs in rendered.manifest["bindings"].items():
        click.echo(f"  {label}: {'; '.join(procs)}")


@cli.command()
@click.argument("plan_path", metavar="PLAN.json", type=click.Path())
@click.option("--repo", "repo_path", required=True, type=click.Path(), help="the repository the server serves")
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="the server's gRPC address")
@click.option("--control-key", default=None, help=f"model-control key (default: REPO/{KEY_FILE})")
@click.option("--inventory", default=None, type=click.Path(), help="simulated GPU inventory JSON")
def apply(plan_path: str, repo_path: str, url: str, control_key: str | None, inventory: str | None) -> None:
    """Move the server at URL to PLAN.json without failing requests in flight (rolls back on failure)."""
    import tritonclient.grpc as grpcclient

    from .control import apply as apply_plan, control_headers
    from .inventory import detect
    from .plan import Plan
    from .render import build_configs

    repo = Path(repo_path)
    key_file = repo / KEY_FILE
    key = control_key or (key_file.read_text().strip() if key_file.exists() else None)
    rendered = build_configs(Plan.load(plan_path), detect(inventory))
    client = grpcclient.InferenceServerClient(url)
    try:
        report = apply_plan(rendered, repo, client, control_headers(key, grpc=True),
                            progress=lambda line: click.echo(f"  {line}", err=True))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"applied: {len(report.loaded)} loaded, {len(report.unchanged)} unchanged, "
               f"{len(report.unloaded)} unloaded")


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
