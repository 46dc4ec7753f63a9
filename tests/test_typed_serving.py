"""Typed I/O served end to end on CPU: tests/typed_app (an encoded image in; find bright squares, crop
each, measure each crop) planned, rendered and served by a real tritonserver, called with ordinary
tritonclient requests. The fan-out is what the images hold; a request whose finder finds nothing, bad
input and an adapter that raises are each answered without harming the server."""
from __future__ import annotations

import io
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from jigsawserve.orchestrator.spec.appspec import load_app
from jigsawserve.orchestrator.spec.gpus import gpu_type
from jigsawserve.orchestrator.serving.inventory import Inventory
from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
from jigsawserve.orchestrator.spec.profiles import load_profiles
from jigsawserve.orchestrator.serving.render import build_configs, write_repository
from jigsawserve.orchestrator.serving.server import TritonServer, free_ports
from jigsawserve.orchestrator.serving.tritonenv import prepare_backend_dir, server_env

APP = Path(__file__).resolve().parent / "typed_app"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[TritonServer, grpcclient.InferenceServerClient]]:
    tmp = tmp_path_factory.mktemp("typed")
    app = load_app(APP / "app.yaml")
    plan = make_plan(app, load_profiles(APP / "profiles.csv"), gpu_type("cpu"), 20.0, PlanOptions(gpus=4))
    write_repository(build_configs(plan, Inventory(gpus=(), source="test: cpu"), graph_instances=2), tmp / "repo")
    http_port, grpc_port, metrics_port = free_ports(3)
    with TritonServer(tmp / "repo", prepare_backend_dir(tmp / "backends"), http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, log_path=tmp / "tritonserver.log", env=server_env()) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            yield server, client
        finally:
            client.close()


def _png(squares: list[tuple[int, int, int, int, int]], width: int = 64, height: int = 48) -> bytes:
    """A PNG of a black image with bright rectangles (x0, y0, x1, y1, level)."""
    img = np.zeros((height, width, 3), np.uint8)
    for x0, y0, x1, y1, level in squares:
        img[y0:y1, x0:x1] = level
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _image(data: bytes, dtype: str = "BYTES", shape: tuple[int, ...] = (1, 1)) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("IMAGE", list(shape), dtype)
    inp.set_data_from_numpy(np.array([data] * int(np.prod(shape)), dtype=np.object_).reshape(shape))
    return inp


def _metric(server: TritonServer, name: str) -> dict[str, float]:
    """Per parent variant, the counter ``name`` of edge find -> measure."""
    time.sleep(0.3)  # the stages send their counters at most every 0.1 s
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return {s.labels["variant"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.removesuffix("_total") == name and s.labels.get("child") == "measure"}


def test_each_square_answered_with_its_variant(served) -> None:
    server, client = served
    result = client.infer("shapes", [_image(_png([(4, 4, 14, 10, 200), (30, 20, 50, 40, 255)]))])
    means, sizes = result.as_numpy("MEAN"), result.as_numpy("SIZE")
    assert means.dtype == np.float32 and sizes.dtype == np.int32
    order = np.argsort(means[0])
    assert means[0][order].tolist() == [200.0, 255.0]
    assert sizes[0][order].tolist() == [[6, 10], [20, 20]]
    variants = result.as_numpy("measure_VARIANT")
    assert variants.shape == (1, 2) and {v.decode() for v in variants[0]} <= {"meter_a", "meter_b"}


def test_fan_out_follows_the_data_and_is_exported(served) -> None:
    server, client = served
    parents, children = _metric(server, "jigsaw_edge_parent_items"), _metric(server, "jigsaw_edge_child_items")
    for n in (1, 3, 0):  # squares per image; 0: nothing found
        squares = [(4 + 15 * i, 4, 12 + 15 * i, 12, 255) for i in range(n)]
        assert client.infer("shapes", [_image(_png(squares))]).as_numpy("MEAN").shape == (1, n)
    after_p, after_c = _metric(server, "jigsaw_edge_parent_items"), _metric(server, "jigsaw_edge_child_items")
    assert sum(after_p.values()) - sum(parents.values()) == 3
    assert sum(after_c.values()) - sum(children.values()) == 4


def test_nothing_found_gives_an_empty_answer(served) -> None:
    _, client = served
    result = client.infer("shapes", [_image(_png([]))])
    assert result.as_numpy("MEAN").shape == (1, 0)
    assert result.as_numpy("SIZE").shape == (1, 0, 2)
    assert result.as_numpy("measure_VARIANT").shape == (1, 0)


def test_http_client(served) -> None:
    server, _ = served
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[_png([(2, 2, 8, 8, 255)])]], dtype=np.object_))
    try:
        assert client.infer("shapes", [inp]).as_numpy("SIZE").tolist() == [[[6, 6]]]
    finally:
        client.close()


@pytest.mark.parametrize("make, match", [
    (lambda: _image(b"GIF89a but not really"), r"adapter decode_image of source task find failed: ValueError: "
                                               r"IMAGE is not a decodable image: 21 bytes"),
    (lambda: _image(_png([(1, 1, 5, 5, 255)], width=13)),
     r"adapter shapes:picky_crops on edge find->measure failed: ValueError: refusing an image 13 pixels wide"),
    (lambda: _image(_png([]), shape=(2, 1)), r"input IMAGE must be one request: shape \[1, 1\], got \[2, 1\]"),
    (lambda: _image(_png([]), shape=(1, 2)), r"unexpected shape for input 'IMAGE'"),
])
def test_bad_input_is_a_clear_error_and_the_server_stays_healthy(served, make, match: str) -> None:
    _, client = served
    with pytest.raises(InferenceServerException, match=match):
        client.infer("shapes", [make()])
    assert client.is_server_live() and client.is_model_ready("shapes")
    assert client.infer("shapes", [_image(_png([(1, 1, 5, 5, 255)]))]).as_numpy("MEAN").shape == (1, 1)


def test_wrong_dtype_is_rejected_by_triton(served) -> None:
    _, client = served
    inp = grpcclient.InferInput("IMAGE", [1, 1], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
    with pytest.raises(InferenceServerException, match=r"input 'IMAGE' data-type is 'FP32', but model 'shapes' "
                                                       r"expects 'BYTES'"):
        client.infer("shapes", [inp])


def test_jigsaw_infer_prints_answers_per_item(served, tmp_path: Path, capsys) -> None:
    import json

    from jigsawserve.orchestrator.cli import main
    server, _ = served
    (tmp_path / "two.png").write_bytes(_png([(2, 2, 8, 8, 255), (20, 20, 30, 26, 200)]))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert main(["infer", "--url", server.grpc_url, "--model", "shapes", "--input", str(tmp_path / "two.png"),
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert "measure: 2 item(s)" in out
    (doc,) = json.loads(out.strip().splitlines()[-1])
    items = sorted(doc["answers"]["measure"], key=lambda i: i["MEAN"])
    assert [(i["MEAN"], i["SIZE"]) for i in items] == [(200.0, [6, 10]), (255.0, [6, 6])]
    assert all(i["variant"] in ("meter_a", "meter_b") for i in items)
    assert main(["infer", "--url", server.grpc_url, "--model", "shapes", "--input", str(tmp_path / "junk.png")]) == 1
    assert "IMAGE is not a decodable image" in capsys.readouterr().err
