"""A flow's graph laid out for drawing: nodes in columns by depth (sources at 0, each
node one column right of its deepest input), rows in flow order within a column, edges
labelled by their ports. Pure: a :class:`~flowstore.models.FlowSpec` in, JSON-ready
data out."""

from __future__ import annotations

from typing import Any

from flowstore.models import FlowSpec


def depths(spec: FlowSpec) -> dict[str, int]:
    """Column of each node: the longest path from a source (a cycle, which validation
    refuses, is cut where it closes)."""
    upstream: dict[str, list[str]] = {n.id: [] for n in spec.nodes}
    for edge in spec.connections:
        (src, _), (dst, _) = edge.source, edge.target
        if dst in upstream and src in upstream:
            upstream[dst].append(src)
    found: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str]) -> int:
        if node in found:
            return found[node]
        ups = [u for u in upstream[node] if u not in seen]
        found[node] = 1 + max((depth(u, seen | {node}) for u in ups), default=-1)
        return found[node]

    for node in upstream:
        depth(node, frozenset())
    return found


def layout(spec: FlowSpec) -> dict[str, Any]:
    """``{"nodes": [{id, type, role, replicas, column, row}], "edges": [{from, from_port,
    to, to_port}], "columns": n}``."""
    column_of = depths(spec)
    rows: dict[int, int] = {}
    nodes = []
    for node in spec.nodes:
        column = column_of[node.id]
        rows[column] = rows.get(column, -1) + 1
        nodes.append({"id": node.id, "type": node.type, "role": node.role,
                      "replicas": node.replicas, "column": column, "row": rows[column]})
    edges = [{"from": e.source[0], "from_port": e.source[1], "to": e.target[0],
              "to_port": e.target[1]} for e in spec.connections]
    return {"nodes": nodes, "edges": edges, "columns": 1 + max(column_of.values(), default=-1)}
