"""Validation of a normalized flow: graph and config checks -> :class:`ValidationResult`.

Pure: reads only registry metadata (ports, roles, config models) and never constructs a
component or touches NATS. Every problem is found in one pass and returned as a
:class:`ValidationIssue` with a stable ``code``; errors block apply/deploy, warnings do
not. With a :class:`~flowstore.loader.SourceMap` each issue points at the file
(``spec.processors[1].inputs[0]``, line 14); without one the path is in the FlowSpec
(``nodes[2]``, ``connections[0]``).

Errors: unknown_type, ambiguous_type, role_mismatch, invalid_config, duplicate_id,
reserved_name, unknown_node, unknown_port, wrong_port_direction, source_with_inputs,
sink_with_outputs, missing_required_input, cycle. Warnings: unused_output, disconnected_node,
duplicate_connection, unsatisfiable_placement (only when ``agents`` is given).

A node run as a program or container (``command`` / ``image``) whose type is not
registered is accepted: its role comes from the file section and its ports default to
``in`` / ``out``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from componentmanager.registry import ComponentType, all_types, types_named
from flowengine.translate import resolve_type
from flowstore.loader import SourceMap, path_str
from flowstore.models import (
    DEFAULT_INPUT_PORT,
    DEFAULT_OUTPUT_PORT,
    AgentRecord,
    FlowSpec,
    Node,
    Role,
)
from flowstore.placement import unplaceable_reason

Severity = Literal["error", "warning"]
RESERVED_PORT = "dlq"
RESERVED_FLOW_NAMES = frozenset({"logs"})


class ValidationIssue(BaseModel):
    """One problem: ``code`` is stable (scripts match on it), ``message`` is for people."""

    code: str
    severity: Severity
    node: str | None = None
    port: str | None = None
    message: str
    suggestion: str | None = None
    path: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        where += f"{self.path}: " if self.path else ""
        hint = f" ({self.suggestion})" if self.suggestion else ""
        return f"{where}{self.message}{hint} [{self.code}]"


class ValidationResult(BaseModel):
    """``status`` is ``errors`` if any error, else ``warnings`` if any warning, else ``valid``."""

    status: Literal["valid", "warnings", "errors"] = "valid"
    errors: list[ValidationIssue] = Field(default_factory=list)
    warnings: list[ValidationIssue] = Field(default_factory=list)

    @classmethod
    def from_issues(cls, issues: list[ValidationIssue]) -> ValidationResult:
        errors = [i for i in issues if i.severity == "error"]
        warnings = [i for i in issues if i.severity == "warning"]
        status = "errors" if errors else "warnings" if warnings else "valid"
        return cls(status=status, errors=errors, warnings=warnings)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def issues(self) -> list[ValidationIssue]:
        return [*self.errors, *self.warnings]

    def codes(self) -> list[str]:
        return [i.code for i in self.issues]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


@dataclass
class _Shape:
    """What validation knows about a node's ports. ``None`` sets mean "any name"."""

    role: Role | None
    inputs: set[str] | None
    outputs: set[str] | None
    input_names: set[str] = field(default_factory=set)
    output_names: set[str] = field(default_factory=set)
    counted_outputs: list[str] = field(default_factory=list)  # for unused_output
    required: list[str] = field(default_factory=list)


#: A checked connection: (source node, source port, target node, target port, index).
_Edge = tuple[str, str, str, str, int]

_SECTION = {"source": "sources", "processor": "processors", "sink": "sinks"}


