"""Locate the Triton runtime shipped by nvidia-pytriton and prepare what tritonserver needs to run it.

The binaries find their shared libraries through ``$ORIGIN``-relative rpaths, so copies of the
Python backend and of its stub (``prepare_backend_dir``) need ``LD_LIBRARY_PATH`` from
``server_env``; the stub's ``sys.path`` is not this interpreter's, hence ``PYTHONPATH`` there too (which the
stub's isolated interpreter ignores: see PATH_PRELUDE).

Where nvidia-pytriton cannot be installed (air-gapped hosts), ``JIGSAW_TRITON_HOME`` names an unpacked
runtime instead (``jigsaw bundle`` makes one; see ``jigsawserve.orchestrator.packaging.bundle``).
"""
from __future__ import annotations

import ast
import filecmp
import importlib.util
import os
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

STUB_NAME = "triton_python_backend_stub"
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
JIGSAW_BACKEND = "jigsaw"
# an unpacked runtime (a bundle's runtime/ or any directory laid out like site-packages: pytriton/tritonserver
# beside nvidia_pytriton.libs, or that tritonserver directory itself); when set, it is used instead of nvidia-pytriton
HOME_ENV = "JIGSAW_TRITON_HOME"
LIBS_DIR = "nvidia_pytriton.libs"
# directories put first on the Python backend stubs' sys.path only (not this process's): where the host's own
# numpy is 2.x (which the 2.51 Python backend cannot use) but what this process imports needs it (scipy >= 1.18),
# numpy 1.x goes there (a bundle's install.sh does that). When set, the stubs also get PYTHONPATH (PATH_PRELUDE).
STUB_PATH_ENV = "JIGSAW_STUB_PYTHONPATH"
# Math libraries' threads per stub (each model instance is a stub process): a CPU runner's process is one core
# of its slice, a GPU runner's work runs on its GPU slice, and the graph's numpy work is small. Left to their
# defaults, OpenBLAS kept a worker thread per core busy-waiting in every numpy stub: on the 2-core machine the
# CPU demo's stubs used 1.44-1.54 cores at 40 req/s, 0.08-0.12 with one thread each (docs/runtime.md). Read
# when the libraries load, so set in the server's environment, which the stubs inherit before model.py imports
# numpy. JIGSAW_STUB_THREADS overrides the count.
MATH_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STUB_THREADS_ENV = "JIGSAW_STUB_THREADS"


@dataclass(frozen=True)
class Runtime:
    """Paths of the Triton runtime: the server binary, the Python backend, this Python's stub and
    the bundled shared libraries (``nvidia_pytriton.libs``)."""

    server_bin: Path
    python_backend: Path
    stub: Path
    libs: Path


NAMESPACE = "jigsawserve"  # the installed packages: jigsawserve.orchestrator, ...


def _package_dirs(name: str) -> list[Path]:
    """Directories of an importable package (several for a namespace package), without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _namespace_root(package_dir: Path) -> Path:
    """The sys.path entry under which ``jigsawserve.<package>`` imports: site-packages for an installed wheel
    (``.../jigsawserve/<package>``), the checkout for a source tree, whose ``jigsawserve/`` links its folders."""
    return package_dir.parent.parent if package_dir.parent.name == NAMESPACE else package_dir.parent


def _home_root(home: str) -> tuple[Path, Path]:
    """``(tritonserver dir, libs dir)`` of the runtime that ``JIGSAW_TRITON_HOME`` names."""
    path = Path(home).expanduser().absolute()
    if (path / "bin" / "tritonserver").is_file():  # the tritonserver directory itself
        return path, path.parent.parent / LIBS_DIR
    if (path / "pytriton" / "tritonserver").is_dir():  # a bundle's runtime/ (or a site-packages)
        return path / "pytriton" / "tritonserver", path / LIBS_DIR
    raise InputError(f"{HOME_ENV}={home}: no Triton runtime there (expected {path}/pytriton/tritonserver/bin/"
                     f"tritonserver, as in an unpacked 'jigsaw bundle' runtime/ directory)")


def runtime_dirs() -> tuple[Path, Path, str]:
    """``(tritonserver directory, shared-library directory, where they come from)``: those that
    ``JIGSAW_TRITON_HOME`` names when set, else nvidia-pytriton's. Nothing in them is checked here."""
    home = os.environ.get(HOME_ENV)
    if home:
        return (*_home_root(home), f"{HOME_ENV}={home}")
    dirs = _package_dirs("pytriton")
    if not dirs:
        raise InputError(f"no Triton runtime: nvidia-pytriton is not installed (pip install 'nvidia-pytriton', "
                         f"it ships tritonserver) and {HOME_ENV} is not set (on a host without a package "
                         f"index: 'jigsaw bundle' elsewhere, then its install.sh prints the {HOME_ENV} to set)")
    return dirs[0] / "tritonserver", dirs[0].parent / LIBS_DIR, f"nvidia-pytriton at {dirs[0]}"


