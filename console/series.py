"""The last minutes of each flow's figures, for the console's charts and edge rates.

Every :data:`SAMPLE_S` seconds the change hub (:mod:`console.events`) takes a
:func:`sample` of every flow from the replica status records it already watches: per
node its figures (:func:`flowstore.figures.node_figures`: state, reason, rates, lag,
counters) and per output port the events per second over the last few samples, from
the growth of the port's counter (an edge's own rate: every edge from that port carries
them). :class:`Series` keeps :data:`KEEP_S` seconds of samples per flow, each node's
figures cut to what a chart draws (:data:`KEPT`); the new sample is sent whole. Pure:
records and the clock come in, JSON-ready data goes out.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from flowstore.figures import by_node, node_figures

#: Seconds between two samples (the charts' resolution).
SAMPLE_S = 1.0
#: Seconds of samples kept per flow (what a chart shows).
KEEP_S = 600.0
#: Samples back over which a port's rate is measured (smooths the status interval).
PORT_RATE_SAMPLES = 4
#: A node's figures kept in the series (the charts' and the port rates').
KEPT = ("rate_in", "rate_out", "lag", "out_ports")


def by_flow(statuses: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    flows: dict[str, list[dict[str, Any]]] = {}
    for status in statuses:
        flows.setdefault(status["flow"], []).append(status)
    return flows


def sample(t: float, statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """One flow's figures at ``t`` (epoch seconds): ``{t, nodes: {node: figures}}``
    (port rates are added by :meth:`Series.add`, which knows the samples before)."""
    ordered = sorted(statuses, key=lambda s: (s["node"], s.get("replica", 0)))
    return {"t": round(t, 3),
            "nodes": {node: node_figures(replicas) for node, replicas in by_node(ordered).items()}}


def port_rates(before: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, float]:
    """``{"node.port": events/s}`` between two samples from the out-port counters (a
    counter that went back, as after an undeploy, counts as no events)."""
    rates: dict[str, float] = {}
    elapsed = now["t"] - before["t"] if before else 0.0
    for node, figures in now["nodes"].items():
        for port, count in figures["out_ports"].items():
            earlier = before["nodes"].get(node, {}).get("out_ports", {}).get(port) \
                if before else None
            rates[f"{node}.{port}"] = round(max(0, count - earlier) / elapsed, 1) \
                if earlier is not None and elapsed > 0 else 0.0
    return rates


class Series:
    """The samples of every flow over the last :data:`KEEP_S` seconds."""

    def __init__(self, keep_s: float = KEEP_S) -> None:
        self.keep_s = keep_s
        self._flows: dict[str, deque[dict[str, Any]]] = {}

    def add(self, t: float, statuses: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Sample every flow that has status records; the new sample of each, by flow.
        A flow without records any more (undeployed, deleted) is forgotten."""
        flows = by_flow(statuses)
        for gone in set(self._flows) - set(flows):
            del self._flows[gone]
        added = {}
        for flow, records in flows.items():
            kept = self._flows.setdefault(flow, deque())
            new = sample(t, records)
            back = kept[-PORT_RATE_SAMPLES] if len(kept) >= PORT_RATE_SAMPLES else \
                (kept[0] if kept else None)
            new["ports"] = port_rates(back, new)
            kept.append({**new, "nodes": {node: {k: f[k] for k in KEPT}
                                          for node, f in new["nodes"].items()}})
            while kept and t - kept[0]["t"] > self.keep_s:
                kept.popleft()
            added[flow] = new
        return added

    def of(self, flow: str) -> list[dict[str, Any]]:
        """The flow's samples, oldest first, figures cut to :data:`KEPT` (none for a
        flow without status records)."""
        return list(self._flows.get(flow, ()))