def _suggest(word: str, choices: list[str] | set[str], otherwise: str | None = None) -> str | None:
    """'did you mean ...?' with the closest names (difflib), else ``otherwise``."""
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.5)
    if not close:
        return otherwise
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def _config_message(err: dict[str, Any]) -> str:
    kind = err.get("type")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (`flowctl components` shows the type's config)"
    return str(err.get("msg", "invalid value"))


class _Checker:
    def __init__(self, spec: FlowSpec, source: SourceMap | None) -> None:
        self.spec = spec
        self.source = source
        self.issues: list[ValidationIssue] = []
        self.node_path = self._node_paths()
        self.ids = [n.id for n in spec.nodes]
        self.touched: set[str] = set()  # nodes named by any connection
        self.bad_inputs: set[str] = set()  # nodes with an invalid incoming connection

    def _node_paths(self) -> list[str]:
        seen: dict[str, int] = {}
        out = []
        for i, node in enumerate(self.spec.nodes):
            path = f"nodes[{i}]"
            if self.source is not None:
                derived = None
                if node.role:
                    k = seen[node.role] = seen.get(node.role, -1) + 1
                    derived = f"spec.{_SECTION[node.role]}[{k}]"
                if derived and derived in self.source.lines:
                    path = derived
                else:
                    path = self.source.node_paths.get(node.id, path)
            out.append(path)
        return out

    def conn_path(self, j: int) -> str:
        if self.source is not None and j < len(self.source.connection_paths):
            return self.source.connection_paths[j]
        return f"connections[{j}]"

    def _line(self, path: str | None) -> int | None:
        if self.source is None or not path:
            return None
        probe = path
        while probe:
            line = self.source.line(probe)
            if line is not None:
                return line
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return None

    def add(self, code: str, message: str, *, severity: Severity = "error",
            node: str | None = None, port: str | None = None,
            suggestion: str | None = None, path: str | None = None) -> None:
        self.issues.append(ValidationIssue(
            code=code, severity=severity, node=node, port=port, message=message,
            suggestion=suggestion, path=path, line=self._line(path),
        ))

    # -- nodes -----------------------------------------------------------------------------

    def shape(self, i: int, node: Node) -> _Shape | None:
        path = self.node_path[i]
        ctype = resolve_type(node, self.spec)
        candidates = types_named(node.type)
        if ctype is None and node.kind != "inprocess":  # a program: its type is its own
            return self._external_shape(node.role)
        if ctype is None and not candidates:
            names = {t.name for t in all_types()}
            self.add("unknown_type", f"node '{node.id}': unknown component type '{node.type}'",
                     node=node.id, path=f"{path}.type", suggestion=_suggest(
                         node.type, names, "`flowctl components` lists every type"))
            return None
        if ctype is None and node.role is None:  # a canvas node, not connected enough
            roles = " and ".join(t.role for t in candidates)
            self.add("ambiguous_type", f"node '{node.id}': type '{node.type}' exists as "
                     f"{roles}; its connections do not tell which", node=node.id,
                     path=f"{path}.type", suggestion="connect it, or use a flowctl file "
                     "where sources, processors and sinks are separate sections")
            return None
        if ctype is None:
            assert node.role is not None
            roles = " or ".join(t.role for t in candidates)
            self.add("role_mismatch",
                     f"node '{node.id}': type '{node.type}' is a {roles}, but it is listed "
                     f"under {_SECTION[node.role]}", node=node.id, path=path,
                     suggestion=" or ".join(f"move it to spec.{_SECTION[t.role]}"
                                            for t in candidates))
            if len(candidates) > 1:
                return None
            ctype = candidates[0]
        configured = self._check_config(path, node, ctype)
        static_out = {p.name for p in ctype.outputs}
        shape = _Shape(
            role=ctype.role,
            inputs={p.name for p in ctype.inputs},
            outputs=None if ctype.dynamic_outputs else static_out,
            input_names={p.name for p in ctype.inputs},
            output_names=static_out | set(configured or []),
            counted_outputs=list(configured or []) if ctype.dynamic_outputs
            else sorted(static_out, key=[p.name for p in ctype.outputs].index),
            required=[p.name for p in ctype.inputs if p.required],
        )
        if ctype.role == "sink":
            shape.outputs, shape.counted_outputs = set(), []
        for port in shape.counted_outputs:
            if port == RESERVED_PORT:
                self.add("reserved_name", f"node '{node.id}': output port '{port}' is reserved "
                         "for dead letters", node=node.id, port=port, path=f"{path}.config",
                         suggestion="name the port differently")
        return shape

    @staticmethod
    def _external_shape(role: Role | None) -> _Shape:
        if role is None:
            return _Shape(role=None, inputs=None, outputs=None)
        ins = set() if role == "source" else {DEFAULT_INPUT_PORT}
        counted = [] if role == "sink" else [DEFAULT_OUTPUT_PORT]
        return _Shape(role=role, inputs=ins, outputs=set() if role == "sink" else None,
                      input_names=ins, output_names=set(counted), counted_outputs=counted,
                      required=sorted(ins))

    def _check_config(self, path: str, node: Node, ctype: ComponentType) -> list[str] | None:
        """Validate the config; return the configured output names of a dynamic type."""
        try:
            model = ctype.config_model.model_validate(node.config)
        except ValidationError as exc:
            for err in exc.errors():
                where = path_str(("config", *err["loc"]))
                self.add("invalid_config", f"node '{node.id}': {where}: {_config_message(err)}",
                         node=node.id, path=f"{path}.{where}",
                         suggestion="`flowctl components` shows the config of every type")
            return None
        except Exception as exc:  # a custom validator raising something else
            self.add("invalid_config", f"node '{node.id}': config: {exc}", node=node.id,
                     path=f"{path}.config")
            return None
        if not ctype.dynamic_outputs:
            return None
        hook = ctype.extra.get("outputs_from_config")
        if hook is None:
            return []
        try:
            return list(hook(model.model_dump(mode="json", by_alias=True)))
        except Exception:
            return []

    # -- the whole flow --------------------------------------------------------------------

    def run(self, name: str | None, agents: list[AgentRecord] | None) -> None:
        if name in RESERVED_FLOW_NAMES:
            path = None
            if self.source is not None:
                path = "metadata.name" if "metadata.name" in self.source.lines else "name"
            self.add("reserved_name", f"flow name '{name}' is reserved (it names the log "
                     "subjects)", path=path, suggestion="choose another flow name")
        shapes: dict[str, _Shape | None] = {}
        first: dict[str, int] = {}
        for i, node in enumerate(self.spec.nodes):
            if node.id in first:
                self.add("duplicate_id", f"node id '{node.id}' is used more than once (first at "
                         f"{self.node_path[first[node.id]]})", node=node.id,
                         path=self.node_path[i], suggestion="give every node a unique id")
                continue
            first[node.id] = i
            shapes[node.id] = self.shape(i, node)
        edges = self._connections(shapes)
        self._graph(shapes, edges)
        if agents is not None:
            for i, node in enumerate(self.spec.nodes):
                reason = unplaceable_reason(node.placement, agents)
                if reason and first.get(node.id) == i:
                    path = self.node_path[i] + (".placement" if node.placement else "")
                    self.add("unsatisfiable_placement", f"node '{node.id}': {reason}",
                             severity="warning", node=node.id, path=path,
                             suggestion="its replicas stay pending until such an agent runs")

    def _connections(self, shapes: dict[str, _Shape | None]) -> list[_Edge]:
        """Check every connection; return the valid ones."""
        valid: list[_Edge] = []
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
            for end, other in ((src, dst), (dst, src)):
                if end not in shapes:
                    ok = False
                    self.add("unknown_node", f"{label}: there is no node '{end}'",
                             node=other if other in shapes else None, path=path,
                             suggestion=_suggest(end, self.ids))
            if not ok:
                self.bad_inputs.add(dst)
                continue
            if self._check_ends(label, path, src, sport, dst, dport, shapes):
                valid.append((src, sport, dst, dport, j))
            else:
                self.bad_inputs.add(dst)
        return valid

    def _check_ends(self, label: str, path: str, src: str, sport: str, dst: str, dport: str,
                    shapes: dict[str, _Shape | None]) -> bool:
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
                 node=node, port=port, path=path, suggestion=_suggest(port, choices, listed))
        return False

    def _graph(self, shapes: dict[str, _Shape | None], edges: list[_Edge]) -> None:
        fed = {(dst, dport) for _, _, dst, dport, _ in edges}
        read = {(src, sport) for src, sport, _, _, _ in edges}
        for i, node in enumerate(self.spec.nodes):
            shape = shapes.get(node.id)
            if node.id not in shapes or self.ids.index(node.id) != i:
                continue
            path = self.node_path[i]
            if node.id not in self.touched:
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

    def _cycles(self, edges: list[_Edge]) -> None:
        succ: dict[str, list[str]] = {}
        closing: dict[tuple[str, str], int] = {}
        for src, _, dst, _, j in edges:
            succ.setdefault(src, []).append(dst)
            closing.setdefault((src, dst), j)
        for cycle in _find_cycles(self.ids, succ):
            loop = " -> ".join([*cycle, cycle[0]])
            j = closing[(cycle[-1], cycle[0])]
            self.add("cycle", f"the flow has a cycle: {loop}", node=cycle[0],
                     path=self.conn_path(j), suggestion="flows must be acyclic: remove one of "
                     "these connections")


def _find_cycles(order: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
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


def validate(
    spec: FlowSpec,
    *,
    source: SourceMap | None = None,
    agents: list[AgentRecord] | None = None,
    name: str | None = None,
) -> ValidationResult:
    """Check ``spec`` (named ``name``, if given) and return every issue found.

    ``agents`` (the live agents) enables the ``unsatisfiable_placement`` warnings.
    """
    checker = _Checker(spec, source)
    checker.run(name, agents)
    return ValidationResult.from_issues(checker.issues)
