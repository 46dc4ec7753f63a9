"""Standby plans: a likely next plan's runners loaded beside the live plan's, in no route, so that a
scale-up to it is a routing swap. Naming apart (pure), and against a real tritonserver on the CPU: the
standby runners load after the new routing, and taking the standby plan loads nothing, under load."""
from __future__ import annotations

import time

import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from test_apply import CPU, KEY, Load, _plan, server  # noqa: F401 (server: the fixture, a server of this module)

from jigsawserve.orchestrator.serving.control import Applier, apply, control_headers
from jigsawserve.orchestrator.serving.render import build_configs, name_apart, runner_name, with_standby


def _routed(rendered) -> set[str]:
    return {r["model"] for t in rendered.routing["tasks"].values() for r in t["routes"]}


def test_a_standby_plan_is_named_apart_from_loaded_models_of_other_configs() -> None:
    live = build_configs(_plan(40), CPU)
    bigger = _plan(200)
    plain = build_configs(bigger, CPU)
    clash = runner_name(bigger.app, bigger.entries[0])
    other = model_config_pb2.ModelConfig()
    other.CopyFrom(plain.configs[clash])
    other.max_batch_size += 1                          # loaded under its name with another config
    taken = {**live.configs, clash: other}
    named = name_apart(bigger, CPU, taken)
    assert runner_name(named.app, named.entries[0]) == f"{clash}__w1"
    for e, n in zip(bigger.entries[1:], named.entries[1:]):
        assert n.model == "" and (runner_name(bigger.app, e) not in taken or
                                  taken[runner_name(bigger.app, e)] == plain.configs[runner_name(bigger.app, e)])
    taken[f"{clash}__w1"] = other                      # that one taken too: the next free name
    assert runner_name(named.app, name_apart(bigger, CPU, taken).entries[0]) == f"{clash}__w2"
    standby = build_configs(named, CPU)
    for name, cfg in standby.configs.items():          # every shared name holds the same config: none changes
        if name in live.configs and name != standby.graph:
            assert live.configs[name] == cfg
    merged = with_standby(live, standby)
    assert merged.routing == live.routing and _routed(merged) == _routed(live)      # in no route
    assert set(merged.standby) == set(standby.configs) - set(live.configs)
    assert set(merged.configs) == set(live.configs) | set(standby.configs)
    # taking it later: named against what the server then holds, it keeps the names and configs it loaded with
    assert name_apart(bigger, CPU, {**taken, **merged.configs}).entries == named.entries


def test_taking_the_standby_plan_loads_nothing_and_fails_no_request(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    headers = control_headers(KEY, True)
    live_plan = _plan(40)
    live = build_configs(live_plan, CPU)
    standby_plan = name_apart(_plan(200), CPU, live.configs)
    standby = build_configs(standby_plan, CPU)
    applier = Applier(server.repo, client, headers)
    first = applier(with_standby(live, standby))
    assert first.warming is not None and set(first.loaded) >= set(with_standby(live, standby).standby)
    applier.wait()                                     # the standby runners load after the routing, in the background
    assert sorted(first.standby) == sorted(with_standby(live, standby).standby) and not first.standby_failed
    assert all(client.is_model_ready(n) for n in standby.configs)
    with Load(server.grpc_url) as load:
        time.sleep(1.0)
        began = time.monotonic()
        swap = applier(with_standby(standby, live))     # the standby plan live; the old live runners stand by
        took = time.monotonic() - began
        time.sleep(1.0)
    applier.wait()
    assert swap.loaded == [] and swap.rerouted == [standby.graph], swap   # a routing swap: nothing loaded
    assert swap.unloaded == [] and swap.serving_s <= took
    assert load.errors == [] and load.ok > 0
    routed = _routed(standby)
    stats = {n: client.get_inference_statistics(n, headers=headers).model_stats[0].inference_stats.success.count
             for n in routed}
    assert all(stats.values()), stats                   # the standby runners serve now
    # back to the live plan alone: the standby runners drain and unload
    back = apply(live, server.repo, client, headers, drain_s=0.2)
    assert set(back.unloaded) == set(standby.configs) - set(live.configs)


def test_an_apply_waits_for_standby_loads_only_where_its_live_plan_needs_them(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    headers = control_headers(KEY, True)
    live = build_configs(_plan(40), CPU)
    apply(live, server.repo, client, headers, drain_s=0.2)             # the live plan alone
    standby = build_configs(name_apart(_plan(120), CPU, live.configs), CPU)
    applier = Applier(server.repo, client, headers)
    first = applier(with_standby(live, standby))
    assert first.warming is not None and first.warming.is_alive()       # a runner's load takes over a second
    again = applier(with_standby(live, standby))                        # the same: its live plan is loaded
    assert again.waited_s < 0.5 and first.warming.is_alive(), again.waited_s
    assert again.loaded == [] and again.warming is None                 # what is still loading is not loaded twice
    swap = applier(with_standby(standby, live))                         # its live runners are still loading
    assert not first.warming.is_alive() and swap.loaded == []           # so it waited for them, and loads nothing
    applier.wait()
    assert all(client.is_model_ready(n) for n in standby.configs)
    apply(live, server.repo, client, headers, drain_s=0.2)
