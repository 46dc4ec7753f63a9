"""``jigsaw bundle``: pack what a run needs on a host without a package index into one ``.tar.xz``.

The tarball holds, at its top level:

- ``runtime/``: the tritonserver runtime of the installed nvidia-pytriton (or of ``JIGSAW_TRITON_HOME``),
  laid out as in site-packages (``pytriton/tritonserver/`` beside ``nvidia_pytriton.libs/``, so the binaries'
  ``$ORIGIN`` rpaths resolve): the server binary, the Python backend, the backend stub of the *target*
  Python only, and only the shared libraries those binaries load (no ``libpython3.13`` for a 3.12 target);
- ``wheels/``: the project's own wheel (``pip wheel --no-deps`` of the checkout) and, with ``--deps``, the
  wheels of its dependencies for the target Python and platform; ``nvidia-pytriton`` is left out (its
  runtime is ``runtime/``) and of ``tritonclient[all]`` only the gRPC and HTTP clients are packed;
- ``install.sh``: installs the wheels offline (``pip install --no-index --no-deps``) into ``--target DIR``,
  ``--prefix DIR`` or the running environment, copies the runtime, checks the result and prints the
  variables to export (``PYTHONPATH``, ``JIGSAW_TRITON_HOME``);
- ``BUNDLE.json``: what is in it, for whom, and what the target must already have.

Dependencies are resolved by pip (``pip install --dry-run --report`` with ``--python-version``,
``--platform``..., wheels only): from the package index, or from ``--wheels-from DIR`` alone (offline). The
dependency graph is then walked with the *target's* environment markers; ``--exclude NAME`` leaves out
NAME and whatever is needed only through it (the target has them), and records NAME's version
requirements in ``BUNDLE.json`` so that ``install.sh`` can check them on the target.

Wheels are stored uncompressed inside the tarball (``--repack``, the default): xz then compresses their
contents as one stream, about 40% smaller than the deflated wheels. pip installs such wheels as usual
(their RECORD hashes cover the files, not the zip).
"""
from __future__ import annotations

import json
import lzma
import mmap
import os
import platform as _platform
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.parser import Parser
from importlib import metadata
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from ..errors import InputError
from ..serving.tritonenv import BACKEND_FILES, STUB_NAME, runtime_dirs

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

PROJECT_NAME = "jigsawserve"
# packed as runtime/ from its files, not as a wheel (the wheel holds every stub and is ~145 MB unpacked)
RUNTIME_PACKAGES = {"nvidia-pytriton"}
# extras of the project's requirements narrowed to what a run imports: tritonclient.grpc and
# tritonclient.http, not perf-analyzer or cuda-python ([all])
NARROW_EXTRAS = {"tritonclient": {"grpc", "http"}}
# installed apart by install.sh, first on the Python backend stubs' path only (JIGSAW_STUB_PYTHONPATH): the
# 2.51 Python backend needs numpy 1.x, which a host's own packages may not import (scipy >= 1.18 needs numpy 2)
STUB_PACKAGES = {"numpy"}
# what the project tree copied for the wheel build leaves out
SKIP_DIRS = {".git", ".whl", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks",
             "out", ".venv", "venv", ".tox", ".mypy_cache"}
MIB = 1 << 20

Progress = Callable[[str], None]


def normalize(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB / 10 else f"{n / 1024:.0f} KiB"


# ----------------------------------------------------------------------------------------------- target


@dataclass(frozen=True)
class Target:
    """The Python and wheel platforms the bundle is for."""

    python: str  # X.Y or X.Y.Z
    platforms: tuple[str, ...]  # as given (before expansion)

    @property
    def version(self) -> str:
        """X.Y"""
        return ".".join(self.python.split(".")[:2])

    @property
    def abi(self) -> str:
        return "cp" + self.version.replace(".", "")

    @property
    def machine(self) -> str:
        """The CPU architecture the platform tags name."""
        for tag in self.platforms:
            for arch in ("x86_64", "aarch64", "ppc64le", "s390x", "armv7l", "i686"):
                if tag.endswith("_" + arch):
                    return arch
        return _platform.machine()

    def pip_tags(self) -> list[str]:
        """pip options that select wheels for this target; pip matches each --platform exactly, so every older
        manylinux tag is named too."""
        args = ["--only-binary=:all:", "--python-version", self.version, "--implementation", "cp",
                "--abi", self.abi]
        for tag in expand_platforms(self.platforms):
            args += ["--platform", tag]
        return args

    def marker_env(self) -> dict[str, str]:
        """PEP 508 marker environment of the target."""
        full = self.python if self.python.count(".") >= 2 else self.python + ".0"
        return {"python_version": self.version, "python_full_version": full, "implementation_name": "cpython",
                "implementation_version": full, "platform_python_implementation": "CPython",
                "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
                "platform_machine": self.machine, "platform_release": "", "platform_version": "", "extra": ""}


_LEGACY = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def expand_platforms(platforms: Iterable[str]) -> list[str]:
    """Each manylinux tag followed by every older one it implies (``manylinux_2_28_x86_64`` ->
    ``manylinux_2_27_x86_64`` ... ``manylinux2014_x86_64`` ... ``manylinux1_x86_64``); others as given."""
    out: list[str] = []
    for tag in platforms:
        m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)
        legacy = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", tag)
        if m:
            major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
        elif legacy:
            (major, minor), arch = _LEGACY[legacy.group(1)], legacy.group(2)
        else:
            out.append(tag)
            continue
        for n in range(minor, 4, -1):
            out.append(f"manylinux_{major}_{n}_{arch}")
            out += [f"{name}_{arch}" for name, (_, lm) in _LEGACY.items() if lm == n and major == 2]
    return list(dict.fromkeys(out))


