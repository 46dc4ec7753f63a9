"""Tests for the ``jigsaw`` CLI, run in-process through jigsawserve.orchestrator.cli.main on small, fast inputs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jigsawserve.orchestrator.planning.capacity as capacity_mod
from jigsawserve.orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROFILES = str(ROOT / "examples" / "a100" / "profiles.csv")
TAGGING = str(ROOT / "examples" / "tagging.yaml")

TINY_TEMPLATE = """\
name: tiny
latency_slo_ms: {slo}
accuracy_slo: 0.9
tasks:
  scene:
    variants:
      resnet50: {{accuracy: 76.130}}
      resnet152: {{accuracy: 78.312}}
  objects:
    variants:
      densenet121: {{accuracy: 74.434}}
edges:
  - {{from: scene, to: objects, factor: 2.0}}
"""

ONE_TASK = """\
name: one
latency_slo_ms: 100
accuracy_slo: 0.9
tasks:
  scene:
    variants:
      resnet50: {accuracy: 76.130}
      resnet152: {accuracy: 78.312}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    """A two-task chain (scene -> objects) over three of the measured A100 variants."""
    return write(tmp_path, "tiny.yaml", TINY_TEMPLATE.format(slo=100))


@pytest.fixture
def one_task(tmp_path: Path) -> str:
    return write(tmp_path, "one.yaml", ONE_TASK)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def last_json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "no stdout"
    return json.loads(lines[-1])


# ---------------------------------------------------------------- plan

def test_plan_tiny_app_writes_plan_json(capsys, tiny: str, tmp_path: Path) -> None:
    out_path = tmp_path / "plan.json"
    rc, out, err = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "500",
                           "--gpus", "4", "--out", out_path)
    assert rc == 0, err
    for task in ("scene", "objects"):
        assert f"task {task}" in out
    assert f"wrote {out_path}" in out
    doc = json.loads(out_path.read_text())
    for key in ("tasks", "accuracy", "slices", "gpus", "paths", "placement", "solve_seconds"):
        assert key in doc, key
    assert set(doc["tasks"]) == {"scene", "objects"}
    total_slices = 0
    for task, entries in doc["tasks"].items():
        assert entries, f"no instances for {task}"
        for e in entries:
            assert {"variant", "mig", "mps", "batch", "count"} <= set(e)
            assert e["count"] >= 1 and e["mig"] in (1, 2, 3, 4, 7)
            total_slices += e["mig"] * e["count"]
    assert {e["variant"] for e in doc["tasks"]["objects"]} == {"densenet121"}
    assert {e["variant"] for e in doc["tasks"]["scene"]} <= {"resnet50", "resnet152"}
    assert doc["slices"] == total_slices
    assert 1 <= doc["gpus"] <= 4
    assert doc["accuracy"] >= 0.9 - 1e-6
    assert doc["solve_seconds"] >= 0
    assert [p["tasks"] for p in doc["paths"]] == [["scene", "objects"]]
    for p in doc["paths"]:
        assert 0 < p["latency_ms"] <= 100 + 1e-6
    # capacity covers the demand: scene gets 500 items/s, objects 2 x 500
    for task, need in (("scene", 500), ("objects", 1000)):
        served = sum(e["count"] * e["throughput_rps"] for e in doc["tasks"][task])
        assert served >= need * (1 - 1e-6)


def test_plan_tagging_example(capsys, tmp_path: Path) -> None:
    out_path = tmp_path / "tagging.json"
    rc, out, err = run_cli(capsys, "plan", TAGGING, "--profiles", PROFILES, "--demand", "2000",
                           "--gpus", "20", "--out", out_path)
    assert rc == 0, err
    for task in ("scene", "objects", "attributes"):
        assert task in out
    doc = json.loads(out_path.read_text())
    assert set(doc["tasks"]) == {"scene", "objects", "attributes"}
    assert sorted(tuple(p["tasks"]) for p in doc["paths"]) == [("scene", "attributes"), ("scene", "objects")]
    assert all(p["latency_ms"] <= 100 + 1e-6 for p in doc["paths"])
    assert doc["accuracy"] >= 0.95 - 1e-6
    assert doc["gpus"] <= 20


def test_plan_without_out_writes_nothing(capsys, tiny: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "200")
    assert rc == 0
    assert "wrote" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_plan_latency_slo_below_fastest_path(capsys, tmp_path: Path) -> None:
    app = write(tmp_path, "fast.yaml", TINY_TEMPLATE.format(slo=5))
    rc, out, err = run_cli(capsys, "plan", app, "--profiles", PROFILES, "--demand", "500")
    assert rc == 2
    assert "latency" in err and "fastest" in err
    assert "scene -> objects" in err


