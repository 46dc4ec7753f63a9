"""Tests for ``jigsaw bundle`` (jigsawserve.orchestrator.packaging.bundle) and for finding an unpacked runtime through
``JIGSAW_TRITON_HOME``. Everything here runs offline (``--wheels-from`` a directory of small made-up wheels,
xz level 0) except the test marked for the package index, which is skipped when PyPI cannot be reached.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from jigsawserve.orchestrator.packaging import bundle as bd
from jigsawserve.orchestrator.serving import tritonenv
from jigsawserve.orchestrator.cli import main
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.serving.tritonenv import (
    HOME_ENV,
    STUB_NAME,
    STUB_PATH_ENV,
    find_runtime,
    server_env,
)

ROOT = Path(__file__).resolve().parents[1]
PY = "{}.{}".format(*sys.version_info[:2])


def _runtime_or_skip():
    try:
        return find_runtime()
    except InputError as exc:
        pytest.skip(f"no Triton runtime here: {exc}")


def fake_wheel(dest: Path, name: str, version: str, requires: tuple[str, ...] = (),
               extras: tuple[str, ...] = ()) -> Path:
    """A minimal valid pure-Python wheel ``name-version-py3-none-any.whl`` with these Requires-Dist lines."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            + "".join(f"Provides-Extra: {e}\n" for e in extras)
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(t.encode())}" for n, t in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, t in files.items():
            z.writestr(n, t)
    return path


@pytest.fixture()
def wheel_dir(tmp_path):
    """alpha -> gamma; beta -> delta, beta[x] -> epsilon, beta[y] -> zeta; omega is never asked for."""
    d = tmp_path / "wheelhouse"
    d.mkdir()
    fake_wheel(d, "alpha", "1.2", ("gamma>=1",))
    fake_wheel(d, "beta", "2.0", ("delta", 'epsilon; extra == "x"', 'zeta; extra == "y"'), ("x", "y"))
    for name in ("gamma", "delta", "epsilon", "zeta", "omega", "jbextra"):
        fake_wheel(d, name, "1.0")
    return d


def test_expand_platforms():
    tags = bd.expand_platforms(["manylinux_2_28_x86_64", "linux_x86_64"])
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
            "manylinux_2_5_x86_64", "linux_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    assert bd.expand_platforms(["manylinux2014_aarch64"])[:2] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]


def test_project_requirements_narrowed():
    reqs = bd.project_requirements(["numpy<2", "nvidia-pytriton>=0.5", "tritonclient[all]>=2.40", "scs>=3",
                                    'pytest>=7; extra == "test"'], ["scs<3.3", "jbextra"])
    by_name = {bd.normalize(r.name): r for r in reqs}
    assert set(by_name) == {"numpy", "tritonclient", "scs", "jbextra"}  # runtime from files; test extra dropped
    assert by_name["tritonclient"].extras == {"grpc", "http"}  # not perf-analyzer or cuda-python
    assert str(by_name["tritonclient"].specifier) == ">=2.40"
    assert str(by_name["scs"].specifier) == "<3.3"  # --require replaces the project's own


def test_select_excludes_prunes_and_reads_target_markers():
    dist = bd.Dist
    dists = {n: dist(n, "1", r, f"file:///{n}.whl") for n, r in {
        "alpha": ["gamma", "shared"], "beta": ["delta", 'epsilon; extra == "x"', 'zeta; extra == "y"',
                                               'old; python_version < "3.12"', 'new; python_version >= "3.12"'],
        "gamma": [], "shared": [], "delta": ["shared"], "epsilon": [], "zeta": [], "old": []}.items()}
    env = bd.Target("3.12", ("manylinux_2_35_x86_64",)).marker_env()
    sel = bd.select([bd.Requirement("alpha>=1"), bd.Requirement("beta[x]")], dists, {"alpha"}, env)
    assert sorted(d.name for d in sel.keep) == ["beta", "delta", "epsilon", "shared"]
    assert sel.excluded == {"alpha": ["alpha>=1 (by the project)"]}
    assert sel.pruned == ["gamma"]  # only alpha needs it; shared stays (delta needs it too)
    assert sel.unneeded == ["old", "zeta"]  # pip (another Python) resolved old; nobody asked for beta[y]
    assert [str(r) for r in sel.missing] == ["new"]  # needed on 3.12, not resolved: asked for in a second pass