def default_platforms() -> tuple[str, ...]:
    """manylinux_2_35 of this machine's architecture: the glibc the runtime needs anyway."""
    return (f"manylinux_2_35_{_platform.machine()}",)


# ---------------------------------------------------------------------------------------------- runtime


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF file (ValueError for anything else)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        phoff, = struct.unpack_from("<Q", m, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", m, 0x36)
        loads, dynamic = [], None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", m, phoff + i * phentsize)
            if p_type == 1:  # PT_LOAD
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == 2:  # PT_DYNAMIC
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return []
        needed, strtab = [], None
        for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
            tag, val = struct.unpack_from("<qQ", m, off)
            if tag == 0:
                break
            if tag == 1:
                needed.append(val)
            elif tag == 5:
                strtab = val
        if strtab is None:
            raise ValueError(f"{path}: no DT_STRTAB")
        base = next((off + strtab - va for va, off, size in loads if va <= strtab < va + size), None)
        if base is None:
            raise ValueError(f"{path}: DT_STRTAB outside the loaded segments")
        return [m[base + v:m.find(b"\0", base + v)].decode() for v in needed]


@dataclass
class RuntimePart:
    """The files of runtime/: (source, name inside runtime/)."""

    files: list[tuple[Path, str]]
    origin: str
    stub_version: str
    libs_packed: int
    libs_total: int
    libs_left_out: list[str]
    version: str | None


def collect_runtime(python_version: str, progress: Progress) -> RuntimePart:
    """The tritonserver binary, the Python backend, the stub for ``python_version`` and the libraries they
    load (closure of DT_NEEDED within the runtime's library directory; all of them if an ELF can't be read)."""
    root, libs, origin = runtime_dirs()
    stub = root / "python_backend_stubs" / python_version / STUB_NAME
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if (p / STUB_NAME).is_file())
        raise InputError(f"{origin} has no Python backend stub for Python {python_version} "
                         f"(it has: {', '.join(have) or 'none'})")
    binaries = [root / "bin" / "tritonserver", root / "backends" / "python" / BACKEND_FILES[0], stub]
    binaries += sorted(p for p in (root / "caches").rglob("*.so") if p.is_file()) if (root / "caches").is_dir() else []
    missing = [p for p in (*binaries, root / "backends" / "python" / BACKEND_FILES[1], libs) if not p.exists()]
    if missing:
        raise InputError(f"{origin} is incomplete: missing {', '.join(map(str, missing))}")
    all_libs = sorted(p for p in libs.iterdir() if p.is_file())
    by_name = {p.name: p for p in all_libs}
    try:
        keep: dict[str, Path] = {}
        todo = list(binaries)
        while todo:
            for name in elf_needed(todo.pop()):
                if name in by_name and name not in keep:
                    keep[name] = by_name[name]
                    todo.append(by_name[name])
        packed_libs = sorted(keep.values())
    except (OSError, ValueError) as exc:
        progress(f"  runtime: cannot read the libraries' dependencies ({exc}): packing all of them")
        packed_libs = all_libs
    tree = [*binaries, root / "backends" / "python" / BACKEND_FILES[1]]
    files = [(p, f"pytriton/tritonserver/{p.relative_to(root).as_posix()}") for p in tree]
    files += [(p, f"{libs.name}/{p.name}") for p in packed_libs]
    version = None
    if origin.startswith("nvidia-pytriton"):
        try:
            dist = metadata.distribution("nvidia-pytriton")
            version = dist.version
            files += [(Path(dist.locate_file(f)), "LICENSE.nvidia-pytriton") for f in (dist.files or [])
                      if Path(str(f)).name.startswith("LICENSE")][:1]
        except metadata.PackageNotFoundError:
            pass
    left_out = sorted(set(by_name) - {p.name for p in packed_libs})
    return RuntimePart(files, origin, python_version, len(packed_libs), len(all_libs), left_out, version)


