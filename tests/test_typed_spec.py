"""Typed app specs, adapters and variants from model files, without a server: parsing errors name the
field, model files are checked at plan/render time, and the rendered configs are valid ModelConfigs."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from jigsawserve.orchestrator.spec.appspec import load_app, parse_app
from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.spec.typed import check_variants, locate
from jigsawserve.triton_backend import adapters
from jigsawserve.triton_backend.runners import onnx as onnx_runner
from jigsawserve.triton_backend.tensors import TensorSpec

APP = Path(__file__).resolve().parent / "typed_app" / "app.yaml"


def _doc() -> dict:
    return yaml.safe_load(APP.read_text())


def _parse(doc: dict):
    return parse_app(doc, origin="test")


def test_untyped_apps_are_unchanged() -> None:
    assert load_app(Path(__file__).resolve().parents[1] / "examples" / "cpu" / "app.yaml").typed is None


def test_typed_app_parses_with_absolute_import_paths() -> None:
    app = load_app(APP)
    assert [t.name for t in app.typed.inputs] == ["IMAGE"] and app.typed.inputs[0].shape == ()
    assert [(o.name, o.task, o.output) for o in app.typed.outputs] == [("MEAN", "measure", "MEAN"),
                                                                       ("SIZE", "measure", "SIZE")]
    edge = app.typed.adapters["find->measure"]
    assert edge["use"] == "shapes:picky_crops" and edge["path"] == str(APP.parent)
    assert app.typed.adapters["find"] == {"use": "decode_image"}
    assert app.task("find").variant("find_a").runtime["path"] == str(APP.parent)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("inputs"), r"tasks.find.inputs: typed tensors and adapters need the request's tensors"),
    (lambda d: d["tasks"]["measure"].pop("outputs"), r"tasks.measure.outputs: required"),
    (lambda d: d.update(outputs={"X": "find.BOXES"}), r"outputs.X: 'find.BOXES': 'find' is not a sink task"),
    (lambda d: d.update(outputs={"X": "measure.NOPE"}), r"outputs.X: task measure has no output 'NOPE'"),
    (lambda d: d["tasks"]["measure"]["outputs"].update(MEAN={"dtype": "FP32", "shape": [-1]}),
     r"outputs.MEAN: measure.MEAN has shape \[-1\]: the response stacks one row per item"),
    (lambda d: d["tasks"]["find"]["inputs"].update(IMAGE={"dtype": "UINT7"}),
     r"tasks.find.inputs.IMAGE.dtype: 'UINT7' is not a Triton data type"),
    (lambda d: d["tasks"]["find"]["inputs"].update(IMAGE={"dtype": "UINT8", "shape": [0]}),
     r"tasks.find.inputs.IMAGE.shape: expected a list of positive sizes or -1"),
    (lambda d: d["edges"][0].update(adapter={"use": "crop_boxes", "min_scor": 0.5}),
     r"edges\[0\].adapter: bad arguments for adapter crop_boxes: got an unexpected keyword argument 'min_scor'"),
    (lambda d: d["edges"][0].update(adapter="crop"), r"edges\[0\].adapter.use: 'crop' is neither a built-in"),
    (lambda d: d["tasks"]["measure"].update(adapter="pass"), r"tasks.measure.adapter: only a source task"),
    (lambda d: d["tasks"]["find"]["variants"]["find_a"].update(runtime={"kind": "numpy_mlp"}),
     r"tasks.find.variants.find_a.runtime.kind: an app with typed inputs needs onnx, torchscript, python"),
])
def test_spec_errors_name_the_field(edit, match: str) -> None:
    doc = _doc()
    edit(doc)
    with pytest.raises(InputError, match=match):
        _parse(doc)


def test_python_class_signature_checked_at_plan_time() -> None:
    doc = _doc()
    doc["tasks"]["measure"]["variants"]["meter_b"]["runtime"]["class"] = "shapes:Broken"
    app = parse_app(doc, "test")  # import paths as load_app makes them
    with pytest.raises(InputError, match=r"tasks.measure.variants.meter_b.runtime.class: shapes:Broken has outputs "
                                         r"\{'MEAN': 'FP32'\}, the task declares \{'MEAN': 'FP32', 'SIZE': 'INT32'\}"):
        check_variants(_with_paths(app, doc))


def _with_paths(app, doc):
    """The app as load_app reads it from tests/typed_app (import paths made absolute)."""
    tmp = APP.parent / ".broken.yaml"
    tmp.write_text(yaml.safe_dump(doc))
    try:
        return load_app(tmp)
    finally:
        tmp.unlink()


def test_missing_model_file_names_file_and_field(tmp_path: Path) -> None:
    doc = _doc()
    doc["tasks"]["measure"]["variants"]["meter_b"]["runtime"] = {"kind": "onnx", "model": "nowhere/meter.onnx"}
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(doc))
    app = load_app(tmp_path / "app.yaml")
    with pytest.raises(InputError, match=rf"tasks.measure.variants.meter_b.runtime.model: model file "
                                         rf"{tmp_path}/nowhere/meter.onnx does not exist"):
        check_variants(app)
    with pytest.raises(InputError, match=r"x.model: package:no_such_pkg/m.onnx: the Python package 'no_such_pkg'"):
        locate("package:no_such_pkg/m.onnx", "x.model")


# ---------------------------------------------------------------------------------------------
# ONNX variants

def _scale_model(path: Path, dtype: int | None = None) -> Path:
    """A tiny ONNX model: Y = X * 2, X float [batch, -1, 3]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    elem = dtype or TensorProto.FLOAT
    two = helper.make_tensor("two", elem, [], [2])
    graph = helper.make_graph([helper.make_node("Mul", ["X", "two"], ["Y"])], "scale",
                              [helper.make_tensor_value_info("X", elem, ["batch", None, 3])],
                              [helper.make_tensor_value_info("Y", elem, ["batch", None, 3])], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_variant_runs_batches_and_ragged_items(tmp_path: Path) -> None:
    model = _scale_model(tmp_path / "scale.onnx")
    x, y = TensorSpec("X", "FP32", (-1, 3)), TensorSpec("Y", "FP32", (-1, 3))
    variant = onnx_runner.OnnxVariant(str(model), [x], [y], threads=1)
    items = [{"X": np.full((n, 3), n, np.float32)} for n in (1, 2, 1)]
    out = variant.infer(items)
    assert [o["Y"].tolist() for o in out] == [[[2.0] * 3], [[4.0] * 3] * 2, [[2.0] * 3]]


def test_onnx_signature_mismatch_is_an_input_error(tmp_path: Path) -> None:
    model = str(_scale_model(tmp_path / "scale.onnx"))
    x, y = TensorSpec("X", "UINT8", (-1, 3)), TensorSpec("OUT", "FP32", (4,))
    with pytest.raises(ValueError) as exc:
        onnx_runner.check({"model": model}, [x], [y])
    message = str(exc.value)
    assert message.startswith(f"model: {model}: input 'X' is FP32, the task declares X UINT8")
    assert "the model has no output 'OUT' (its outputs: Y)" in message
    with pytest.raises(ValueError, match=r"output 'Y' has shape \[-1, -1, 3\] \(batch first\), the task declares "
                                         r"Y \[4\] per item"):
        onnx_runner.check({"model": model, "bind": {}}, [TensorSpec("X", "FP32", (-1, 3))],
                          [TensorSpec("Y", "FP32", (4,))])
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"onnxruntime cannot load it"):
        onnx_runner.check({"model": str(tmp_path / "junk.onnx")}, [x], [y])