def test_dependencies_offline_from_wheel_dir(tmp_path, wheel_dir):
    target = bd.Target(PY, bd.default_platforms())
    lines = []
    wheels, must_have = bd.collect_dependencies(
        ["alpha>=1", "beta[x]", "nvidia-pytriton>=0.5"], ["jbextra"], True, {"alpha"}, target,
        ["--no-index", "--find-links", str(wheel_dir)], tmp_path / "work", lines.append)
    assert sorted(w.name.split("-")[0] for w in wheels) == ["beta", "delta", "epsilon", "jbextra"]
    assert must_have == {"alpha": ["alpha>=1 (by the project)"]}
    assert any("left out with them: gamma 1.0" in line for line in lines)
    with pytest.raises(InputError, match="resolving the dependencies"):
        bd.collect_dependencies(["nosuchpackage"], [], True, set(), target,
                                ["--no-index", "--find-links", str(wheel_dir)], tmp_path / "work2", lines.append)


def test_elf_needed_of_the_runtime():
    runtime = _runtime_or_skip()
    needed = bd.elf_needed(runtime.server_bin)
    assert any(n.startswith("libtritonserver") for n in needed)
    assert any(n.startswith("libpython") for n in bd.elf_needed(runtime.stub))
    with pytest.raises(ValueError):
        bd.elf_needed(runtime.python_backend / "triton_python_backend_utils.py")


def test_find_runtime_from_home(monkeypatch, tmp_path):
    runtime = _runtime_or_skip()
    home = tmp_path / "home"
    (home / "pytriton").mkdir(parents=True)
    (home / "pytriton" / "tritonserver").symlink_to(runtime.server_bin.parents[1])
    (home / "nvidia_pytriton.libs").symlink_to(runtime.libs)
    monkeypatch.setenv(HOME_ENV, str(home))
    found = find_runtime()
    assert found.server_bin == home / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    assert found.libs == home / "nvidia_pytriton.libs"
    monkeypatch.setenv(HOME_ENV, str(home / "pytriton" / "tritonserver"))  # the tritonserver directory itself
    assert find_runtime().libs == home / "nvidia_pytriton.libs"
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match=f"{HOME_ENV}=.*nowhere: no Triton runtime there"):
        find_runtime()
    monkeypatch.delenv(HOME_ENV)
    monkeypatch.setattr(tritonenv, "_package_dirs", lambda name: [])
    with pytest.raises(InputError, match=f"nvidia-pytriton is not installed .* {HOME_ENV} is not set"):
        find_runtime()


def test_stub_pythonpath_goes_first(monkeypatch, tmp_path):
    _runtime_or_skip()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv(STUB_PATH_ENV, str(tmp_path / "stub"))
    path = server_env()["PYTHONPATH"].split(os.pathsep)
    assert path[:2] == [str(tmp_path / "stub"), str(tmp_path / "site")]  # both ahead of site-packages


def test_stub_path_prelude_in_the_jigsaw_backend(monkeypatch, tmp_path):
    """The stubs' interpreter ignores PYTHONPATH: with JIGSAW_STUB_PYTHONPATH set, the jigsaw backend's model.py
    applies it first thing (after the docstring and __future__ imports); without, it is a plain copy."""
    _runtime_or_skip()
    source = (ROOT / "triton_backend" / "model.py").read_text()
    monkeypatch.setattr(tritonenv, "_jigsaw_model_py", lambda: ROOT / "triton_backend" / "model.py")
    monkeypatch.delenv(STUB_PATH_ENV, raising=False)
    assert (tritonenv.prepare_backend_dir(tmp_path / "plain") / "jigsaw" / "model.py").read_text() == source
    monkeypatch.setenv(STUB_PATH_ENV, str(tmp_path / "stub"))
    patched = (tritonenv.prepare_backend_dir(tmp_path / "b") / "jigsaw" / "model.py").read_text()
    assert patched.replace(tritonenv.PATH_PRELUDE, "") == source
    compile(patched, "model.py", "exec")  # __future__ imports still come first
    assert patched.index(tritonenv.PATH_PRELUDE) < patched.index("import numpy")
    (tmp_path / "stub" / "probe_pkg").mkdir(parents=True)
    (tmp_path / "stub" / "probe_pkg" / "__init__.py").write_text("")
    code = "import sys\n" + tritonenv.PATH_PRELUDE + "import probe_pkg\nprint(sys.path[0])"
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "stub")})  # -I: isolated, like the stub
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "stub"), done.stderr