# ------------------------------------------------------------------------------------------------ wheels


def project_dir() -> Path:
    """The checkout this package was imported from (it has setup.py or pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / "setup.py").is_file() or (root / "pyproject.toml").is_file()):
        raise InputError(f"{root} is not a project checkout (no setup.py): pass --project DIR")
    return root


def _pip(args: list[str], what: str, python: str | None = None, timeout: float = 1800) -> str:
    """Run ``python -m pip args``; its stdout, or InputError with the tail of its output."""
    cmd = [python or sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "PIP_NO_INPUT": "1"})
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"{what}: pip did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise InputError(f"{what} failed (pip exit {done.returncode}):\n{tail}")
    return done.stdout


def _setuptools_builds_wheels() -> bool:
    """Whether the local setuptools can build a wheel without fetching anything (setuptools >= 70.1, or the
    ``wheel`` package beside it)."""
    try:
        major, minor = (int(x) for x in re.findall(r"\d+", metadata.version("setuptools"))[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if (major, minor) >= (70, 1):
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return True


def build_project_wheel(project: Path, dest: Path, index_args: list[str], progress: Progress) -> Path:
    """``pip wheel --no-deps`` of a copy of ``project`` (so no build/ or egg-info appears in the checkout)."""
    src = dest.parent / "project-src"
    shutil.copytree(project, src, ignore=lambda d, names: [n for n in names if n in SKIP_DIRS
                                                            or n.endswith(".egg-info")])
    out = dest / "project"
    out.mkdir(parents=True)
    offline = _setuptools_builds_wheels()
    progress(f"  project: pip wheel --no-deps {project}" + (" (no build isolation)" if offline else ""))
    _pip(["wheel", "--no-deps", "--wheel-dir", str(out), *(["--no-build-isolation"] if offline else index_args),
          str(src)], f"building the wheel of {project}")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise InputError(f"building the wheel of {project}: expected one wheel, got {[w.name for w in wheels]}")
    return wheels[0]


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist) of a wheel."""
    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if name is None:
            raise InputError(f"{path}: no .dist-info/METADATA")
        msg = Parser().parsestr(z.read(name).decode("utf-8", "replace"))
    return msg["Name"], msg["Version"], msg.get_all("Requires-Dist") or []


def project_requirements(requires: list[str], require: Iterable[str]) -> list[Requirement]:
    """The project's requirements as a run needs them (RUNTIME_PACKAGES dropped, NARROW_EXTRAS applied, markers
    kept), with ``require`` added; a ``require`` naming a project requirement replaces it."""
    extra = [Requirement(r) for r in require]
    replaced = {normalize(r.name) for r in extra}
    out = []
    for line in requires:
        req = Requirement(line)
        name = normalize(req.name)
        if name in RUNTIME_PACKAGES or name in replaced or (req.marker and "extra" in str(req.marker)):
            continue
        if name in NARROW_EXTRAS and req.extras:
            req.extras = set(req.extras) & NARROW_EXTRAS[name] | (NARROW_EXTRAS[name] if "all" in req.extras else set())
        out.append(req)
    return out + extra


@dataclass
class Dist:
    """One resolved distribution."""

    name: str  # normalised
    version: str
    requires: list[str]
    url: str
    requires_python: str | None = None


@dataclass
class Selection:
    """What a walk of the dependency graph with the target's markers keeps."""

    keep: list[Dist]
    excluded: dict[str, list[str]] = field(default_factory=dict)  # name -> requirement strings on it
    pruned: list[str] = field(default_factory=list)  # resolved but needed only through excluded ones
    unneeded: list[str] = field(default_factory=list)  # resolved by pip but not under the target's markers
    missing: list[Requirement] = field(default_factory=list)  # needed under the target's markers, not resolved


def _applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in ({""} | extras))


