"""Move a running Triton server to a new plan through its model-control API, without dropping requests.

Order: write the new configs beside the old ones; load new and changed variant runners,
``LOAD_THREADS`` at a time (an instance-count-only change is applied in place by Triton); once all
are ready, replace the graph model's routing file (atomically): its instances take the new routing at
their next execute, with no reload. Only when the graph model's config itself changed (another app
shape, or it is not loaded) is it loaded too, after the routing file (Triton loads the new copy in
the background and swaps it in when ready; requests in flight finish on the old one). Last, after
the instances switched and the requests that started on the old routing had time to finish
(``drain_s``: by default twice the SLO, at least ``MIN_DRAIN_S``), unload the runners the new plan
no longer uses. If any load fails, no further load starts and those in flight finish; then the old
routing file is put back if it had been replaced (and the instances given the drain to return to
it), every model already moved is loaded again with its old config, the runners added are unloaded,
the old files are restored, and the error is raised: the old plan keeps serving.

Standby runners (``render.with_standby``: a likely next plan's runners, in no route) load after the new
routing is in place, so they never delay it, and a failed one is only logged: the live plan does not
need it. When a later plan is that standby plan, its runners are all loaded with the same configs, and
the apply is a routing-file swap.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tritonclient.grpc as grpcclient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from jigsawserve.triton_backend.backlog import PREFIX as BACKLOG_PREFIX

from ..errors import InputError, UnreachableError
from .render import MANIFEST, Rendered, ensure_runner_key, routing_path, write_repository, write_routing
from .server import CONTROL_HEADER, GRPC_CONTROL_HEADER, LOAD_THREADS, REPO_LOCK

MIN_DRAIN_S = 5.0


@dataclass
class ApplyReport:
    loaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    rerouted: list[str] = field(default_factory=list)  # graph models that took the new routing in place, unreloaded
    draining: threading.Thread | None = None  # unloads the old runners after the drain (background apply)
    retiring: list[str] = field(default_factory=list)  # what ``draining`` unloads
    serving_s: float = 0.0  # from the call to the new plan serving (its routing in place)
    standby: list[str] = field(default_factory=list)  # standby runners loaded after that (``render.with_standby``)
    standby_failed: list[str] = field(default_factory=list)  # ... whose load failed (the live plan is unaffected)
    warming: threading.Thread | None = None  # loads ``standby_loading`` (background apply)
    standby_loading: list[str] = field(default_factory=list)  # the standby runners ``warming`` loads
    waited_s: float = 0.0  # before the call: waiting for earlier applies' loads and drains (``Applier``)


class _LoadFailed(Exception):
    """A failed load: the model's name and Triton's error."""

    def __init__(self, name: str, exc: InferenceServerException) -> None:
        super().__init__(name, exc)
        self.name, self.exc = name, exc


def _old_configs(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    manifest = repo / MANIFEST
    if not manifest.exists():
        raise InputError(f"{repo}: no {MANIFEST}; is this a repository written by `jigsaw render`?")
    names = json.loads(manifest.read_text())["models"]
    return {n: text_format.Parse((repo / n / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
            for n in names if (repo / n / "config.pbtxt").exists()}


def _order(name: str, cfg: model_config_pb2.ModelConfig) -> int:
    """Runners first, then the graph model that calls them."""
    role = json.loads(cfg.parameters["jigsaw"].string_value)["role"] if "jigsaw" in cfg.parameters else ""
    return 0 if role == "runner" else 1


def grpc_target(client: grpcclient.InferenceServerClient) -> str:
    """The ``host:port`` a tritonclient.grpc client talks to ("the server" where it cannot tell)."""
    try:
        target = client._channel._channel.target().decode()  # grpc's channel keeps the target it was made for
    except Exception:  # noqa: BLE001 (another client or grpc version: the message just says less)
        return "the server"
    return target.removeprefix("dns:///")


def control_headers(key: str | None, grpc: bool) -> dict[str, str] | None:
    """The header that unlocks model control on a server started with a control key."""
    if not key:
        return None
    return {GRPC_CONTROL_HEADER if grpc else CONTROL_HEADER: key}


def _load(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None, rendered: Rendered,
          names: list[str], moved: list[str], progress: Callable[[str], None]) -> None:
    """Load ``names``, ``LOAD_THREADS`` at a time, appending each one loaded to ``moved``. After a failed
    load no further one starts; those in flight finish, then the first failure in ``names`` order is
    raised as ``_LoadFailed``."""
    def one(name: str) -> None:
        progress(f"loading {name}")
        try:
            client.load_model(name, config=rendered.config_json(name), headers=headers)
        except InferenceServerException as exc:
            raise _LoadFailed(name, exc) from None
        moved.append(name)

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        futures = [pool.submit(one, name) for name in names]
        for future in wait(futures, return_when=FIRST_EXCEPTION).not_done:
            future.cancel()  # only the queued ones: the pool's exit waits for those in flight
    for future in futures:
        if not future.cancelled():
            future.result()  # raises the first failure


def _warm(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None, rendered: Rendered,
          names: list[str], report: ApplyReport, progress: Callable[[str], None]) -> None:
    """Load standby runners, ``LOAD_THREADS`` at a time; a failure costs that standby only (logged, and
    kept in ``report.standby_failed``): the live plan serves without it."""
    def one(name: str) -> None:
        progress(f"loading standby {name}")
        try:
            client.load_model(name, config=rendered.config_json(name), headers=headers)
        except InferenceServerException as exc:
            progress(f"standby {name} failed to load: {exc}")
            report.standby_failed.append(name)
            return
        report.standby.append(name)

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        list(pool.map(one, names))


def _reroute(rendered: Rendered, repo: Path, progress: Callable[[str], None]) -> str | None:
    """Write the graph model's new routing file; the routing it replaced (None: there was none, or it
    is unchanged)."""
    path = routing_path(repo, rendered.graph)
    previous = path.read_text() if path.is_file() else None
    if not write_routing(path, rendered.routing_text()):
        return None
    progress(f"new routing for {rendered.graph}")
    return previous


def apply(rendered: Rendered, repo: Path, client: grpcclient.InferenceServerClient,
          headers: dict[str, str] | None = None, progress: Callable[[str], None] = lambda _: None,
          drain_s: float | None = None, background: bool = False, loading: frozenset[str] = frozenset()
          ) -> ApplyReport:
    """Apply ``rendered`` to the server behind ``client`` serving ``repo``.

    ``client`` must be a tritonclient.grpc client: the runner loads share it from several threads (a
    gRPC channel is thread-safe; tritonclient.http's connection pool is not). A model whose config is
    unchanged and that is ready is left alone: the graph model then takes the new routing in place
    (``report.rerouted``). Runners the new plan drops are unloaded ``drain_s`` seconds after the new
    routing was written (default: twice the app's latency SLO, at least ``MIN_DRAIN_S``: late
    requests stay longer): requests that started on the old routing finish on them. With
    ``background``, that drain and unload run in ``report.draining`` and the call returns as soon as
    the new plan serves; join it before the next apply (``Applier`` does). ``loading``: standby runners an
    earlier background apply is still loading (not loaded again here; ``Applier`` passes them)."""
    started = time.monotonic()
    old = _old_configs(repo)
    report = ApplyReport()
    try:  # the first calls to the server: one that nothing answers at fails here, before anything changed
        for name in sorted(rendered.configs, key=lambda n: (_order(n, rendered.configs[n]), n)):
            same = old.get(name) == rendered.configs[name] and (name in loading or client.is_model_ready(name))
            (report.unchanged if same else report.loaded).append(name)
    except InferenceServerException as exc:
        if exc.status() != "StatusCode.UNAVAILABLE":
            raise
        raise UnreachableError(f"cannot reach the server's gRPC endpoint at {grpc_target(client)}: "
                               f"{exc.message()}; nothing changed") from None
    backup = repo.with_name(repo.name + ".previous")
    if backup.exists():
        shutil.rmtree(backup)
    # live files, kept on rollback: the graph instances' tables, and the lock `jigsaw serve` holds (its inode)
    shutil.copytree(repo, backup, ignore=shutil.ignore_patterns(f"{BACKLOG_PREFIX}*", REPO_LOCK))
    ensure_runner_key(repo)  # the new runners read it when they load
    for name, cfg in rendered.configs.items():  # new model directories must exist before loading
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    wait_s = drain_s if drain_s is not None else max(MIN_DRAIN_S, 2 * float(rendered.manifest.get("latency_slo_ms", 0)) / 1000)
    moved: list[str] = []
    replaced: str | None = None
    standby = [n for n in report.loaded if n in set(rendered.standby)]
    try:
        _load(client, headers, rendered,
              [n for n in report.loaded if _order(n, rendered.configs[n]) == 0 and n not in standby], moved, progress)
        replaced = _reroute(rendered, repo, progress)  # every runner it names is ready now
        _load(client, headers, rendered, [n for n in report.loaded if _order(n, rendered.configs[n]) == 1],
              moved, progress)
    except _LoadFailed as failed:
        progress(f"load failed, rolling back: {failed.exc}")
        if replaced is not None:
            write_routing(routing_path(repo, rendered.graph), replaced)
            time.sleep(wait_s)  # the instances return to the old routing before runners they used are unloaded
        _rollback(client, headers, old, moved, backup, repo)
        raise RuntimeError(f"apply failed while loading {failed.name}: {failed.exc}; rolled back, the old plan "
                           "keeps serving") from None
    report.serving_s = time.monotonic() - started
    if replaced is not None and rendered.graph in report.unchanged:
        report.rerouted.append(rendered.graph)
    write_repository(rendered, repo)
    shutil.rmtree(backup)
    gone = sorted(set(old) - set(rendered.configs))

    def retire() -> None:
        time.sleep(wait_s)
        for name in gone:
            progress(f"unloading {name}")
            try:
                client.unload_model(name, headers=headers)
            except InferenceServerException as exc:
                if not background:
                    raise
                progress(f"unloading {name} failed: {exc}")  # nobody to raise to: it keeps its memory only
                continue
            report.unloaded.append(name)

    report.standby_loading = standby
    if standby and background:
        report.warming = threading.Thread(target=_warm, args=(client, headers, rendered, standby, report, progress),
                                          name="jigsaw-standby", daemon=True)
        report.warming.start()
    elif standby:
        _warm(client, headers, rendered, standby, report, progress)
    if gone and background:
        report.retiring = gone
        report.draining = threading.Thread(target=retire, name="jigsaw-drain", daemon=True)
        report.draining.start()
    elif gone:
        retire()
    return report


def reload_runner(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None, repo: Path,
                  name: str) -> None:
    """Unload ``name`` and load it again with the config its repository holds: a runner whose stub died stays
    dead (Triton 2.51 neither restarts it nor calls it unready), and a load of the same config is no change to
    Triton (the dead stub stayed, measured): the unload ends it, the load brings up fresh stubs."""
    cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    client.unload_model(name, headers=headers)
    client.load_model(name, config=json_format.MessageToJson(cfg, preserving_proto_field_name=True), headers=headers)


class Applier:
    """``apply`` for a controller: returns once the new plan serves (standby runners load, and the old
    runners drain and unload, in the background). The next apply waits only for what its live plan needs: the
    standby loads still under way of a runner it routes to, and the drains still to unload a runner of its
    plan (an unload never races a load); standby runners still loading stay with their load (never loaded
    twice at once). So a scale-up to the standby plan right after the last switch is not held up by the next
    standby's loads (on the H100 a wait for them had delayed one by 13 s, bench/results/h100-2026-12-08/standby-all), nor a replan by an earlier drain."""

    def __init__(self, repo: Path, client: grpcclient.InferenceServerClient, headers: dict[str, str] | None = None,
                 progress: Callable[[str], None] = lambda _: None) -> None:
        self.repo, self.client, self.headers, self.progress = repo, client, headers, progress
        self._draining: list[ApplyReport] = []  # applies whose old runners are still to be unloaded
        self._warming: list[ApplyReport] = []  # applies whose standby runners are still loading

    def __call__(self, rendered: Rendered) -> ApplyReport:
        began = time.monotonic()
        self.wait(set(rendered.configs), needed=set(rendered.configs) - set(rendered.standby))
        waited = time.monotonic() - began
        loading = frozenset(n for r in self._warming if r.warming is not None and r.warming.is_alive()
                            for n in r.standby_loading)
        report = apply(rendered, self.repo, self.client, self.headers, self.progress, background=True,
                       loading=loading)
        report.waited_s = waited
        if report.draining is not None:
            self._draining.append(report)
        if report.warming is not None:
            self._warming.append(report)
        return report

    def wait(self, names: set[str] | None = None, needed: set[str] | None = None) -> None:
        """Until the standby loads of any of ``needed`` and the drains that unload any of ``names`` (default:
        every load and drain) are done."""
        for report in list(self._warming):
            assert report.warming is not None
            if needed is None or needed & set(report.standby_loading):
                report.warming.join()
            if not report.warming.is_alive():
                self._warming.remove(report)
        for report in list(self._draining):
            assert report.draining is not None
            if names is None or names & set(report.retiring):
                report.draining.join()
            if not report.draining.is_alive():
                self._draining.remove(report)


def _rollback(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None,
              old: dict[str, model_config_pb2.ModelConfig], moved: list[str], backup: Path, repo: Path) -> None:
    for name in reversed(moved):
        if name in old:
            (repo / name / "config.pbtxt").write_text(text_format.MessageToString(old[name]))
            client.load_model(name, config=json_format.MessageToJson(old[name], preserving_proto_field_name=True),
                              headers=headers)
        else:
            try:
                client.unload_model(name, headers=headers)
            except InferenceServerException:
                pass  # it never loaded
    for table in repo.glob(f"*/{BACKLOG_PREFIX}*"):  # the graph instances' live table (the backup leaves it out)
        if (backup / table.parent.name).is_dir():
            table.replace(backup / table.parent.name / table.name)
    if (repo / REPO_LOCK).exists():  # moved, not copied: the serving process keeps its lock on this file
        (repo / REPO_LOCK).replace(backup / REPO_LOCK)
    shutil.rmtree(repo)
    shutil.move(str(backup), str(repo))
