"""The ``jigsaw`` command line. Exit codes: 0 success, 1 bad input, 2 no plan meets the SLOs."""
from __future__ import annotations

import json
import sys

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