# ---------------------------------------------------------------------------------------------
# adapters

def test_crop_boxes_quads_boxes_scores_and_labels() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 5:25] = 255
    quad = np.array([[[5, 10], [25, 10], [25, 20], [5, 20]]], np.float32)
    (crop,) = adapters.crop_boxes({"IMAGE": img}, {"BOXES": quad})
    assert crop["IMAGE"].shape == (10, 20, 3) and crop["IMAGE"].mean() > 250
    boxes = np.array([[5, 10, 25, 20], [0, 0, 4, 4]], np.float32)
    out = {"BOXES": boxes, "SCORES": np.array([0.9, 0.2], np.float32), "LABELS": np.array([3, 1])}
    assert len(adapters.crop_boxes({"IMAGE": img}, out, scores="SCORES", min_score=0.5)) == 1
    assert len(adapters.crop_boxes({"IMAGE": img}, out, labels="LABELS", keep=[1])) == 1
    assert adapters.crop_boxes({"IMAGE": img}, {"BOXES": np.zeros((0, 4, 2), np.float32)}) == []
    with pytest.raises(ValueError, match=r"BOXES must be \[n, 4\] or \[n, 4, 2\] boxes, got shape \[2, 3\]"):
        adapters.crop_boxes({"IMAGE": img}, {"BOXES": np.zeros((2, 3), np.float32)})