def test_plan_too_few_gpus(capsys, tiny: str) -> None:
    rc, out, err = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "3000", "--gpus", "1")
    assert rc == 2
    assert "infeasible" in err
    assert "slices" in err or "placement" in err


@pytest.mark.parametrize("args, fragment", [
    (["--features", "xyz"], "--features"),
    (["--features", ""], "--features"),
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "-3"], "--gpus"),
    (["--demand", "lots"], "--demand"),
    (["--demand", "0"], "--demand"),
    (["--demand", "-10"], "--demand"),
    (["--gpu-type", "nope"], "nope"),
    (["--gpu-type", "h100-80gb"], "tasks.scene.variants"),
    (["--method", "magic"], "--method"),
])
def test_plan_bad_options_exit_1(capsys, tiny: str, args: list[str], fragment: str) -> None:
    argv = ["plan", tiny, "--profiles", PROFILES, *args]
    for flag, default in (("--demand", "500"), ("--gpus", "2")):
        if flag not in args:
            argv += [flag, default]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 1, (out, err)
    assert fragment in err, err


def test_plan_missing_profile_file(capsys, tiny: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    rc, _, err = run_cli(capsys, "plan", tiny, "--profiles", missing, "--demand", "100")
    assert rc == 1
    assert str(missing) in err


def test_plan_missing_app_file(capsys, tmp_path: Path) -> None:
    rc, _, err = run_cli(capsys, "plan", tmp_path / "nope.yaml", "--profiles", PROFILES, "--demand", "100")
    assert rc == 1
    assert "nope.yaml" in err


def test_plan_bad_spec(capsys, tmp_path: Path) -> None:
    app = write(tmp_path, "bad.yaml", TINY_TEMPLATE.format(slo=100).replace("accuracy_slo: 0.9",
                                                                           "accuracy_slo: 1.5"))
    rc, _, err = run_cli(capsys, "plan", app, "--profiles", PROFILES, "--demand", "100")
    assert rc == 1
    assert "accuracy_slo" in err


def test_plan_spec_with_unprofiled_variant(capsys, tmp_path: Path) -> None:
    app = write(tmp_path, "unprof.yaml", TINY_TEMPLATE.format(slo=100).replace("resnet152", "resnet9000"))
    rc, _, err = run_cli(capsys, "plan", app, "--profiles", PROFILES, "--demand", "100")
    assert rc == 1
    assert "tasks.scene.variants.resnet9000" in err


def test_plan_requires_demand(capsys, tiny: str) -> None:
    rc, _, err = run_cli(capsys, "plan", tiny, "--profiles", PROFILES)
    assert rc == 1
    assert "--demand" in err


def test_unknown_command(capsys) -> None:
    rc, _, _ = run_cli(capsys, "frobnicate")
    assert rc == 1


def test_plan_without_features_takes_whole_gpus_per_task(capsys, tiny: str) -> None:
    # features none: each task's static share is whole GPUs, at least one each: the two tasks plan on
    # 2 GPUs, and on 1 the message says that each task needs a GPU of its own (exit 2, slices)
    rc, _, _ = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "0.001",
                       "--gpus", "2", "--features", "none")
    assert rc == 0
    rc, _, err = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "0.001",
                         "--gpus", "1", "--features", "none")
    assert rc == 2
    assert "slices" in err and "2 tasks need at least 2 but 1 GPU(s) give 1" in err


def test_plan_time_limit_counts_from_the_commands_start(capsys, tiny: str, monkeypatch) -> None:
    """--time-limit bounds the whole command: the deadline handed to make_plan started before the app and
    profile files were read (their reading counts against it)."""
    import jigsawserve.orchestrator.cli as cli_mod
    read_at, deadlines = [], []
    real_load, real_plan = cli_mod.load_profiles, cli_mod.make_plan

    def load_profiles(*args, **kwargs):
        read_at.append(time.monotonic())
        return real_load(*args, **kwargs)

    def make_plan(*args, **kwargs):
        deadlines.append(args[5] if len(args) > 5 else kwargs["deadline"])
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(cli_mod, "load_profiles", load_profiles)
    monkeypatch.setattr(cli_mod, "make_plan", make_plan)
    rc, _, err = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "500", "--gpus", "4",
                         "--time-limit", "7")
    assert rc == 0, err
    assert len(read_at) == 1 and len(deadlines) == 1
    assert deadlines[0].seconds == 7 and deadlines[0].start <= read_at[0]


def test_plan_limit_spent_before_planning_is_a_time_limit(capsys, tiny: str) -> None:
    """A limit that passes while the files are read ends the call with the time-limit error, not a plan."""
    rc, out, err = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "500", "--gpus", "4",
                           "--time-limit", "1e-6")
    assert rc == 2 and "time limit" in err and "plan for" not in out


# ---------------------------------------------------------------- capacity