def select(roots: list[Requirement], dists: dict[str, Dist], exclude: set[str], env: dict[str, str]) -> Selection:
    """Walk from ``roots`` through ``dists`` with the target's marker environment ``env``, not entering
    ``exclude``: the distributions reached are kept, the rest is pruned or unneeded."""
    sel = Selection(keep=[])
    seen: dict[str, set[str]] = {}
    todo: list[tuple[Requirement, str]] = [(r, "the project") for r in roots if _applies(r, env, set())]
    while todo:
        req, by = todo.pop(0)
        name = normalize(req.name)
        if name in exclude:
            sel.excluded.setdefault(name, []).append(f"{req.name}{req.specifier}" + (f" (by {by})" if by else ""))
            continue
        dist = dists.get(name)
        if dist is None:
            if name not in {normalize(m.name) for m in sel.missing}:
                sel.missing.append(Requirement(f"{req.name}{req.specifier}"))
            continue
        extras = {normalize(e) for e in req.extras}
        if name in seen and extras <= seen[name]:
            continue
        new = extras - seen.get(name, set())
        first = name not in seen
        seen.setdefault(name, set()).update(extras)
        for line in dist.requires:
            sub = Requirement(line)
            if _applies(sub, env, new) if first else (sub.marker is not None and _applies(sub, env, new)):
                todo.append((sub, dist.name))
    sel.keep = [dists[n] for n in seen]
    reached_by_pip = set(dists) - set(seen) - exclude
    # pruned: needed (under the target's markers) only through an excluded package
    through_excluded = set()
    stack = [n for n in exclude if n in dists]
    while stack:
        d = dists[stack.pop()]
        for line in d.requires:
            sub = Requirement(line)
            n = normalize(sub.name)
            if n in reached_by_pip and n not in through_excluded and _applies(sub, env, set()):
                through_excluded.add(n)
                stack.append(n)
    sel.pruned = sorted(through_excluded)
    sel.unneeded = sorted(reached_by_pip - through_excluded)
    return sel


def _resolver_python(target: Target, progress: Progress) -> str:
    """An interpreter of the target's X.Y to run pip's resolver with (its markers and Requires-Python checks
    then match the target), else this one."""
    if "{}.{}".format(*sys.version_info[:2]) == target.version:
        return sys.executable
    exe = shutil.which(f"python{target.version}")
    if exe:
        try:
            probe = "import sys, pip; print('%d.%d' % sys.version_info[:2], pip.__version__)"
            out = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
            version, pip_version = out.stdout.split()
            if out.returncode == 0 and version == target.version and int(pip_version.split(".")[0]) >= 23:
                return exe
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    progress(f"  deps: no python{target.version} with pip here: resolving with Python "
             f"{sys.version_info.major}.{sys.version_info.minor} (versions limited to those supporting both; "
             f"markers re-checked for {target.version})")
    return sys.executable


def resolve(requirements: list[Requirement], target: Target, index_args: list[str], work: Path,
            progress: Progress) -> dict[str, Dist]:
    """pip's resolution of ``requirements`` for ``target`` (metadata only: nothing is downloaded)."""
    python = _resolver_python(target, progress)
    work.mkdir(parents=True, exist_ok=True)
    report = work / f"report-{time.monotonic_ns()}.json"
    _pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *target.pip_tags(),
          "--target", str(work / "dry-run-target"), *index_args, *map(str, requirements)],
         f"resolving the dependencies for Python {target.version} ({', '.join(target.platforms)})", python)
    dists = {}
    for item in json.loads(report.read_text())["install"]:
        md = item["metadata"]
        name = normalize(md["name"])
        dists[name] = Dist(name, md["version"], md.get("requires_dist") or [], item["download_info"]["url"],
                           md.get("requires_python"))
    return dists


def fetch(dists: list[Dist], target: Target, index_args: list[str], dest: Path, progress: Progress) -> list[Path]:
    """The wheel files of ``dists``: copied when pip found them in a directory, else ``pip download``ed."""
    dest.mkdir(parents=True, exist_ok=True)
    remote = []
    for d in dists:
        url = urlparse(d.url)
        if url.scheme == "file" and url.path.endswith(".whl"):
            src = Path(url2pathname(unquote(url.path)))
            shutil.copy2(src, dest / src.name)
        else:
            remote.append(d)
    if remote:
        progress(f"  deps: downloading {len(remote)} wheels")
        _pip(["download", "--no-deps", "--quiet", "--dest", str(dest), *target.pip_tags(), *index_args,
              *(f"{d.name}=={d.version}" for d in remote)], "downloading the wheels")
    wheels = {}
    for p in dest.glob("*.whl"):
        wheels[normalize(p.name.split("-")[0])] = p
    lost = [d.name for d in dists if d.name not in wheels]
    if lost:
        raise InputError(f"no wheel arrived for: {', '.join(lost)}")
    return [wheels[d.name] for d in dists]