def find_runtime() -> Runtime:
    """The tritonserver runtime, with the stub for the running Python: the one ``JIGSAW_TRITON_HOME`` names
    when set, else the one inside nvidia-pytriton."""
    root, libs, origin = runtime_dirs()
    version = "{}.{}".format(*sys.version_info[:2])
    stub = root / "python_backend_stubs" / version / STUB_NAME
    runtime = Runtime(server_bin=root / "bin" / "tritonserver", python_backend=root / "backends" / "python",
                      stub=stub, libs=libs)
    missing = [p for p in (runtime.server_bin, *(runtime.python_backend / f for f in BACKEND_FILES)) if not p.is_file()]
    if not libs.is_dir():
        missing.append(libs)
    if missing:
        raise InputError(f"{origin} is incomplete: missing {', '.join(map(str, missing))}")
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if (p / STUB_NAME).is_file())
        raise InputError(f"{origin} has no Python backend stub for Python {version} "
                         f"(it has: {', '.join(have) or 'none'}); use one of those Python versions")
    return runtime


def _copy(src: Path, dst: Path) -> None:
    """Copy src to dst unless identical; replace atomically so a running stub is never overwritten."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _write(text: str, dst: Path) -> None:
    """Write ``text`` to dst unless it holds it already; atomically, as ``_copy``."""
    if dst.is_file() and dst.read_text() == text:
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, dst)


# The stub's embedded interpreter runs isolated (sys.flags.isolated): it ignores PYTHONPATH and takes the
# sys.path of the first python3 on PATH (a venv's included), and it imports the model's model.py first. So
# when JIGSAW_STUB_PYTHONPATH is set, the copy of the jigsaw backend's model.py starts (after its docstring and
# __future__ imports) by putting server_env's PYTHONPATH first on sys.path, before it imports numpy.
PATH_PRELUDE = """\
import os as _os, sys as _sys  # added by jigsaw (tritonenv.prepare_backend_dir): the stub ignores PYTHONPATH
_sys.path[:0] = [p for p in dict.fromkeys(_os.environ.get("PYTHONPATH", "").split(":")) if p and p not in _sys.path]
"""


def _with_path_prelude(source: str) -> str:
    """``source`` with PATH_PRELUDE after its docstring and ``from __future__`` imports."""
    body, after = ast.parse(source).body, 0
    for i, node in enumerate(body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if not (docstring or isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            break
        after = node.end_lineno or after
    lines = source.splitlines(keepends=True)
    return "".join(lines[:after]) + PATH_PRELUDE + "".join(lines[after:])


def _jigsaw_model_py() -> Path:
    """``triton_backend/model.py`` of the importable ``triton_backend`` package."""
    for d in _package_dirs("jigsawserve.triton_backend"):
        if (d / "model.py").is_file():
            return d / "model.py"
    raise InputError("jigsawserve.triton_backend (triton_backend/model.py) not found: install this project (pip install -e .)")


def prepare_backend_dir(dest: Path) -> Path:
    """Fill ``dest`` with ``python/`` (the Python backend plus this Python's stub) and ``jigsaw/model.py``
    (the project's Python-based backend, with PATH_PRELUDE when ``JIGSAW_STUB_PYTHONPATH`` is set); returns
    ``dest``. Idempotent."""
    runtime = find_runtime()
    model_py = _jigsaw_model_py()
    dest = Path(dest)
    (dest / "python").mkdir(parents=True, exist_ok=True)
    (dest / JIGSAW_BACKEND).mkdir(parents=True, exist_ok=True)
    for name in BACKEND_FILES:
        _copy(runtime.python_backend / name, dest / "python" / name)
    _copy(runtime.stub, dest / "python" / STUB_NAME)
    if os.environ.get(STUB_PATH_ENV):
        _write(_with_path_prelude(model_py.read_text()), dest / JIGSAW_BACKEND / "model.py")
    else:
        _copy(model_py, dest / JIGSAW_BACKEND / "model.py")
    return dest


def _join(*groups: list[str]) -> str:
    """``os.pathsep``-joined, first occurrence kept, empty entries dropped."""
    return os.pathsep.join(dict.fromkeys(p for g in groups for p in g if p))


def server_env(runtime: Runtime | None = None) -> dict[str, str]:
    """``os.environ`` plus ``PYTHONPATH`` (``JIGSAW_STUB_PYTHONPATH``, the inherited one, then this interpreter's
    site-packages and the project root, for the stub), ``LD_LIBRARY_PATH`` (the bundled libraries and this
    interpreter's libpython, when shared) and the math libraries' thread counts (``MATH_THREAD_VARS``)."""
    runtime = runtime or find_runtime()
    env = dict(os.environ)
    roots = [str(_namespace_root(d)) for name in ("orchestrator", "triton_backend")
             for d in _package_dirs(f"{NAMESPACE}.{name}")]
    site_dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    # the inherited PYTHONPATH ahead of site-packages, as in this interpreter's own sys.path
    first, inherited = (env.get(name, "").split(os.pathsep) for name in (STUB_PATH_ENV, "PYTHONPATH"))
    env["PYTHONPATH"] = _join(first, inherited, site_dirs, roots)
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    libpython = [libdir] if libdir and soname and (Path(libdir) / soname).is_file() else []
    env["LD_LIBRARY_PATH"] = _join([str(runtime.libs)], libpython, env.get("LD_LIBRARY_PATH", "").split(os.pathsep))
    threads = env.get(STUB_THREADS_ENV, "1")
    env.update({name: threads for name in MATH_THREAD_VARS})
    return env
