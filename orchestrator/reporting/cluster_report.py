"""The per-node report of a cluster run (``jigsaw demo --nodes N``, ``bench/node_loss.py``): what every node
served and held over the run, from RUN/cluster-events.jsonl (the cluster controller's log) and RUN/requests.csv.

- ``nodes.png``: per node its requests per second through the front door (with the demand measured there and the
  demand planned for), its slices over the run, and the requests' SLO violations; nodes lost and added marked;
- ``placement-nodes.png``: every node's GPUs (or CPU slices) and the segments on them, one row per node, for
  the first plan, the plans made after nodes were lost or added, and the last (at most ``MAX_COLUMNS``).

``orchestrator/reporting/report.py`` draws the same for one server; this reuses its placement drawing per node.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jigsawserve.orchestrator.errors import InputError
from jigsawserve.orchestrator.planning.plan import Plan
from jigsawserve.orchestrator.reporting.report import PlanEvent, _clip, _plot_placement, load_requests

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_COLUMNS = 4
NODE_EVENTS = {"node_lost": ("red", "lost"), "node_added": ("green", "joined")}
VIOLATIONS = (("late", "C1"), ("dropped", "C4"), ("error", "C3"))


def load_events(path: Path) -> list[dict[str, Any]]:
    """The cluster controller's events (``cluster_control``), in order; none when the file is missing."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _counts(events: list[dict[str, Any]], node: str, key: str) -> tuple[list[float], list[float]]:
    """(times, running total) of the front door's ``key`` count for ``node`` at each interval (and at its loss, and
    the final look); a count that restarted (the node dropped and added back) carries on from the total before."""
    ts, totals, base, last = [], [], 0.0, 0.0
    for e in events:
        if e["kind"] not in ("interval", "final", "node_lost") or node not in e.get("nodes", {}):
            continue
        n = float(e["nodes"][node][key])
        if n < last:
            base += last
        last = n
        ts.append(e["t"])
        totals.append(base + n)
    return ts, totals


def node_count(events: list[dict[str, Any]], node: str, key: str) -> int:
    """The front door's ``key`` count ("requests" or "failed") for ``node`` over the whole run."""
    return int(max(_counts(events, node, key)[1], default=0))


def _nodes(events: list[dict[str, Any]]) -> list[str]:
    names = {n for e in events for n in e.get("nodes", {})} | {e["node"] for e in events if "node" in e}
    return sorted(names)


def _slice_word(events: list[dict[str, Any]]) -> str:
    plans = [p for e in events if e["kind"] == "plan" for p in e["plan"]["nodes"].values()]
    return "CPU slices" if plans and plans[0]["gpu_type"] == "cpu" else "GPU slices"


def _figure(title: str, width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    return fig


def _mark_nodes(ax: Axes, events: list[dict[str, Any]], label: bool) -> None:
    """A vertical line per node lost or added as the controller saw it (dashed), and per action taken on the
    cluster (a node removed or added by the run itself: dotted, grey), named at the bottom of the axes."""
    for e in events:
        if e["kind"] in NODE_EVENTS:
            (colour, what), style, text = NODE_EVENTS[e["kind"]], "--", ""
            text = f"{e['node']} {what}"
        elif e["kind"] == "action":
            colour, style, text = "grey", ":", e["what"]
        else:
            continue
        ax.axvline(e["t"], color=colour, linestyle=style, linewidth=1)
        if label:
            ax.annotate(text, (e["t"], 0.0), xycoords=("data", "axes fraction"), xytext=(3, 3 + 9 * (style == ":")),
                        textcoords="offset points", ha="left", va="bottom", fontsize=7, color=colour,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})


