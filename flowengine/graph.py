"""The graph checks of validation: connections, ports, required inputs, cycles.

:class:`GraphChecks` checks every connection against the port shapes the node checks of
:mod:`flowengine.validate` found (:class:`Shape`), then the graph as a whole: disconnected
nodes, required inputs without upstream, unused outputs and cycles (:func:`find_cycles`).
Codes: unknown_node, unknown_port, wrong_port_direction, source_with_inputs,
sink_with_outputs, missing_required_input, cycle, reserved_name (the ``dlq`` port);
``depends_on`` naming no node (``unknown_node``) or going round (``cycle``);
warnings unused_output, disconnected_node, duplicate_connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flowengine.issues import IssueCollector, suggest
from flowstore.models import FlowSpec, Role

if TYPE_CHECKING:
    from flowstore.located import SourceMap

RESERVED_PORT = "dlq"


@dataclass
class Shape:
    """What validation knows about a node's ports. ``None`` sets mean "any name"."""

    role: Role | None
    inputs: set[str] | None
    outputs: set[str] | None
    input_names: set[str] = field(default_factory=set)
    output_names: set[str] = field(default_factory=set)
    counted_outputs: list[str] = field(default_factory=list)  # for unused_output
    required: list[str] = field(default_factory=list)


#: A checked connection: (source node, source port, target node, target port, index).
Edge = tuple[str, str, str, str, int]