# --------------------------------------------------------------------------------------------- install.sh

INSTALL_SH = r'''#!/usr/bin/env bash
# Offline installer of a jigsaw bundle (made by `jigsaw bundle`): the wheels in wheels/ and the tritonserver
# runtime in runtime/, for Python @PY@. No package index is used.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
want="@PY@"
# installed apart, first on the Python backend stubs' path only (JIGSAW_STUB_PYTHONPATH): Triton 2.51's
# Python backend needs numpy 1.x, which the host's own packages may not import (scipy >= 1.18 needs numpy 2)
stub_wheels="@STUB_WHEELS@"
usage() {
  cat <<EOF
usage: $0 [--target DIR | --prefix DIR] [--python PYTHON] [--runtime-dir DIR] [--stub-dir DIR] [--no-check]
  --target DIR       pip install --target DIR (then put DIR first on PYTHONPATH)
  --prefix DIR       pip install --prefix DIR
  (neither)          install into PYTHON's own environment
  --python PYTHON    the Python $want to install for (default: python3)
  --runtime-dir DIR  where the tritonserver runtime goes (default: DIR/jigsaw-triton for --target,
                     DIR/share/jigsaw-triton for --prefix, else <sys.prefix>/share/jigsaw-triton);
                     $here/runtime keeps it where it is
  --stub-dir DIR     JIGSAW_STUB_PYTHONPATH, where the Python backend's own packages (${stub_wheels:-none})
                     go (default: jigsaw-stub beside the runtime); also installed for jigsaw itself when
                     PYTHON has no numpy
  --no-check         skip the import checks and the check of what the target must already have
EOF
}
python=python3; target=""; prefix=""; rt=""; stubdir=""; check=1
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="${2:?--target needs a directory}"; shift 2 ;;
    --target=*) target="${1#*=}"; shift ;;
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
    --python=*) python="${1#*=}"; shift ;;
    --runtime-dir) rt="${2:?--runtime-dir needs a directory}"; shift 2 ;;
    --runtime-dir=*) rt="${1#*=}"; shift ;;
    --stub-dir) stubdir="${2:?--stub-dir needs a directory}"; shift 2 ;;
    --stub-dir=*) stubdir="${1#*=}"; shift ;;
    --no-check) check=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -n "$target" ] && [ -n "$prefix" ]; then echo "install.sh: --target or --prefix, not both" >&2; exit 2; fi
have="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || {
  echo "install.sh: cannot run $python (use --python)" >&2; exit 1; }
if [ "$have" != "$want" ]; then
  echo "install.sh: this bundle is for Python $want; $python is Python $have (use --python)" >&2; exit 1
fi
"$python" -m pip --version >/dev/null 2>&1 || { echo "install.sh: $python has no pip" >&2; exit 1; }
abspath() { mkdir -p "$1" && (cd "$1" && pwd); }
pip_install() { PIP_NO_INDEX=1 PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --no-index --no-deps \
  --no-cache-dir --disable-pip-version-check --upgrade --quiet "$@"; }
where=()
if [ -n "$target" ]; then
  target="$(abspath "$target")"; where=(--target "$target"); rt="${rt:-$target/jigsaw-triton}"
elif [ -n "$prefix" ]; then
  prefix="$(abspath "$prefix")"; where=(--prefix "$prefix"); rt="${rt:-$prefix/share/jigsaw-triton}"
else
  rt="${rt:-$("$python" -c 'import sys; print(sys.prefix)')/share/jigsaw-triton}"
fi
rt="$(abspath "$rt")"
main=(); stub=()
for w in "$here"/wheels/*.whl; do
  case " $stub_wheels " in *" ${w##*/} "*) stub+=("$w") ;; *) main+=("$w") ;; esac
done
echo "installing ${#main[@]} wheels for Python $want with $python${target:+ into $target}${prefix:+ into $prefix}"
pip_install "${where[@]}" "${main[@]}"
site=""
if [ -n "$target" ]; then
  site="$target"
elif [ -n "$prefix" ]; then
  init="$(find "$prefix" -path '*/jigsawserve/orchestrator/__init__.py' -print -quit)"
  site="$(dirname "$(dirname "$(dirname "$init")")")"
fi
pp="${site}${site:+${PYTHONPATH:+:}}${PYTHONPATH:-}"
# always set: the stubs' isolated interpreter ignores PYTHONPATH, and with JIGSAW_STUB_PYTHONPATH set jigsaw's
# backend applies it (orchestrator/serving/tritonenv.py, PATH_PRELUDE)
stubdir="$(abspath "${stubdir:-$(dirname "$rt")/jigsaw-stub}")"
if [ ${#stub[@]} -gt 0 ]; then
  echo "installing ${stub_wheels} for the Python backend only into $stubdir"
  pip_install --target "$stubdir" "${stub[@]}"
  if ! (cd "$here" && PYTHONPATH="$pp" "$python" -c 'import numpy' >/dev/null 2>&1); then
    echo "$python has no numpy: installing ${stub_wheels} for jigsaw too"
    pip_install "${where[@]}" "${stub[@]}"
  fi
fi
if [ "$rt" != "$here/runtime" ]; then
  echo "copying the tritonserver runtime to $rt"
  cp -a "$here/runtime/." "$rt/"
fi
if [ "$check" = 1 ]; then
  # from $here, so that no checkout in the working directory shadows what was installed
  (cd "$here" && PYTHONPATH="$pp" JIGSAW_TRITON_HOME="$rt" JIGSAW_STUB_PYTHONPATH="$stubdir" \
    "$python" - "$here/BUNDLE.json") <<'EOF'
import json, subprocess, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
bundle = json.load(open(sys.argv[1]))
for name, reqs in sorted(bundle.get("target_must_have", {}).items()):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(f"warning: {name} is missing (needed: {'; '.join(reqs)})", file=sys.stderr)
        continue
    for line in reqs:
        if not Requirement(line.split(" (by ")[0]).specifier.contains(version, prereleases=True):
            print(f"warning: {name} {version} does not satisfy {line}", file=sys.stderr)
import numpy, jigsawserve.orchestrator.cli, jigsawserve.orchestrator.serving.render, jigsawserve.orchestrator.serving.server
from jigsawserve.orchestrator.serving.tritonenv import find_runtime, server_env
runtime = find_runtime()
stub_numpy = subprocess.run([sys.executable, "-c", "import numpy; print(numpy.__version__)"],
                            env=server_env(runtime), capture_output=True, text=True).stdout.strip() or "none"
print(f"check: orchestrator {jigsawserve.orchestrator.__path__[0]} (numpy {numpy.__version__}); "
      f"Python backend numpy {stub_numpy}; tritonserver {runtime.server_bin}")
if not stub_numpy.startswith("1."):
    print(f"warning: the Python backend would import numpy {stub_numpy}: Triton 2.51 needs numpy 1.x",
          file=sys.stderr)
EOF
fi
echo
echo "installed. To use it:"
exports="JIGSAW_TRITON_HOME=$rt JIGSAW_STUB_PYTHONPATH=$stubdir"
if [ -n "$site" ]; then
  echo "  export PYTHONPATH=$site\${PYTHONPATH:+:\$PYTHONPATH} $exports"
else
  echo "  export $exports"
fi
bin=jigsaw
if [ -n "$target" ]; then bin="$target/bin/jigsaw"; elif [ -n "$prefix" ]; then bin="$prefix/bin/jigsaw"; fi
echo "  then: $bin --help   (or: $python -m jigsawserve.orchestrator.cli --help)"
'''