def test_capacity_json(capsys, tiny: str) -> None:
    rc, out, err = run_cli(capsys, "capacity", tiny, "--profiles", PROFILES, "--gpus", "2", "--json")
    assert rc == 0, err
    doc = last_json(out)
    assert doc["max_demand_rps"] > 0
    assert doc["gpus"] == 2 and doc["gpu_type"] == "a100-80gb" and doc["features"] == "A+S+T"
    assert doc["probes"] >= 1
    assert "max serviceable demand" in out
    # the HiGHS banner and bisection progress stay off stdout
    assert all(line.startswith(("max serviceable demand", "{")) for line in out.splitlines() if line.strip())


def test_capacity_without_json_prints_no_json(capsys, one_task: str) -> None:
    rc, out, _ = run_cli(capsys, "capacity", one_task, "--profiles", PROFILES, "--gpus", "1")
    assert rc == 0
    assert "max serviceable demand" in out
    assert "{" not in out


def test_capacity_no_features_at_most_all_features(capsys, one_task: str) -> None:
    caps = {}
    for feats in ("none", "ast"):
        rc, out, err = run_cli(capsys, "capacity", one_task, "--profiles", PROFILES, "--gpus", "1",
                               "--features", feats, "--json")
        assert rc == 0, err
        caps[feats] = last_json(out)["max_demand_rps"]
    assert 0 < caps["none"] <= caps["ast"]


def test_capacity_latency_slo_unreachable_is_zero(capsys, tmp_path: Path) -> None:
    # a latency (or accuracy) bound that no demand can meet: capacity 0, reported as such
    app = write(tmp_path, "fast.yaml", TINY_TEMPLATE.format(slo=5))
    rc, out, err = run_cli(capsys, "capacity", app, "--profiles", PROFILES, "--gpus", "1", "--json")
    assert rc == 0, err
    assert last_json(out)["max_demand_rps"] == 0
    assert "latency" in err  # the bisection progress names the binding constraint


@pytest.mark.parametrize("args, fragment", [
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "1", "--features", "q"], "--features"),
])
def test_capacity_bad_input(capsys, tiny: str, args: list[str], fragment: str) -> None:
    rc, _, err = run_cli(capsys, "capacity", tiny, "--profiles", PROFILES, *args)
    assert rc == 1
    assert fragment in err


def test_capacity_requires_gpus(capsys, tiny: str) -> None:
    rc, _, err = run_cli(capsys, "capacity", tiny, "--profiles", PROFILES)
    assert rc == 1
    assert "--gpus" in err


def test_capacity_when_nothing_fits_reports_zero(capsys, tiny: str, monkeypatch) -> None:
    real = capacity_mod.make_plan
    calls = []

    def bounded(*args, **kwargs):
        calls.append(args[3])
        assert len(calls) <= 60, f"capacity bisection did not stop after {len(calls)} probes"
        return real(*args, **kwargs)

    monkeypatch.setattr(capacity_mod, "make_plan", bounded)
    rc, out, err = run_cli(capsys, "capacity", tiny, "--profiles", PROFILES, "--gpus", "1",
                           "--features", "none", "--json")
    assert rc in (0, 2), err
    if rc == 0:
        assert last_json(out)["max_demand_rps"] == 0


def test_capacity_first_search_counts_from_the_commands_start(capsys, tiny: str, monkeypatch) -> None:
    """The first latency model's search shares the deadline that began before the files were read; the
    comparison search has its own."""
    import jigsawserve.orchestrator.cli as cli_mod
    read_at, deadlines = [], []
    real_load, real_search = cli_mod.load_profiles, cli_mod.max_demand

    def load_profiles(*args, **kwargs):
        read_at.append(time.monotonic())
        return real_load(*args, **kwargs)

    def max_demand(*args, **kwargs):
        deadlines.append(kwargs["deadline"])
        return real_search(*args, **kwargs)

    monkeypatch.setattr(cli_mod, "load_profiles", load_profiles)
    monkeypatch.setattr(cli_mod, "max_demand", max_demand)
    rc, _, err = run_cli(capsys, "capacity", tiny, "--profiles", PROFILES, "--gpus", "1", "--time-limit", "5")
    assert rc == 0, err
    assert len(read_at) == 1 and len(deadlines) == 2
    assert all(d.seconds == 5 for d in deadlines)
    assert deadlines[0].start <= read_at[0] < deadlines[1].start


# ---------------------------------------------------------------- console script

def test_installed_console_script_help() -> None:
    exe = Path(sys.executable).parent / "jigsaw"
    script = str(exe) if exe.exists() else shutil.which("jigsaw")
    assert script, "the jigsaw console script is not installed (pip install -e .)"
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "plan" in proc.stdout and "capacity" in proc.stdout


