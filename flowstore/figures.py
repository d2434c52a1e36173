"""A node's figures from its replicas' status records, as readers show them: pure.

``flowctl top``, the console's cards and charts and its API sum a node's replicas the
same way, here: rates and counters summed, lag per input port the largest any replica
reports (the replicas of an at-least-once node share one consumer and report the same
figure) summed over ports, the state the replicas' when they agree (else e.g.
``running 2/3``), and the reason of the first replica that gives one. The records are
dumped :class:`~flowstore.models.ReplicaStatus` dicts, already passed through
:func:`flowstore.liveness.as_seen`. No I/O.
"""

from __future__ import annotations

from typing import Any

#: The counters a node's figures sum (``filtered``: events a filter let go, not lost).
SUMMED = ("in", "out", "filtered", "errors", "dropped", "replayed")


def node_state(states: list[str]) -> str:
    """The replicas' state when they agree, else the most common one with its share."""
    if not states:
        return "no status"
    top = max(sorted(set(states)), key=states.count)  # a tie: the first by name
    return top if states.count(top) == len(states) else \
        f"{top} {states.count(top)}/{len(states)}"


def node_lag(replicas: list[dict[str, Any]]) -> int:
    """Per input port the largest lag any replica reports, summed over ports."""
    per_port: dict[str, list[int]] = {}
    for replica in replicas:
        for port, n in (replica.get("lag") or {}).items():
            per_port.setdefault(port, []).append(n)
    return sum(max(v) for v in per_port.values())


def node_figures(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """``{state, reason, replicas, rate_in, rate_out, lag, in, out, filtered, errors,
    dropped, replayed, out_ports}`` of one node's replicas."""
    counters = [r.get("counters") or {} for r in replicas]
    reasons = [r.get("reason") or r.get("last_error") for r in replicas
               if r.get("state") in ("failed", "degraded", "unknown", "pending")]
    out_ports: dict[str, int] = {}
    for c in counters:
        for port, n in (c.get("out_ports") or {}).items():
            out_ports[port] = out_ports.get(port, 0) + n
    return {
        "state": node_state([r.get("state", "") for r in replicas]),
        "reason": next((r for r in reasons if r), None),
        "replicas": len(replicas),
        "rate_in": round(sum((r.get("rate") or {}).get("in", 0.0) for r in replicas), 1),
        "rate_out": round(sum((r.get("rate") or {}).get("out", 0.0) for r in replicas), 1),
        "lag": node_lag(replicas),
        **{k: sum(c.get(k, 0) for c in counters) for k in SUMMED},
        "out_ports": out_ports,
    }


def by_node(statuses: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Status records grouped by node, in the order given."""
    nodes: dict[str, list[dict[str, Any]]] = {}
    for status in statuses:
        nodes.setdefault(status["node"], []).append(status)
    return nodes


__all__ = ["SUMMED", "by_node", "node_figures", "node_lag", "node_state"]
