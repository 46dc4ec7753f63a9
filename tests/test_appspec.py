"""Tests for jigsawserve.orchestrator.spec.appspec: app-spec validation (errors name the field) and derived structure."""
from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from jigsawserve.orchestrator.spec.appspec import AppSpec, Edge, load_app, parse_app
from jigsawserve.orchestrator.errors import InputError


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid two-task chain ``a -> b``; keyword overrides replace top-level fields (None deletes)."""
    doc: dict[str, Any] = {
        "name": "demo",
        "latency_slo_ms": 100,
        "accuracy_slo": 0.9,
        "tasks": {
            "a": {"variants": {"a_small": {"accuracy": 70.0}, "a_large": {"accuracy": 80.0}}},
            "b": {"variants": {"b_small": {"accuracy": 0.6}, "b_large": {"accuracy": 0.75}}},
        },
        "edges": [{"from": "a", "to": "b", "factor": 2.0}],
    }
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def chain_tasks(*names: str) -> dict[str, Any]:
    return {n: {"variants": {f"{n}_v": {"accuracy": 0.9}}} for n in names}


def fails(doc: Any, *fragments: str) -> str:
    """parse_app(doc) raises InputError whose message contains every fragment; returns the message."""
    with pytest.raises(InputError) as info:
        parse_app(doc)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_the_base_spec_is_valid() -> None:
    app = parse_app(spec())
    assert isinstance(app, AppSpec)
    assert app.name == "demo"
    assert app.latency_slo_ms == 100.0 and app.accuracy_slo == 0.9
    assert [t.name for t in app.tasks] == ["a", "b"]


# ---------------------------------------------------------------- graph structure errors

def test_two_task_cycle_names_both_tasks() -> None:
    doc = spec(edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "a"}])
    msg = fails(doc, "cycle", "edges")
    assert re.search(r"\ba\b", msg) and re.search(r"\bb\b", msg)


def test_three_task_cycle_names_its_tasks_but_not_the_source_outside_it() -> None:
    doc = spec(tasks=chain_tasks("src", "x", "y", "z"),
               edges=[{"from": "src", "to": "x"}, {"from": "x", "to": "y"},
                      {"from": "y", "to": "z"}, {"from": "z", "to": "x"}])
    msg = fails(doc, "cycle", "x", "y", "z")
    assert "src" not in msg


def test_cycle_message_omits_tasks_downstream_of_the_cycle() -> None:
    doc = spec(tasks=chain_tasks("a", "b", "c"),
               edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "a"}, {"from": "b", "to": "c"}])
    msg = fails(doc, "cycle", "a", "b")
    assert not re.search(r"\bc\b", msg), msg


def test_self_loop_is_a_cycle() -> None:
    fails(spec(edges=[{"from": "a", "to": "a"}]), "edges[0]", "cycle")


def test_edge_to_unknown_task_names_edges_i_to() -> None:
    doc = spec(edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "ghost"}])
    fails(doc, "edges[1].to", "ghost")


def test_edge_from_unknown_task_names_edges_i_from() -> None:
    fails(spec(edges=[{"from": "ghost", "to": "b"}]), "edges[0].from", "ghost")


def test_duplicate_edge() -> None:
    fails(spec(edges=[{"from": "a", "to": "b"}, {"from": "a", "to": "b"}]), "edges[1]", "duplicate")


def test_edges_not_a_list() -> None:
    fails(spec(edges={"from": "a", "to": "b"}), "edges")


def test_factor_for_unknown_upstream_variant() -> None:
    doc = spec(edges=[{"from": "a", "to": "b", "factor": 2.0, "factors": {"a_huge": 3.0}}])
    fails(doc, "edges[0].factors.a_huge", "a_huge")


def test_factor_for_a_downstream_variant_is_not_an_upstream_variant() -> None:
    doc = spec(edges=[{"from": "a", "to": "b", "factors": {"b_small": 3.0}}])
    fails(doc, "edges[0].factors.b_small")


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5])
def test_nonpositive_edge_factor(value: float) -> None:
    fails(spec(edges=[{"from": "a", "to": "b", "factor": value}]), "edges[0].factor")


@pytest.mark.parametrize("value", [0, -2.0])
def test_nonpositive_per_variant_factor(value: float) -> None:
    doc = spec(edges=[{"from": "a", "to": "b", "factor": 2.0, "factors": {"a_large": value}}])
    fails(doc, "edges[0].factors.a_large")


@pytest.mark.parametrize("value", ["two", True, float("inf"), float("nan")])
def test_non_numeric_factor(value: Any) -> None:
    fails(spec(edges=[{"from": "a", "to": "b", "factor": value}]), "edges[0].factor", "number")


# ---------------------------------------------------------------- SLO errors

@pytest.mark.parametrize("value", [0, -1, -0.001])
def test_latency_slo_must_be_positive(value: float) -> None:
    fails(spec(latency_slo_ms=value), "latency_slo_ms")


def test_latency_slo_must_be_a_number() -> None:
    fails(spec(latency_slo_ms="fast"), "latency_slo_ms", "number")


@pytest.mark.parametrize("value", [0, 1.5, -1])
def test_accuracy_slo_out_of_range(value: float) -> None:
    fails(spec(accuracy_slo=value), "accuracy_slo")


def test_accuracy_slo_of_one_is_allowed() -> None:
    assert parse_app(spec(accuracy_slo=1)).accuracy_slo == 1.0


# ---------------------------------------------------------------- missing / unknown fields

@pytest.mark.parametrize("field", ["name", "tasks", "latency_slo_ms", "accuracy_slo"])
def test_missing_top_level_field(field: str) -> None:
    fails(spec(**{field: None}), field, "missing")


def test_missing_variants() -> None:
    doc = spec()
    del doc["tasks"]["b"]["variants"]
    fails(doc, "tasks.b.variants", "missing")


def test_missing_accuracy() -> None:
    doc = spec()
    doc["tasks"]["a"]["variants"]["a_small"] = {"profile": "resnet50"}
    fails(doc, "tasks.a.variants.a_small.accuracy", "missing")


def test_empty_tasks_and_empty_variants() -> None:
    fails(spec(tasks={}), "tasks")
    doc = spec()
    doc["tasks"]["a"]["variants"] = {}
    fails(doc, "tasks.a.variants")


def test_unknown_top_level_field() -> None:
    fails(spec(latency_slo=100), "latency_slo", "unknown")


def test_unknown_variant_field() -> None:
    doc = spec()
    doc["tasks"]["a"]["variants"]["a_small"]["acuracy"] = 71
    fails(doc, "tasks.a.variants.a_small", "acuracy", "unknown")


def test_unknown_edge_field() -> None:
    fails(spec(edges=[{"from": "a", "to": "b", "fanout": 2}]), "edges[0]", "fanout", "unknown")


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(InputError):
        parse_app([1, 2, 3])
    with pytest.raises(InputError):
        parse_app(None)


def test_bad_app_name() -> None:
    fails(spec(name="my app!"), "name")
    fails(spec(name=42), "name")


# ---------------------------------------------------------------- accuracies

def test_mixed_accuracy_scales_in_one_task() -> None:
    doc = spec()
    doc["tasks"]["a"]["variants"] = {"a_small": {"accuracy": 0.7}, "a_large": {"accuracy": 80.0}}
    fails(doc, "tasks.a.variants", "mixes")


@pytest.mark.parametrize("value", [0, -3, 1001, "high"])
def test_accuracy_out_of_range(value: Any) -> None:
    doc = spec()
    doc["tasks"]["a"]["variants"]["a_small"]["accuracy"] = value
    fails(doc, "tasks.a.variants.a_small.accuracy")


def test_accuracy_normalised_per_task_percent_and_fraction() -> None:
    app = parse_app(spec())
    a, b = app.task("a"), app.task("b")
    # percent scale: normalised to the best (80.0)
    assert a.variant("a_large").accuracy == pytest.approx(1.0)
    assert a.variant("a_small").accuracy == pytest.approx(70.0 / 80.0)
    assert a.variant("a_small").raw_accuracy == pytest.approx(70.0)
    # fraction scale: normalised to the best (0.75) of its own task, independent of task a
    assert b.variant("b_large").accuracy == pytest.approx(1.0)
    assert b.variant("b_small").accuracy == pytest.approx(0.6 / 0.75)
    assert b.variant("b_small").raw_accuracy == pytest.approx(0.6)
    assert a.best.name == "a_large" and b.best.name == "b_large"


def test_scalar_variant_shorthand_and_profile_default() -> None:
    doc = spec()
    doc["tasks"]["a"]["variants"] = {"a_small": 70, "a_large": {"accuracy": 80, "profile": "resnet152"}}
    a = parse_app(doc).task("a")
    assert a.variant("a_small").accuracy == pytest.approx(70 / 80)
    assert a.variant("a_small").profile == "a_small"
    assert a.variant("a_large").profile == "resnet152"


# ---------------------------------------------------------------- topology and paths

def test_tasks_are_in_topological_order() -> None:
    # declared in reverse order
    doc = spec(tasks=chain_tasks("d", "c", "b", "a"),
               edges=[{"from": "c", "to": "d"}, {"from": "b", "to": "c"}, {"from": "a", "to": "b"}])
    app = parse_app(doc)
    assert [t.name for t in app.tasks] == ["a", "b", "c", "d"]
    assert app.sources == ("a",)


def test_topological_order_respects_every_edge() -> None:
    edges = [("e", "b"), ("a", "b"), ("b", "d"), ("c", "d"), ("a", "c"), ("d", "f")]
    doc = spec(tasks=chain_tasks("f", "d", "c", "b", "a", "e"),
               edges=[{"from": s, "to": t} for s, t in edges])
    order = [t.name for t in parse_app(doc).tasks]
    assert sorted(order) == ["a", "b", "c", "d", "e", "f"]
    for s, t in edges:
        assert order.index(s) < order.index(t), (s, t, order)


def diamond(**extra: Any) -> dict[str, Any]:
    return spec(tasks=chain_tasks("a", "b", "c", "d"),
                edges=[{"from": "a", "to": "b"}, {"from": "a", "to": "c"},
                       {"from": "b", "to": "d"}, {"from": "c", "to": "d"}], **extra)


def test_diamond_has_two_paths_with_equal_default_weights() -> None:
    app = parse_app(diamond())
    assert sorted(p.tasks for p in app.paths) == [("a", "b", "d"), ("a", "c", "d")]
    assert [p.weight for p in app.paths] == pytest.approx([0.5, 0.5])
    assert app.sources == ("a",)
    assert {e.src for e in app.parents("d")} == {"b", "c"}


def test_independent_tasks_are_each_a_path() -> None:
    app = parse_app(spec(tasks=chain_tasks("p", "q", "r"), edges=None))
    assert sorted(p.tasks for p in app.paths) == [("p",), ("q",), ("r",)]
    assert sum(p.weight for p in app.paths) == pytest.approx(1.0)
    assert all(p.weight == pytest.approx(1 / 3) for p in app.paths)


def test_explicit_path_weights_are_normalised() -> None:
    app = parse_app(diamond(paths=[{"tasks": ["a", "b", "d"], "weight": 3},
                                   {"tasks": ["a", "c", "d"], "weight": 1}]))
    weights = {p.tasks: p.weight for p in app.paths}
    assert weights == pytest.approx({("a", "b", "d"): 0.75, ("a", "c", "d"): 0.25})


def test_unlisted_path_gets_zero_weight() -> None:
    app = parse_app(diamond(paths=[{"tasks": ["a", "c", "d"], "weight": 2}]))
    weights = {p.tasks: p.weight for p in app.paths}
    assert weights == pytest.approx({("a", "b", "d"): 0.0, ("a", "c", "d"): 1.0})


def test_weight_for_a_non_path() -> None:
    doc = diamond(paths=[{"tasks": ["a", "d"], "weight": 1}])
    fails(doc, "paths[0].tasks", "not a source-to-sink path")


def test_weight_for_a_partial_path() -> None:
    doc = diamond(paths=[{"tasks": ["a", "b", "d"], "weight": 1}, {"tasks": ["b", "d"], "weight": 1}])
    fails(doc, "paths[1].tasks")


def test_path_weights_summing_to_zero() -> None:
    fails(diamond(paths=[{"tasks": ["a", "b", "d"], "weight": 0}]), "paths", "zero")


def test_negative_path_weight() -> None:
    fails(diamond(paths=[{"tasks": ["a", "b", "d"], "weight": -1}]), "paths[0].weight")


# ---------------------------------------------------------------- edges

def test_edge_factor_for_per_variant_overrides() -> None:
    doc = spec(edges=[{"from": "a", "to": "b", "factor": 2.0, "factors": {"a_large": 3.5}}])
    (edge,) = parse_app(doc).edges
    assert edge.factor_for("a_large") == 3.5
    assert edge.factor_for("a_small") == 2.0
    assert edge.max_factor == 3.5


def test_edge_factor_defaults_to_one() -> None:
    (edge,) = parse_app(spec(edges=[{"from": "a", "to": "b"}])).edges
    assert edge.factor == 1.0 and edge.factor_for("a_small") == 1.0


def test_edge_dataclass_factor_for() -> None:
    e = Edge("x", "y", 1.5, {"big": 4.0})
    assert e.factor_for("big") == 4.0 and e.factor_for("small") == 1.5
    assert Edge("x", "y", 2.0).max_factor == 2.0


def test_parse_app_does_not_mutate_its_input() -> None:
    doc = diamond()
    before = copy.deepcopy(doc)
    parse_app(doc)
    assert doc == before


# ---------------------------------------------------------------- files

def test_load_app_reads_yaml(tmp_path) -> None:
    p = tmp_path / "app.yaml"
    p.write_text("name: filed\nlatency_slo_ms: 50\naccuracy_slo: 0.8\n"
                 "tasks:\n  only:\n    variants:\n      v1: {accuracy: 0.5}\n      v2: 0.25\n")
    app = load_app(p)
    assert app.name == "filed" and [t.name for t in app.tasks] == ["only"]
    assert app.task("only").variant("v2").accuracy == pytest.approx(0.5)


def test_load_app_errors_name_the_field(tmp_path) -> None:
    p = tmp_path / "app.yaml"
    p.write_text("name: filed\nlatency_slo_ms: -5\naccuracy_slo: 0.8\ntasks: {t: {variants: {v: 1}}}\n")
    with pytest.raises(InputError, match="latency_slo_ms"):
        load_app(p)


def test_invalid_yaml_reports_line_number(tmp_path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("name: broken\nlatency_slo_ms: 50\ntasks:\n  a:\n    variants: {v: [1, 2\n"
                 "accuracy_slo: 0.9\n")
    with pytest.raises(InputError) as info:
        load_app(p)
    msg = str(info.value)
    assert "invalid YAML" in msg
    assert str(p) in msg
    m = re.search(r"line (\d+)", msg)
    assert m, msg
    assert 5 <= int(m.group(1)) <= 7  # the unclosed flow sequence opened on line 5


def test_invalid_yaml_tab_indentation_line(tmp_path) -> None:
    p = tmp_path / "tabs.yaml"
    p.write_text("name: tabs\nlatency_slo_ms: 50\naccuracy_slo: 0.9\ntasks:\n\ta: 1\n")
    with pytest.raises(InputError, match=r"line 5"):
        load_app(p)


def test_nonexistent_file(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputError) as info:
        load_app(missing)
    assert str(missing) in str(info.value)
    assert "cannot read" in str(info.value)


def test_yaml_top_level_not_a_mapping(tmp_path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_app(p)


def test_shipped_tagging_example_loads() -> None:
    from pathlib import Path
    app = load_app(Path(__file__).resolve().parents[1] / "examples" / "tagging.yaml")
    assert [t.name for t in app.tasks][0] == "scene"
    assert {t.name for t in app.tasks} == {"scene", "objects", "attributes"}
    assert sorted(p.tasks for p in app.paths) == [("scene", "attributes"), ("scene", "objects")]
    objects_edge = next(e for e in app.edges if e.dst == "objects")
    assert objects_edge.factor_for("resnet152") == 3.4
    assert objects_edge.factor_for("resnet50") == 3.0