def test_main_help_returns_zero(capsys) -> None:
    rc, out, _ = run_cli(capsys, "plan", "--help")
    assert rc == 0
    assert "--demand" in out and "--profiles" in out


def test_watch_bad_inputs_exit_1(capsys, tmp_path: Path) -> None:
    app, profiles = ROOT / "examples" / "cpu" / "app.yaml", ROOT / "examples" / "cpu" / "profiles.csv"
    rc, _, err = run_cli(capsys, "watch", app, "--profiles", profiles, "--plan", tmp_path / "none.json",
                         "--repo", tmp_path)
    assert rc == 1 and "cannot read plan" in err
    other = tmp_path / "plan.json"
    assert run_cli(capsys, "plan", ROOT / "examples" / "tagging.yaml", "--profiles",
                   ROOT / "examples" / "a100" / "profiles.csv", "--demand", 100, "--out", other)[0] == 0
    rc, _, err = run_cli(capsys, "watch", app, "--profiles", profiles, "--plan", other, "--repo", tmp_path)
    assert rc == 1 and "is a plan for app 'tagging', not 'cpudemo'" in err


def test_surge_poll_option_sets_the_controller_policy(capsys, monkeypatch) -> None:
    """`jigsaw experiment --surge-poll 0` turns the surge checks off; without it the Policy default holds."""
    from jigsawserve.orchestrator import cli
    from jigsawserve.orchestrator.loop.controller import Policy
    seen: list = []
    monkeypatch.setattr(cli, "_run_experiment", lambda *a, **kw: seen.append(kw["surge_poll"]) or {})
    monkeypatch.setattr(cli, "_print_report", lambda *a: None)
    for extra in ([], ["--surge-poll", "0"]):
        rc, _, err = run_cli(capsys, "experiment", ROOT / "examples/cpu/app.yaml", "--profiles",
                             ROOT / "examples/cpu/profiles.csv", "--peak", "10", "--out", "unused", *extra)
        assert rc == 0, err
    assert seen == [None, 0.0]
    assert cli._policy(0.5, None) == Policy(headroom=0.5) and cli._policy(0.5, 0.0).surge_poll_s == 0.0


def test_policy_takes_only_the_options_given() -> None:
    from jigsawserve.orchestrator.cli import _policy
    from jigsawserve.orchestrator.loop.controller import Policy
    assert _policy(0.5, None) == Policy(headroom=0.5)
    assert _policy(0.5, 0.0, 0.0) == Policy(headroom=0.5, surge_poll_s=0.0, shed_limit=0.0)


def test_plan_out_makes_its_folder(capsys, tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "x" / "plan.json"
    rc, _, err = run_cli(capsys, "plan", tiny, "--profiles", PROFILES, "--demand", "10", "--out", str(out))
    assert rc == 0, err
    assert out.exists()


def test_no_solver_banner_in_a_plans_output(tiny: str) -> None:
    """HiGHS prints a banner on the C-level stdout when it starts; neither stream of `jigsaw plan` shows it."""
    done = subprocess.run([sys.executable, "-m", "jigsawserve.orchestrator.cli", "plan", tiny, "--profiles", PROFILES,
                           "--demand", "10"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "HiGHS" not in done.stdout and "HiGHS" not in done.stderr
    assert done.stdout.startswith("plan for ")


def test_apply_to_an_address_nothing_listens_at_is_a_clear_error(capsys, tmp_path: Path) -> None:
    """No traceback: exit 1 naming the address, and the repository untouched (no backup made)."""
    from jigsawserve.orchestrator.serving.server import free_ports
    cpu = ROOT / "examples" / "cpu"
    plan, repo = tmp_path / "plan.json", tmp_path / "repo"
    assert run_cli(capsys, "plan", cpu / "app.yaml", "--profiles", cpu / "profiles.csv", "--demand", 40,
                   "--out", plan)[0] == 0
    assert run_cli(capsys, "render", plan, "--out", repo)[0] == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    addr = f"127.0.0.1:{free_ports(1)[0]}"  # closed: nothing binds it
    rc, _, err = run_cli(capsys, "apply", plan, "--repo", repo, "--url", addr)
    assert rc == 1, err
    assert f"cannot reach the server's gRPC endpoint at {addr}" in err and "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_version_and_a_cpu_plan_in_cpu_words(capsys) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("jigsaw, version ")
    code, out, err = run_cli(capsys, "plan", str(ROOT / "examples" / "cpu" / "app.yaml"), "--profiles",
                             str(ROOT / "examples" / "cpu" / "profiles.csv"), "--demand", "40")
    assert code == 0 and "whole-CPU slices" in out and "GPU" not in out.split("\n")[1], out
    assert "no --gpus: CPU slices unlimited (this plan takes 3)" in err