def _plot_requests(ax: Axes, events: list[dict[str, Any]], nodes: list[str]) -> None:
    looks = sorted({e["t"] for e in events if e["kind"] in ("interval", "final")})
    if len(looks) > 1:
        stacks = []
        for node in nodes:
            ts, totals = _counts(events, node, "requests")
            if len(ts) < 2:
                stacks.append(np.zeros(len(looks) - 1))
                continue
            rates = np.diff(totals) / np.diff(ts)  # over (ts[i], ts[i + 1]]
            stacks.append(np.array([rates[np.searchsorted(ts, t, side="left") - 1]
                                    if ts[0] < t <= ts[-1] else 0.0 for t in looks[1:]]))
        ax.stackplot(looks, *[np.insert(s, 0, s[0]) for s in stacks], step="pre", alpha=0.6,
                     colors=[f"C{i}" for i in range(len(nodes))],
                     labels=[f"{n}: requests/s sent to it" for n in nodes])
    intervals = [e for e in events if e["kind"] == "interval"]
    if intervals:
        ax.step([0.0] + [e["t"] for e in intervals], [intervals[0]["demand_rps"]] + [e["demand_rps"] for e in intervals],
                where="pre", color="black", linewidth=1, label="demand measured at the front door")
    plans = [e for e in events if e["kind"] == "plan"]
    end = max([e["t"] for e in events], default=0.0)
    if plans:
        ax.step([p["t"] for p in plans] + [end], [p["demand_rps"] for p in plans] + [plans[-1]["demand_rps"]],
                where="post", color="grey", linestyle="--", label="demand planned for (whole cluster)")
    _mark_nodes(ax, events, label=True)
    ax.set(ylabel="requests/s", ylim=(0, None), title="requests per node through the front door (stacked)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _plot_slices(ax: Axes, events: list[dict[str, Any]], nodes: list[str]) -> None:
    plans = [e for e in events if e["kind"] == "plan"]
    end = max([e["t"] for e in events], default=0.0)
    if not plans:
        ax.text(0.5, 0.5, "no plan events", ha="center", va="center", transform=ax.transAxes)
        return
    xs = [p["t"] for p in plans] + [max(end, plans[-1]["t"])]
    stacks = [[p["nodes"].get(n, {}).get("slices", 0) for p in plans] for n in nodes]
    ax.stackplot(xs, *[s + s[-1:] for s in stacks], step="post", colors=[f"C{i}" for i in range(len(nodes))],
                 alpha=0.6, labels=[f"{n}: its plan's slices" for n in nodes])
    _mark_nodes(ax, events, label=False)
    ax.set(ylabel=f"{_slice_word(events)} in use", ylim=(0, None), title="slices per node (stacked)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _plot_violations(ax: Axes, run_dir: Path, events: list[dict[str, Any]]) -> None:
    try:
        req = load_requests(run_dir / "requests.csv", [])
    except InputError:  # a run whose clients logged elsewhere (serve-cluster under the user's own load)
        ax.text(0.5, 0.5, "no request log in this run directory", ha="center", va="center", transform=ax.transAxes)
        return
    if not req.outcome.size:
        ax.text(0.5, 0.5, "no requests", ha="center", va="center", transform=ax.transAxes)
        return
    intervals = [e["t"] for e in events if e["kind"] == "interval"]
    width = float(np.median(np.diff(intervals))) if len(intervals) > 2 else 1.0
    edges = np.arange(0.0, req.scheduled_s.max() + width, width)
    total, _ = np.histogram(req.scheduled_s, edges)
    bottom = np.zeros(total.size)
    if all(np.count_nonzero(req.outcome == o) == 0 for o, _ in VIOLATIONS):
        ax.text(0.5, 0.5, f"no SLO violation: all {req.outcome.size} requests answered in time", ha="center",
                va="center", transform=ax.transAxes)
    for outcome, colour in VIOLATIONS:
        counts, _ = np.histogram(req.scheduled_s[req.outcome == outcome], edges)
        rate = np.divide(counts, total, out=np.zeros(total.size), where=total > 0)
        ax.bar(edges[:-1], rate, width=width, bottom=bottom, align="edge", color=colour,
               label=f"{outcome} ({int(counts.sum())} in all)")
        bottom += rate
    _mark_nodes(ax, events, label=False)
    ax.set(xlabel="time (s)", ylabel="share of the requests", ylim=(0, 1),
           title=f"SLO violations per {width:.1f} s, by the time requests were sent ({req.outcome.size} requests)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _columns(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plans to draw: the first, the first after each node lost or added, and the last."""
    plans = [e for e in events if e["kind"] == "plan"]
    if not plans:
        return []
    picked = [plans[0]]
    for e in events:
        if e["kind"] in NODE_EVENTS:
            after = next((p for p in plans if p["t"] >= e["t"]), None)
            if after is not None and after not in picked:
                picked.append(after)
    if plans[-1] not in picked:
        picked.append(plans[-1])
    return picked[:MAX_COLUMNS - 1] + picked[-1:] if len(picked) > MAX_COLUMNS else picked


def _title(node: str, plan_event: dict[str, Any], first_row: bool) -> str:
    """A placement panel's title: the plan's time and, over the first row, why it was made."""
    head = f"plan at {max(plan_event['t'], 0.0):.0f} s ({_clip(plan_event['reason'], 48)})\n" if first_row else ""
    return f"{head}{node}"


def _plot_placements(fig: Figure, events: list[dict[str, Any]], nodes: list[str]) -> None:
    columns = _columns(events)
    axes = fig.subplots(len(nodes), max(len(columns), 1), squeeze=False)
    for c, e in enumerate(columns):
        for r, node in enumerate(nodes):
            ax = axes[r][c]
            doc = e["plan"]["nodes"].get(node)
            if doc is None:
                gone = any(x["kind"] == "node_lost" and x["node"] == node and x["t"] <= e["t"] for x in events)
                ax.text(0.5, 0.5, f"{node}: {'lost' if gone else 'no plan (idle or not yet joined)'}",
                        ha="center", va="center", transform=ax.transAxes)
                ax.set_title(_title(node, e, r == 0), fontsize="small")
                ax.set_axis_off()
                continue
            plan = Plan.from_json(doc)
            _plot_placement(PlanEvent(0, e["t"], plan, plan.demand_rps, None, e["reason"]), ax)
            ax.set_title(_title(node, e, r == 0) + f": {plan.slices} slices for {plan.demand_rps:.1f} req/s",
                         fontsize="small")
    if not columns:
        axes[0][0].text(0.5, 0.5, "no plan events", ha="center", va="center", transform=axes[0][0].transAxes)


def figures(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, Figure]:
    """The per-node figures by file name (module docstring)."""
    run_dir = Path(run_dir)
    events = load_events(run_dir / "cluster-events.jsonl")
    nodes = _nodes(events)
    end = max([e["t"] for e in events], default=1.0)
    where = f"{summary.get('app', run_dir.name)} on {summary.get('nodes', len(nodes))} node(s)"
    if _slice_word(events) == "CPU slices":
        where += " (CPU slices, no GPU)"
    out = {"nodes.png": _figure(f"per node over the run: {where}", 10.0, 9.0)}
    axes = out["nodes.png"].subplots(3, 1, sharex=True)
    _plot_requests(axes[0], events, nodes)
    _plot_slices(axes[1], events, nodes)
    _plot_violations(axes[2], run_dir, events)
    axes[0].set_xlim(0, math.ceil(end))
    columns = len(_columns(events)) or 1
    rows = max([len(p.get("placement", {}).get("gpus", [])) for e in events if e["kind"] == "plan"
                for p in e["plan"]["nodes"].values()] or [1])
    out["placement-nodes.png"] = fig = _figure(f"placement per node: {where}", 6.5 * columns,
                                               1.2 + len(nodes) * (0.9 + 0.45 * rows))
    _plot_placements(fig, events, nodes)
    return out


def plot(run_dir: str | Path, summary: dict[str, Any]) -> list[Path]:
    """Write the per-node figures into ``run_dir``; none where matplotlib is not installed."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        return []
    paths = []
    for name, fig in figures(run_dir, summary).items():
        paths.append(Path(run_dir) / name)
        fig.savefig(paths[-1], dpi=100)
    return paths
