"""Locate the Triton runtime shipped by nvidia-pytriton and prepare what tritonserver needs to run it.

The binaries find their shared libraries through ``$ORIGIN``-relative rpaths, so copies of the
Python backend and of its stub (``prepare_backend_dir``) need ``LD_LIBRARY_PATH`` from
``server_env``; the stub's ``sys.path`` is not this interpreter's, hence ``PYTHONPATH`` there too.
"""
from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

STUB_NAME = "triton_python_backend_stub"
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
JIGSAW_BACKEND = "jigsaw"


@dataclass(frozen=True)
class Runtime:
    """Paths of the Triton runtime: the server binary, the Python backend, this Python's stub and
    the bundled shared libraries (``nvidia_pytriton.libs``)."""

    server_bin: Path
    python_backend: Path
    stub: Path
    libs: Path


def _package_dirs(name: str) -> list[Path]:
    """Directories of an importable package (several for a namespace package), without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def find_runtime() -> Runtime:
    """The tritonserver runtime inside nvidia-pytriton, with the stub for the running Python."""
    dirs = _package_dirs("pytriton")
    if not dirs:
        raise InputError("nvidia-pytriton is not installed: pip install 'nvidia-pytriton' (it ships tritonserver)")
    root = dirs[0] / "tritonserver"
    version = "{}.{}".format(*sys.version_info[:2])
    stub = root / "python_backend_stubs" / version / STUB_NAME
    runtime = Runtime(server_bin=root / "bin" / "tritonserver", python_backend=root / "backends" / "python",
                      stub=stub, libs=dirs[0].parent / "nvidia_pytriton.libs")
    missing = [p for p in (runtime.server_bin, *(runtime.python_backend / f for f in BACKEND_FILES)) if not p.is_file()]
    if missing:
        raise InputError(f"nvidia-pytriton at {dirs[0]} is incomplete: missing {', '.join(map(str, missing))}")
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if (p / STUB_NAME).is_file())
        raise InputError(f"nvidia-pytriton has no Python backend stub for Python {version} "
                         f"(it has: {', '.join(have) or 'none'}); use one of those Python versions")
    return runtime


def _copy(src: Path, dst: Path) -> None:
    """Copy src to dst unless identical; replace atomically so a running stub is never overwritten."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _jigsaw_model_py() -> Path:
    """``triton_backend/model.py`` of the importable ``triton_backend`` package."""
    for d in _package_dirs("triton_backend"):
        if (d / "model.py").is_file():
            return d / "model.py"
    raise InputError("triton_backend/model.py not found: install this project (pip install -e .)")


def prepare_backend_dir(dest: Path) -> Path:
    """Fill ``dest`` with ``python/`` (the Python backend plus this Python's stub) and ``jigsaw/model.py``
    (the project's Python-based backend); returns ``dest``. Idempotent."""
    runtime = find_runtime()
    model_py = _jigsaw_model_py()
    dest = Path(dest)
    (dest / "python").mkdir(parents=True, exist_ok=True)
    (dest / JIGSAW_BACKEND).mkdir(parents=True, exist_ok=True)
    for name in BACKEND_FILES:
        _copy(runtime.python_backend / name, dest / "python" / name)
    _copy(runtime.stub, dest / "python" / STUB_NAME)
    _copy(model_py, dest / JIGSAW_BACKEND / "model.py")
    return dest


def _join(*groups: list[str]) -> str:
    """``os.pathsep``-joined, first occurrence kept, empty entries dropped."""
    return os.pathsep.join(dict.fromkeys(p for g in groups for p in g if p))


def server_env(runtime: Runtime | None = None) -> dict[str, str]:
    """``os.environ`` plus ``PYTHONPATH`` (this interpreter's site-packages and the project root, for the
    stub) and ``LD_LIBRARY_PATH`` (the bundled libraries and this interpreter's libpython, when shared)."""
    runtime = runtime or find_runtime()
    env = dict(os.environ)
    roots = [str(d.parent) for name in ("orchestrator", "triton_backend") for d in _package_dirs(name)]
    site_dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    env["PYTHONPATH"] = _join(site_dirs, roots, env.get("PYTHONPATH", "").split(os.pathsep))
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    libpython = [libdir] if libdir and soname and (Path(libdir) / soname).is_file() else []
    env["LD_LIBRARY_PATH"] = _join([str(runtime.libs)], libpython, env.get("LD_LIBRARY_PATH", "").split(os.pathsep))
    return env