def install_script(python_version: str, stub_wheels: Iterable[str] = ()) -> str:
    return INSTALL_SH.replace("@PY@", python_version).replace("@STUB_WHEELS@", " ".join(stub_wheels))


# ----------------------------------------------------------------------------------------------- bundle


@dataclass
class BundleOptions:
    """What ``jigsaw bundle`` packs; see the module docstring."""

    out: Path
    python: str = "{}.{}".format(*sys.version_info[:2])
    platforms: tuple[str, ...] = ()
    deps: bool = True
    wheels_from: Path | None = None
    exclude: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    project: Path | None = None
    level: int = 9
    repack: bool = True


@dataclass
class Part:
    name: str
    files: int
    unpacked: int
    packed: int  # bytes the xz stream grew by while it was written (approximate: the compressor lags)


@dataclass
class BundleReport:
    out: Path
    size: int
    parts: list[Part]
    wheels: list[str]
    excluded: dict[str, list[str]]
    seconds: float

    def summary(self) -> str:
        width = max(len(p.name) for p in self.parts)
        lines = [f"  {p.name:<{width}}  {p.files:>4} files  {_mib(p.unpacked):>10} unpacked  ~{_mib(p.packed):>10} xz"
                 for p in self.parts]
        lines.append(f"  {'total':<{width}}  {sum(p.files for p in self.parts):>4} files  "
                     f"{_mib(sum(p.unpacked for p in self.parts)):>10} unpacked   {_mib(self.size):>10} "
                     f"({self.size} bytes) in {self.out}, {self.seconds:.0f} s")
        return "\n".join(lines)