def test_bundle_builds_unpacks_and_installs(tmp_path, wheel_dir, monkeypatch):
    """Build (offline, xz -0), check the contents, unpack, find the runtime through JIGSAW_TRITON_HOME, and run
    install.sh --target with this Python."""
    runtime = _runtime_or_skip()
    if not bd._setuptools_builds_wheels():
        pytest.skip("the local setuptools cannot build a wheel offline")
    out = tmp_path / "b.tar.xz"
    assert main(["bundle", "--out", str(out), "--no-deps", "--require", "jbextra", "--wheels-from", str(wheel_dir),
                 "--level", "0"]) == 0
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("BUNDLE.json"))
        tar.extractall(tmp_path / "unpacked", **({"filter": "tar"} if hasattr(tarfile, "data_filter") else {}))
    rt = "runtime/pytriton/tritonserver"
    assert {"install.sh", f"{rt}/bin/tritonserver", f"{rt}/backends/python/libtriton_python.so",
            f"{rt}/backends/python/triton_python_backend_utils.py",
            f"{rt}/python_backend_stubs/{PY}/{STUB_NAME}"} <= names
    assert [n for n in names if n.endswith(STUB_NAME)] == [f"{rt}/python_backend_stubs/{PY}/{STUB_NAME}"]
    libs = {n.rsplit("/", 1)[1] for n in names if n.startswith("runtime/nvidia_pytriton.libs/")}
    assert any(n.startswith("libtritonserver") for n in libs) and not any(n.startswith("libpython3") for n in libs)
    wheels = sorted(n.split("/")[1].split("-")[0] for n in names if n.startswith("wheels/") and n.endswith(".whl"))
    assert wheels == ["jbextra", "jigsawserve"]
    assert manifest["python"] == PY and manifest["runtime"]["stub"] == PY
    unpacked = tmp_path / "unpacked"
    assert os.access(unpacked / "install.sh", os.X_OK) and os.access(unpacked / rt / "bin" / "tritonserver", os.X_OK)
    with zipfile.ZipFile(next((unpacked / "wheels").glob("jigsawserve-*.whl"))) as z:
        members = z.namelist()
        assert {"jigsawserve/orchestrator/packaging/bundle.py", "jigsawserve/orchestrator/serving/tritonenv.py",
                "jigsawserve/triton_backend/model.py", "jigsawserve/model_repository_templates/runner.pbtxt.j2"} <= set(members)  # render reads the templates
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())  # repacked: xz does the work

    monkeypatch.setenv(HOME_ENV, str(unpacked / "runtime"))
    found = find_runtime()
    assert found.server_bin == unpacked / rt / "bin" / "tritonserver"
    assert found.stub.read_bytes() == runtime.stub.read_bytes()
    assert found.libs == unpacked / "runtime" / "nvidia_pytriton.libs"

    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in (HOME_ENV, STUB_PATH_ENV, "PYTHONPATH")}
    done = subprocess.run([str(unpacked / "install.sh"), "--target", str(site), "--python", sys.executable],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"JIGSAW_TRITON_HOME={site}/jigsaw-triton" in done.stdout
    assert f"check: orchestrator {site}/jigsawserve/orchestrator" in done.stdout
    code = ("import jigsawserve.orchestrator, jbextra; from jigsawserve.orchestrator.serving.tritonenv import find_runtime; "
            "print(jigsawserve.orchestrator.__file__, find_runtime().server_bin)")
    probe = subprocess.run([sys.executable, "-c", code],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
                           env={**env, "PYTHONPATH": str(site), HOME_ENV: str(site / "jigsaw-triton")})
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(site / "jigsawserve" / "orchestrator" / "__init__.py"),
                                    str(site / "jigsaw-triton" / rt.split("/", 1)[1] / "bin" / "tritonserver")]


def test_bundle_rejects_bad_input(tmp_path):
    assert main(["bundle", "--out", str(tmp_path / "b.zip"), "--no-deps"]) == 1
    assert main(["bundle", "--out", str(tmp_path / "b.tar.xz"), "--python", "3.99", "--no-deps"]) == 1
    assert main(["bundle", "--out", str(tmp_path / "b.tar.xz"), "--exclude", "jigsawserve"]) == 1
    assert not list(tmp_path.iterdir())


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _pypi_reachable(), reason="needs the package index (pypi.org unreachable)")
def test_dependencies_for_cp312_from_the_index(tmp_path):
    """What the GPU test host's bundle packs: numpy 1.x and the solvers, not what that host has."""
    if not bd._setuptools_builds_wheels():
        pytest.skip("the local setuptools cannot build a wheel offline")
    wheel = bd.build_project_wheel(ROOT, tmp_path / "wheels", [], lambda line: None)
    requires = bd.wheel_metadata(wheel)[2]
    target = bd.Target("3.12", ("manylinux_2_35_x86_64",))
    env = target.marker_env()
    roots = [r for r in bd.project_requirements(requires, []) if bd._applies(r, env, set())]
    dists = bd.resolve(roots, target, [], tmp_path, lambda line: None)
    sel = bd.select(roots, dists, {"scipy", "grpcio", "jinja2", "aiohttp"}, env)
    kept = {d.name: d.version for d in sel.keep}
    assert kept["numpy"].startswith("1.")
    assert {"highspy", "tritonclient", "protobuf"} <= set(kept)
    assert not {"nvidia-pytriton", "perf-analyzer", "cuda-python", "scipy", "grpcio", "markupsafe"} & set(kept)
    assert not sel.missing