class GraphChecks(IssueCollector):
    """The connection and graph checks; the node checks subclass it (one pass, one list)."""

    def __init__(self, spec: FlowSpec, source: SourceMap | None) -> None:
        super().__init__(spec, source)
        self.touched: set[str] = set()  # nodes named by any connection
        self.bad_inputs: set[str] = set()  # nodes with an invalid incoming connection

    def _connections(self, shapes: dict[str, Shape | None]) -> list[Edge]:
        """Check every connection; return the valid ones."""
        valid: list[Edge] = []
        seen: set[tuple[str, str]] = set()
        for j, conn in enumerate(self.spec.connections):
            (src, sport), (dst, dport) = conn.source, conn.target
            path, label = self.conn_path(j), f"connection '{conn.from_} -> {conn.to}'"
            self.touched.update(n for n in (src, dst) if n in shapes)
            if (conn.from_, conn.to) in seen:
                self.add("duplicate_connection", f"{label} is listed more than once",
                         severity="warning", node=dst, path=path,
                         suggestion="remove the repeated input")
                continue
            seen.add((conn.from_, conn.to))
            if RESERVED_PORT in (sport, dport):
                self.add("reserved_name", f"{label}: port '{RESERVED_PORT}' is reserved for dead "
                         "letters", node=dst, port=RESERVED_PORT, path=path,
                         suggestion="dead letters are published on flowctl.<flow>.<node>.dlq; "
                         "use another port name")
                self.bad_inputs.add(dst)
                continue
            ok = True
            left_out = self.source.left_out if self.source is not None else set()
            for end, other in ((src, dst), (dst, src)):
                if end not in shapes:
                    ok = False
                    if end in left_out:  # its own schema problem is reported
                        continue
                    self.add("unknown_node", f"{label}: there is no node '{end}'",
                             node=other if other in shapes else None, path=path,
                             suggestion=suggest(end, self.ids))
            if not ok:
                self.bad_inputs.add(dst)
                continue
            if self._check_ends(label, path, src, sport, dst, dport, shapes):
                valid.append((src, sport, dst, dport, j))
            else:
                self.bad_inputs.add(dst)
        return valid

    def _check_ends(self, label: str, path: str, src: str, sport: str, dst: str, dport: str,
                    shapes: dict[str, Shape | None]) -> bool:
        s, d = shapes[src], shapes[dst]
        ok = True
        if s is not None:
            if s.role == "sink":
                ok = False
                self.add("sink_with_outputs", f"{label}: '{src}' is a sink, it has no outputs "
                         "to read from", node=src, port=sport, path=path,
                         suggestion=f"remove '{src}' from the inputs")
            elif not self._port_ok(label, path, src, sport, s.outputs, s.output_names,
                                   s.input_names, "output"):
                ok = False
        if d is not None:
            if d.role == "source":
                ok = False
                self.add("source_with_inputs", f"{label}: '{dst}' is a source, it takes no "
                         "inputs", node=dst, port=dport, path=path,
                         suggestion="move the node to processors or remove its inputs")
            elif not self._port_ok(label, path, dst, dport, d.inputs, d.input_names,
                                   d.output_names, "input"):
                ok = False
        return ok

    def _port_ok(self, label: str, path: str, node: str, port: str, allowed: set[str] | None,
                 own: set[str], opposite: set[str], direction: str) -> bool:
        if allowed is None and port and not (port in opposite and port not in own):
            return True
        if allowed is not None and port in allowed:
            return True
        if port and port in opposite:
            other = "input" if direction == "output" else "output"
            self.add("wrong_port_direction", f"{label}: '{node}.{port}' is an {other} port, "
                     f"used here as an {direction}", node=node, port=port, path=path,
                     suggestion=f"{direction} ports of '{node}': "
                     + (", ".join(sorted(own)) or "none"))
            return False
        choices = sorted(allowed if allowed is not None else own)
        listed = f"{direction} ports of '{node}': " + (", ".join(choices) or "none")
        self.add("unknown_port", f"{label}: '{node}' has no {direction} port '{port}'",
                 node=node, port=port, path=path, suggestion=suggest(port, choices, listed))
        return False

    def _graph(self, shapes: dict[str, Shape | None], edges: list[Edge]) -> None:
        depended = self._dependencies()
        fed = {(dst, dport) for _, _, dst, dport, _ in edges}
        read = {(src, sport) for src, sport, _, _, _ in edges}
        connected = self.touched | depended
        first: dict[str, int] = {}  # each id's first place (a repeated id is reported once)
        for i, node_id in enumerate(self.ids):
            first.setdefault(node_id, i)
        for i, node in enumerate(self.spec.nodes):
            shape = shapes.get(node.id)
            if node.id not in shapes or first[node.id] != i:
                continue
            path = self.node_path[i]
            if node.id not in connected and node.kind == "inprocess":
                self.add("disconnected_node", f"node '{node.id}' is not connected to anything",
                         severity="warning", node=node.id, path=path,
                         suggestion="connect it with `inputs`, or remove it")
            if shape is None:
                continue
            if node.id not in self.bad_inputs:
                for port in shape.required:
                    if (node.id, port) not in fed:
                        self.add("missing_required_input", f"node '{node.id}': required input "
                                 f"port '{port}' has no upstream", node=node.id, port=port,
                                 path=path, suggestion="add an upstream node to its inputs")
            if node.id in self.touched:
                for port in shape.counted_outputs:
                    if (node.id, port) not in read and port != RESERVED_PORT:
                        self.add("unused_output", f"node '{node.id}': nothing reads output port "
                                 f"'{port}'", severity="warning", node=node.id, port=port,
                                 path=path, suggestion=f"add '{node.id}.{port}' to some node's "
                                 "inputs, or ignore if dropping these events is intended")
        self._cycles(edges)

    def _dependencies(self) -> set[str]:
        """``depends_on``: every name a node of the flow (not itself), no cycle. Returns
        the nodes a dependency names or links (connected, though not by data)."""
        succ: dict[str, list[str]] = {}
        where: dict[tuple[str, str], str] = {}
        linked: set[str] = set()
        for i, node in enumerate(self.spec.nodes):
            for k, dep in enumerate(node.depends_on):
                path = f"{self.node_path[i]}.depends_on[{k}]"
                if dep not in self.ids or dep == node.id:
                    what = "itself" if dep == node.id else f"'{dep}', which is not a node"
                    self.add("unknown_node", f"node '{node.id}' depends on {what}",
                             node=node.id, path=path, suggestion=suggest(
                                 dep, set(self.ids) - {node.id},
                                 "depends_on lists ids of other nodes of this flow"))
                    continue
                linked.update((node.id, dep))
                succ.setdefault(node.id, []).append(dep)
                where.setdefault((node.id, dep), path)
        for cycle in find_cycles(self.ids, succ):
            loop = " -> ".join([*cycle, cycle[0]])
            self.add("cycle", f"depends_on has a cycle: {loop}", node=cycle[0],
                     path=where[(cycle[-1], cycle[0])], suggestion="remove one of these "
                     "dependencies: each node must be able to start after the ones it "
                     "depends on")
        return linked

    def _cycles(self, edges: list[Edge]) -> None:
        succ: dict[str, list[str]] = {}
        closing: dict[tuple[str, str], int] = {}
        for src, _, dst, _, j in edges:
            succ.setdefault(src, []).append(dst)
            closing.setdefault((src, dst), j)
        for cycle in find_cycles(self.ids, succ):
            loop = " -> ".join([*cycle, cycle[0]])
            j = closing[(cycle[-1], cycle[0])]
            self.add("cycle", f"the flow has a cycle: {loop}", node=cycle[0],
                     path=self.conn_path(j), suggestion="flows must be acyclic: remove one of "
                     "these connections")


def dependency_depths(spec: FlowSpec) -> dict[str, int]:
    """Per node, the longest chain of ``depends_on`` below it (0: depends on nothing).
    Unknown names and cycles (refused by validation) count as nothing below."""
    deps = {n.id: [d for d in n.depends_on if d != n.id] for n in spec.nodes}
    depth: dict[str, int] = {}

    def of(node: str, path: frozenset[str]) -> int:
        if node not in depth:
            below = [of(d, path | {node}) + 1 for d in deps.get(node, [])
                     if d in deps and d not in path]
            depth[node] = max(below, default=0)
        return depth[node]

    for node in deps:
        of(node, frozenset())
    return depth


def find_cycles(order: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """The shortest cycle through each node not already on a reported cycle."""
    cycles: list[list[str]] = []
    covered: set[str] = set()
    for start in dict.fromkeys(order):
        if start in covered:
            continue
        prev: dict[str, str] = {}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in succ.get(v, []):
                    if w == start:
                        found = found or [v]
                    elif w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        if found is not None:
            while found[-1] != start:
                found.append(prev[found[-1]])
            cycles.append(found[::-1])
            covered.update(found)
    return cycles