def _parse_names(values: Iterable[str]) -> set[str]:
    return {normalize(n.strip()) for v in values for n in v.split(",") if n.strip()}


def _stored_copy(wheel: Path, dest: Path) -> Path:
    """``wheel`` rewritten with every member stored (not deflated), same name and contents."""
    out = dest / wheel.name
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)
    return out


def _tarinfo(tar: tarfile.TarFile, path: Path, arcname: str) -> tarfile.TarInfo:
    info = tar.gettarinfo(str(path), arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def collect_dependencies(requires: list[str], extra: list[str], deps: bool, exclude: set[str], target: Target,
                         index_args: list[str], work: Path,
                         progress: Progress) -> tuple[list[Path], dict[str, list[str]]]:
    """The dependency wheels to pack (see the module docstring) and, per excluded package, the requirements on
    it that the target must meet."""
    if not deps:
        if not extra:
            return [], {}
        progress("required (--no-deps: without their dependencies):")
        keep = list(resolve([Requirement(r) for r in extra], target, ["--no-deps", *index_args], work,
                            progress).values())
        must_have: dict[str, list[str]] = {}
    else:
        progress("dependencies:")
        env = target.marker_env()
        roots = [r for r in project_requirements(requires, extra) if _applies(r, env, set())]
        asked = list(roots)
        for _ in range(4):
            dists = resolve(asked, target, index_args, work, progress)
            sel = select(roots, dists, exclude, env)
            if not sel.missing:
                break
            progress(f"  needed under Python {target.version}'s markers, added: {', '.join(map(str, sel.missing))}")
            asked += sel.missing
        else:
            raise InputError(f"could not resolve for Python {target.version}: {', '.join(map(str, sel.missing))}")
        keep, must_have = sel.keep, dict(sorted(sel.excluded.items()))
        for n in sorted(exclude - set(sel.excluded)):
            why = "needed only through other excluded packages" if n in dists else "not needed anyway"
            progress(f"  --exclude {n}: {why}")
        if must_have:
            progress("  excluded (the target must have them): "
                     + ", ".join(f"{n} {dists[n].version if n in dists else ''}".strip() for n in must_have))
        if sel.pruned:
            progress(f"  left out with them: {', '.join(f'{n} {dists[n].version}' for n in sel.pruned)}")
        if sel.unneeded:
            progress(f"  not needed on Python {target.version}: {', '.join(sel.unneeded)}")
    keep = sorted(keep, key=lambda d: d.name)
    if not keep:
        return [], must_have
    progress(f"  packing {len(keep)}: {', '.join(f'{d.name} {d.version}' for d in keep)}")
    return fetch(keep, target, index_args, work / "deps", progress), must_have


def write_tarball(out: Path, parts_spec: list[tuple[str, list[tuple[Path, str]]]], level: int, repack: bool,
                  work: Path, progress: Progress) -> tuple[int, list[Part]]:
    """Write the parts' files (source, name in the tarball) to ``out`` (.tar.xz); its size and the parts."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    total_in = sum(src.stat().st_size for _, files in parts_spec for src, _ in files)
    progress(f"compressing {_mib(total_in)} (xz -{level}" + (", wheels stored uncompressed inside" if repack else "")
             + ")")
    parts: list[Part] = []
    dirs_added: set[str] = set()
    try:
        with open(partial, "wb") as raw:
            with lzma.LZMAFile(raw, "wb", preset=level) as xz, \
                    tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for part_name, files in parts_spec:
                    before, unpacked, t0 = raw.tell(), 0, time.monotonic()
                    for src, arc in files:
                        for d in map(str, reversed(PurePosixPath(arc).parents[:-1])):
                            if d not in dirs_added:
                                dirs_added.add(d)
                                dinfo = tarfile.TarInfo(d)
                                dinfo.type, dinfo.mode, dinfo.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                                tar.addfile(dinfo)
                        stored = _stored_copy(src, work) if repack and src.suffix == ".whl" else None
                        info = _tarinfo(tar, stored or src, arc)
                        with open(stored or src, "rb") as f:
                            tar.addfile(info, f)
                        unpacked += info.size
                        if stored:
                            stored.unlink()
                    parts.append(Part(part_name, len(files), unpacked, raw.tell() - before))
                    progress(f"  {part_name}: {len(files)} files, {_mib(unpacked)} unpacked "
                             f"({time.monotonic() - t0:.0f} s)")
            size = raw.tell()
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    parts[-1].packed += size - sum(p.packed for p in parts)  # what the compressor held back until the end
    return size, parts


def build_bundle(opts: BundleOptions, progress: Progress = print) -> BundleReport:
    """Pack the bundle that ``opts`` describes; progress lines go to ``progress``."""
    started = time.monotonic()
    if not re.fullmatch(r"3\.\d+(\.\d+)?", opts.python):
        raise InputError(f"--python: expected X.Y (e.g. 3.12), got {opts.python!r}")
    target = Target(opts.python, tuple(opts.platforms) or default_platforms())
    if target.machine != _platform.machine():
        raise InputError(f"--platform {', '.join(target.platforms)}: the runtime packed is this machine's "
                         f"({_platform.machine()}), not {target.machine}")
    if not 0 <= opts.level <= 9:
        raise InputError(f"--level: expected 0..9, got {opts.level}")
    out = Path(opts.out)
    if not out.name.endswith((".tar.xz", ".txz")):
        raise InputError(f"--out: expected a .tar.xz file name, got {out}")
    exclude = _parse_names(opts.exclude)
    if PROJECT_NAME in exclude:
        raise InputError(f"--exclude: the project ({PROJECT_NAME}) is always packed")
    try:
        extra = [str(Requirement(r)) for r in opts.require]
    except InvalidRequirement as exc:
        raise InputError(f"--require: {exc}") from None
    index_args: list[str] = []
    if opts.wheels_from:
        src = Path(opts.wheels_from).resolve()
        if not src.is_dir():
            raise InputError(f"--wheels-from: no such directory: {opts.wheels_from}")
        index_args = ["--no-index", "--find-links", str(src)]
    project = Path(opts.project).resolve() if opts.project else project_dir()

    progress(f"bundle for Python {target.version} on {', '.join(target.platforms)} -> {out}")
    with tempfile.TemporaryDirectory(prefix="jigsaw-bundle-") as tmp_name:
        tmp = Path(tmp_name)
        progress("runtime:")
        runtime = collect_runtime(target.version, progress)
        progress(f"  {runtime.origin}: tritonserver, Python backend, stub {runtime.stub_version} only, "
                 f"{runtime.libs_packed} of {runtime.libs_total} libraries"
                 + (f" (not needed: {', '.join(runtime.libs_left_out)})" if runtime.libs_left_out else ""))
        progress("project:")
        project_wheel = build_project_wheel(project, tmp / "wheels", index_args, progress)
        name, version, requires = wheel_metadata(project_wheel)
        progress(f"  {project_wheel.name} ({_mib(project_wheel.stat().st_size)})")
        dep_wheels, must_have = collect_dependencies(requires, extra, opts.deps, exclude, target, index_args, tmp,
                                                     progress)
        manifest = {
            "made_by": f"jigsaw bundle ({name} {version})",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": target.version,
            "platforms": list(target.platforms),
            "runtime": {"from": runtime.origin, "nvidia_pytriton": runtime.version, "stub": runtime.stub_version,
                        "libraries": runtime.libs_packed, "libraries_left_out": runtime.libs_left_out},
            "wheels": [project_wheel.name, *(w.name for w in dep_wheels)],
            "stub_wheels": [w.name for w in dep_wheels if normalize(w.name.split("-")[0]) in STUB_PACKAGES],
            "target_must_have": must_have,
            "install": "./install.sh --target DIR (see ./install.sh --help)",
        }
        meta = tmp / "meta"
        meta.mkdir()
        (meta / "BUNDLE.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (meta / "install.sh").write_text(install_script(target.version, manifest["stub_wheels"]))
        (meta / "install.sh").chmod(0o755)
        (tmp / "repacked").mkdir()
        size, parts = write_tarball(out, [
            ("install.sh + BUNDLE.json", [(meta / "install.sh", "install.sh"), (meta / "BUNDLE.json", "BUNDLE.json")]),
            ("project wheel", [(project_wheel, f"wheels/{project_wheel.name}")]),
            ("dependency wheels", [(w, f"wheels/{w.name}") for w in dep_wheels]),
            ("runtime", [(src, f"runtime/{arc}") for src, arc in runtime.files]),
        ], opts.level, opts.repack, tmp / "repacked", progress)
    return BundleReport(out, size, parts, manifest["wheels"], must_have, time.monotonic() - started)
