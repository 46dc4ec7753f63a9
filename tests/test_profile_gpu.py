"""The GPU profiler's calibration to Triton: the probe against a real tritonserver (CPU runners), the fit,
the corrected rows, and ``--reuse`` of an in-process grid. (The in-process GPU grid itself needs a GPU; the
zoo tests need torch and transformers, which CI does not install, and are skipped without them.)"""
from __future__ import annotations

import csv
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir
from jigsawserve.tools import profile_gpu as pg
from jigsawserve.tools.probe import Probe

ROOT = Path(__file__).resolve().parents[1]
H200 = gpu_type("h200-141gb")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "repo").mkdir()
    http, grpc, metrics = free_ports(3)
    with TritonServer(tmp / "repo", prepare_backend_dir(tmp / "backends"), load=(), http_port=http,
                      grpc_port=grpc, metrics_port=metrics, log_path=tmp / "server.log") as server:
        p = Probe(server.grpc_url, tmp / "repo", width=8)
        p.metrics_url = server.metrics_url  # for the runners' own metrics
        yield p
        p.close()


def test_probe_times_a_runner_served_by_triton(probe):
    runtime = {"kind": "numpy_mlp", "delay_ms": 20.0}
    load_s = probe.load("slow", runtime, [1, 4], [{}, {}], kind="KIND_CPU")
    try:
        assert load_s > 0
        t = probe.measure("slow", batch=4, concurrency=2, min_reps=5, seconds=0.0)
        # each request runs alone on one of the 2 instances: ~20 ms each, both busy at once
        assert t.n == 10
        assert 20 <= t.p95_ms < 200 and 20 <= t.mean_ms <= t.p95_ms + 1e-9
        assert t.throughput_rps == pytest.approx(2 * 4 / t.mean_ms * 1000, rel=0.3)
    finally:
        probe.unload("slow")


def test_a_runner_exports_the_rows_it_padded_its_batches_with(probe):
    """A runner that runs batch sizes 1 and 4 only pads 3 rows to 4: Triton's metrics page shows the
    padding (what the controller adds to the requested rows to judge a batch's time)."""
    probe.load("padded", {"kind": "numpy_mlp", "pad_to": [1, 4]}, [1, 4], [{}], kind="KIND_CPU")
    try:
        probe.measure("padded", batch=3, concurrency=1, warmup=0, min_reps=5, seconds=0.0)
        time.sleep(0.15)  # increments are sent at most every 0.1 s, when a batch runs
        probe.measure("padded", batch=1, concurrency=1, warmup=0, min_reps=1, seconds=0.0)
        text = urllib.request.urlopen(probe.metrics_url, timeout=10).read().decode()
        padded = [x.value for fam in text_string_to_metric_families(text) for x in fam.samples
                  if x.name == "jigsaw_runner_padding_rows_total" and x.labels == {"model": "padded"}]
        assert padded == [5.0], padded
    finally:
        probe.unload("padded")


def test_probe_reports_a_runner_that_does_not_load(probe):
    with pytest.raises(InferenceServerException):
        probe.load("broken", {"kind": "no_such_kind"}, [1], [{}], kind="KIND_CPU")


def _measured(points: dict) -> pg.Measured:
    m = pg.Measured()
    m.points.update(points)
    return m


def test_fit_recovers_offset_and_factor():
    iso = {("v", 1, 1, b): (t, t, b / t * 1000) for b, t in ((1, 2.0), (4, 5.0), (16, 20.0))}
    served = {k: (0.8 + 1.25 * v[0], 0.0, 0.0) for k, v in iso.items()}
    served[("w", 1, 1, 1)] = (9.0, 0.0, 0.0)  # not in the in-process grid: not compared
    fit = pg.fit_calibration(_measured(iso), _measured(served))
    assert fit["offset_ms"] == pytest.approx(0.8, abs=1e-3) and fit["factor"] == pytest.approx(1.25, abs=1e-3)
    assert fit["fit_max_abs_error_pct"] < 0.1 and len(fit["points"]) == 3


def test_fit_needs_two_points():
    with pytest.raises(RuntimeError, match="at least 2"):
        pg.fit_calibration(_measured({("v", 1, 1, 1): (1.0, 1.0, 1.0)}), _measured({("v", 1, 1, 1): (2.0, 0, 0)}))


def test_calibrated_rows_map_latency_and_mean_batch_time():
    row = {"variant": "v", "gpu": "h200-141gb", "mig": 1, "mps": 2, "batch": 4, "latency_ms": 10.0,
           "throughput_rps": 1000.0, "source": "measured"}  # mean batch time 2 x 4 / 1000 s = 8 ms
    out = pg.calibrated([row], offset_ms=1.0, factor=1.5)[0]
    assert out["latency_ms"] == 16.0
    assert out["throughput_rps"] == pytest.approx(8 / 13.0 * 1000, abs=0.1)
    assert row["latency_ms"] == 10.0  # the input is left as it was