def test_other_builtins() -> None:
    text = {"TEXT": np.array(b"two  words\n", dtype=np.object_)}
    assert [i["TEXT"].item() for i in adapters.split_text(text, {})] == [b"two", b"words"]
    (norm,) = adapters.resize_normalize({"IMAGE": np.full((5, 7, 3), 255, np.uint8)}, {}, size=[4, 6],
                                        mean=[0.5] * 3, std=[0.5] * 3)
    assert norm["IMAGE"].shape == (3, 4, 6) and np.allclose(norm["IMAGE"], 1.0)
    assert adapters.passthrough({"A": np.ones(1)}, {"B": np.zeros(2)}, map={"C": "B"})[0]["C"].shape == (2,)
    with pytest.raises(KeyError, match=r"the parent has no tensor 'Z'"):
        adapters.passthrough({}, {}, map={"C": "Z"})
    with pytest.raises(ValueError, match=r"IMAGE is not a decodable image: 3 bytes starting b'abc'"):
        adapters.decode_image({"IMAGE": np.array(b"abc", dtype=np.object_)}, {})


def test_apply_checks_child_items_against_the_declared_inputs() -> None:
    child = [TensorSpec("IMAGE", "UINT8", (-1, -1, 3))]
    _, fn = adapters.resolve({"use": "pass"})
    with pytest.raises(ValueError, match=r"child item 0: IMAGE must be UINT8, got float32"):
        adapters.apply(fn, {"IMAGE": np.zeros((2, 2, 3), np.float32)}, {}, child)
    with pytest.raises(ValueError, match=r"child item 0 lacks IMAGE \(it has X\)"):
        adapters.apply(fn, {"X": np.zeros(1)}, {}, child)
    assert adapters.apply(fn, {"IMAGE": np.zeros((2, 2, 3), np.uint8), "X": np.zeros(1)}, {}, child)[0].keys() == {"IMAGE"}


def test_typed_configs_render_as_model_configs() -> None:
    from jigsawserve.orchestrator.spec.gpus import gpu_type
    from jigsawserve.orchestrator.serving.inventory import Inventory
    from jigsawserve.orchestrator.planning.planner import PlanOptions, make_plan
    from jigsawserve.orchestrator.spec.profiles import load_profiles
    from jigsawserve.orchestrator.serving.render import build_configs
    from tritonclient.grpc import model_config_pb2

    app = load_app(APP)
    plan = make_plan(app, load_profiles(APP.parent / "profiles.csv"), gpu_type("cpu"), 20.0, PlanOptions(gpus=4))
    rendered = build_configs(plan, Inventory(gpus=(), source="test"))
    graph = rendered.configs["shapes"]
    assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch) for i in graph.input] == [
        ("IMAGE", model_config_pb2.TYPE_STRING, [1], True)]
    assert [(o.name, list(o.dims)) for o in graph.output] == [("MEAN", [-1]), ("SIZE", [-1, 2]),
                                                             ("measure_VARIANT", [-1])]
    runner = next(c for n, c in rendered.configs.items() if "__measure__" in n)
    assert [(o.name, list(o.dims)) for o in runner.output] == [("MEAN", [1]), ("SIZE", [2])]
    assert [list(i.dims) for i in runner.input] == [[-1, -1, 3]] and runner.input[0].allow_ragged_batch