def test_reuse_reads_an_isolated_grid_and_marks_missing_points(tmp_path):
    path = tmp_path / "p.isolated.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "gpu", "mig", "mps", "batch", "latency_ms", "throughput_rps", "source"])
        w.writerow(["resnet18", "h200-141gb", 1, 1, 4, 1.5, 2000.0, "measured"])
        w.writerow(["resnet18", "h200-141gb", 1, 1, 2, 1.0, 1800.0, "interpolated"])
    got = pg.load_isolated(str(path), H200)
    assert got.points[("resnet18", 1, 1, 4)] == (1.5, pytest.approx(2.0), 2000.0)
    assert ("resnet18", 1, 1, 2) not in got.points           # interpolated rows are recomputed
    assert got.points[("resnet18", 7, 1, 16)] is None        # in the measured grid, absent: did not run
    assert pg.isolated_path("x/profiles.csv") == "x/profiles.isolated.csv"


def test_calibration_takes_one_variant_per_task():
    apps = [load_app(ROOT / "examples" / "h200" / f"{n}.yaml") for n in ("traffic", "social")]
    assert pg.calibration_archs(apps) == {"retinanet_resnet50_fpn": "retinanet_resnet50_fpn", "efficientnet_b4": "efficientnet_b4",
                                          "vgg16_bn": "vgg16_bn", "resnet50": "resnet50", "git-large": "git-large"}


def test_capture_copies_makes_device_scalars_on_the_target_device():
    torch = pytest.importorskip("torch")
    from jigsawserve.triton_backend.zoo import CaptureCopies
    mode = CaptureCopies()
    with torch.device("meta"), mode:
        a = torch.tensor(0.5)                                   # default device: meta
        b = torch.tensor(1.0, device="meta", dtype=torch.float16)
    with mode:
        c = torch.tensor(2.0)                                   # bound for the CPU: left alone
        d = torch.ones(3).to(torch.float64)
    assert (a.device.type, b.device.type, b.dtype, c.device.type, d.dtype) == ("meta", "meta", torch.float16, "cpu",
                                                                              torch.float64)
    assert mode.replaced == 2


def test_reuse_measures_again_a_variant_that_never_ran(tmp_path):
    path = tmp_path / "p.isolated.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "gpu", "mig", "mps", "batch", "latency_ms", "throughput_rps", "source"])
        w.writerow(["git-base", "h200-141gb", 1, 1, 4, 0.0, 0.0, "measured"])   # failed everywhere
        w.writerow(["resnet18", "h200-141gb", 1, 1, 4, 1.5, 2000.0, "measured"])
        w.writerow(["resnet18", "h200-141gb", 1, 1, 16, 0.0, 0.0, "measured"])  # failed at batch 16
    got = pg.load_isolated(str(path), H200)
    assert {k[0] for k in got.points} == {"resnet18"}
    assert got.points[("resnet18", 1, 1, 16)] is None


def test_git_builds_where_an_installed_package_cannot_be_imported(tmp_path):
    """A runner stub with numpy 1.x first meets the H200 host's scipy, built for numpy 2: importing it
    raises AttributeError, and scikit-learn (which needs scipy) fails with it. transformers imports both
    when installed; the zoo hides them and builds GIT."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import json
    import os
    import subprocess
    import sys
    fake = tmp_path / "scipy"
    fake.mkdir()
    (fake / "__init__.py").write_text("")  # like scipy: submodules load lazily, the package imports fine
    tried = tmp_path / "tried"
    (fake / "optimize.py").write_text(f"open({str(tried)!r}, 'a').write('x')\n"
                                      "import numpy\nnumpy.long  # numpy 1.x under a numpy-2 build\n")
    (tmp_path / "sklearn").mkdir()
    (tmp_path / "sklearn" / "__init__.py").write_text("import scipy\n")
    (tmp_path / "sklearn" / "metrics.py").write_text("def roc_curve(): pass\n")
    code = ("import sys; from triton_backend import zoo; m = zoo.ARCHS['git-base']().build(); "
            "print(type(m).__name__, zoo.HIDDEN, sys.modules.get('scipy'))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    probe = subprocess.run([sys.executable, "-c", "import scipy.optimize"], env=env, capture_output=True, text=True)
    if probe.returncode == 0:
        pytest.skip("this numpy has np.long: the fake scipy imports fine")
    tried.unlink()
    env["TMPDIR"] = str(tmp_path)  # where the first process keeps its verdict
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == ["GitForCausalLM", "['scipy',", "'sklearn']", "None"]
    # the second process took the first one's verdict: it did not try scipy again
    assert tried.read_text() == "x"
    assert [json.loads(f.read_text()) for f in tmp_path.glob("jigsaw-unusable-*.json")] == [["scipy", "sklearn"]]
