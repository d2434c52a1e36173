"""Validation of a normalized flow: graph and config checks -> :class:`ValidationResult`.

Pure: reads only registry metadata (ports, roles, config models) and never constructs a
component or touches NATS. Every problem is found in one pass and returned as a
:class:`ValidationIssue` with a stable ``code``; errors block apply/deploy, warnings do
not. With a :class:`~flowstore.loader.SourceMap` each issue points at the file
(``spec.processors[1].inputs[0]``, line 14); without one the path is in the FlowSpec
(``nodes[2]``, ``connections[0]``).

Errors: unknown_type, ambiguous_type, role_mismatch, invalid_config, duplicate_id,
reserved_name, unknown_node, unknown_port, wrong_port_direction, source_with_inputs,
sink_with_outputs, missing_required_input, cycle, command_with_arguments,
not_exactly_once. Warnings: unused_output, disconnected_node, duplicate_connection,
unsatisfiable_placement (only when ``agents`` is given), exactly_once_receiver.

``delivery: exactly-once`` refuses the nodes that cannot take part (``not_exactly_once``):
a ``stdout`` sink (it cannot undo what it printed), a ``nats`` sink unless its
``config.stream`` names the stream that stores its subject (the server's streams are not
seen offline), and programs and containers (the SDK is at-least-once). An ``http`` sink
is a warning (``exactly_once_receiver``): the receiver must de-duplicate.

A node run as a program or container (``binary`` / ``command`` / ``image``) whose type
is not registered is accepted: its role comes from the file section and its ports default
to ``in`` / ``out``; it needs no ``inputs`` (it may be wired by its own environment, with
``depends_on`` alone or nothing) and is never ``disconnected_node``.

This module holds the node checks (types, roles, configs, ids, placement) and runs the
pass; the connection and graph checks (ports, required inputs, cycles) are
:mod:`flowengine.graph`, the issue types and their collector :mod:`flowengine.issues`
(:class:`ValidationIssue` and :class:`ValidationResult` are re-exported here).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from componentmanager.components.expressions import ExpressionError, compile_expression
from componentmanager.registry import ComponentType, all_types, types_named
from flowengine.graph import RESERVED_PORT, GraphChecks, Shape
from flowengine.issues import SECTION, Severity, ValidationIssue, ValidationResult, suggest
from flowengine.translate import resolve_type
from flowstore.loader import LoadedFlow, Problem, SourceMap, path_str, plain
from flowstore.models import (
    DEFAULT_INPUT_PORT,
    DEFAULT_OUTPUT_PORT,
    AgentRecord,
    FlowSpec,
    Node,
    Role,
)
from flowstore.placement import unplaceable_reason

__all__ = ["RESERVED_FLOW_NAMES", "Severity", "ValidationIssue", "ValidationResult",
           "validate", "validate_loaded"]

RESERVED_FLOW_NAMES = frozenset({"logs"})


def _config_message(err: dict[str, Any]) -> str:
    kind = err.get("type")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    return plain(str(err.get("msg", "invalid value")))


class _Checker(GraphChecks):
    """The node checks (types, roles, configs, ids, placement) and the whole pass."""

    def shape(self, i: int, node: Node) -> Shape | None:
        path = self.node_path[i]
        ctype = resolve_type(node, self.spec)
        candidates = types_named(node.type)
        if ctype is None and node.kind != "inprocess":  # a program: its type is its own
            return self._external_shape(node.role)
        if ctype is None and not candidates:
            names = {t.name for t in all_types()}
            self.add("unknown_type", f"node '{node.id}': unknown component type '{node.type}'",
                     node=node.id, path=f"{path}.type", suggestion=suggest(
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
                     f"under {SECTION[node.role]}", node=node.id, path=path,
                     suggestion=" or ".join(f"move it to spec.{SECTION[t.role]}"
                                            for t in candidates))
            if len(candidates) > 1:
                return None
            ctype = candidates[0]
        configured = self._check_config(path, node, ctype)
        static_out = {p.name for p in ctype.outputs}
        shape = Shape(
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
        silent = ctype.extra.get("silent_outputs")
        if silent is not None and isinstance(node.config, dict):
            quiet = set(silent(node.config))
            shape.counted_outputs = [p for p in shape.counted_outputs if p not in quiet]
        for port in shape.counted_outputs:
            if port == RESERVED_PORT:
                self.add("reserved_name", f"node '{node.id}': output port '{port}' is reserved "
                         "for dead letters", node=node.id, port=port, path=f"{path}.config",
                         suggestion="name the port differently")
        return shape

    @staticmethod
    def _external_shape(role: Role | None) -> Shape:
        if role is None:
            return Shape(role=None, inputs=None, outputs=None)
        ins = set() if role == "source" else {DEFAULT_INPUT_PORT}
        counted = [] if role == "sink" else [DEFAULT_OUTPUT_PORT]
        # no required input: a program may be wired by its own environment (it reads
        # what its env names), with depends_on alone or nothing
        return Shape(role=role, inputs=ins, outputs=set() if role == "sink" else None,
                     input_names=ins, output_names=set(counted), counted_outputs=counted)

    def _check_config(self, path: str, node: Node, ctype: ComponentType) -> list[str] | None:
        """Validate the config; return the configured output names of a dynamic type."""
        try:
            model = ctype.config_model.model_validate(node.config)
        except ValidationError as exc:
            fields = {f.alias or name for name, f in ctype.config_model.model_fields.items()
                      if not (isinstance(f.json_schema_extra, dict)
                              and f.json_schema_extra.get("internal"))}
            for err in exc.errors():
                where = path_str(("config", *err["loc"]))
                hint = f"`flowctl components {ctype.name}` shows its config"
                if err.get("type") == "extra_forbidden" and len(err["loc"]) == 1:
                    hint = suggest(str(err["loc"][0]), fields, hint) or hint
                self.add("invalid_config", f"node '{node.id}': {where}: {_config_message(err)}",
                         node=node.id, path=f"{path}.{where}", suggestion=hint)
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

    def _check_command(self, i: int, node: Node) -> None:
        """``command: "python3 worker.py"`` runs a program named "python3 worker.py"."""
        field = "binary" if node.binary else "command"
        program = node.binary or node.command or ""
        words = program.split()
        if (node.image and field == "command") or node.args or len(words) < 2:
            return
        listed = ", ".join(words)
        self.add("command_with_arguments", f"node '{node.id}': {field} '{program}' "
                 "holds arguments; it would run a program of that whole name",
                 node=node.id, path=f"{self.node_path[i]}.{field}",
                 suggestion=f"write {field}: {words[0]} and args: [{', '.join(words[1:])}]"
                 + (f", or command: [{listed}]" if field == "command" else ""))

    def _check_keyed(self, i: int, node: Node) -> None:
        """``partition_by`` and the stateful types (window, join): what partitions them."""
        path, ctype = self.node_path[i], resolve_type(node, self.spec)
        if node.partition_by:
            try:
                compile_expression(node.partition_by)
            except ExpressionError as exc:
                self.add("invalid_config", f"node '{node.id}': partition_by: {exc}",
                         node=node.id, path=f"{path}.partition_by",
                         suggestion="an expression over event fields, e.g. user_id")
            if node.replicas == 1:
                self.add("invalid_config", f"node '{node.id}': partition_by has no effect "
                         "with one replica", severity="warning", node=node.id,
                         path=f"{path}.partition_by", suggestion="set replicas, or remove "
                         "partition_by (one replica takes every event in order)")
            if node.kind != "inprocess":
                self.add("invalid_config", f"node '{node.id}': partition_by works for "
                         "built-in and python types, not for programs or containers",
                         node=node.id, path=f"{path}.partition_by", suggestion="remove "
                         "it, or partition inside your program")
        if ctype is None or not ctype.extra.get("stateful"):
            return
        key = node.config.get("key")
        if node.replicas > 1 and not key:
            self.add("invalid_config", f"node '{node.id}': a {ctype.name} without key cannot "
                     f"have {node.replicas} replicas (every event must meet in one)",
                     node=node.id, path=f"{path}.replicas",
                     suggestion="set config.key to partition it, or use replicas: 1")
        if node.partition_by and key and node.partition_by != key:
            self.add("invalid_config", f"node '{node.id}': partition_by '{node.partition_by}'"
                     f" differs from its key '{key}'", node=node.id,
                     path=f"{path}.partition_by", suggestion=f"remove partition_by: a "
                     f"{ctype.name} is partitioned by its key")
        upstream = {c.source for c in self.spec.connections if c.target[0] == node.id}
        if ctype.extra.get("inputs_by_upstream") and 0 < len(upstream) < 2:
            self.add("invalid_config", f"node '{node.id}': a {ctype.name} needs two or more "
                     f"inputs, it has {len(upstream)}", node=node.id, path=f"{path}.inputs",
                     suggestion="inputs: [orders, payments]")

    def _check_exactly_once(self, i: int, node: Node) -> None:
        """``delivery: exactly-once``: refuse what would repeat an effect (see the module
        docstring); warn for an http sink, whose receiver must de-duplicate."""
        if self.spec.delivery != "exactly-once":
            return
        path, kind = self.node_path[i], node.kind
        instead = "or use delivery: at-least-once for this flow"
        if kind != "inprocess":
            what = "container" if kind == "container" else "program"
            self.add("not_exactly_once", f"node '{node.id}': a {what} cannot take part in an "
                     "exactly-once flow (the SDK is at-least-once: it may repeat outputs "
                     "after a crash)", node=node.id,
                     path=f"{path}.{'image' if kind == 'container' else 'command'}",
                     suggestion=f"make it a built-in or python node, {instead}")
            return
        ctype = resolve_type(node, self.spec)
        if ctype is None or ctype.role != "sink":
            return
        if ctype.name == "stdout":
            self.add("not_exactly_once", f"node '{node.id}': a stdout sink cannot take part "
                     "in an exactly-once flow: it cannot undo what it printed",
                     node=node.id, path=f"{path}.type",
                     suggestion=f"write to a file sink instead, {instead}")
        elif ctype.name == "nats" and not node.config.get("stream"):
            subject = node.config.get("subject")
            self.add("not_exactly_once", f"node '{node.id}': a nats sink takes part in an "
                     "exactly-once flow only if a stream stores its subject"
                     f"{f' {subject!r}' if subject else ''}, and validation cannot see the "
                     "server's streams", node=node.id, path=f"{path}.config",
                     suggestion=f"name that stream in config.stream, {instead}")
        elif ctype.exactly_once is None:
            self.add("not_exactly_once", f"node '{node.id}': a sink of type '{ctype.name}' "
                     "cannot take part in an exactly-once flow: it cannot keep a replay from "
                     "repeating its writes", node=node.id, path=f"{path}.type",
                     suggestion="use delivery: at-least-once for this flow (a third-party "
                     "sink type takes part by registering with exactly_once='transactional' "
                     "or 'idempotent', see componentmanager.component)")
        elif ctype.name == "http":
            self.add("exactly_once_receiver", f"node '{node.id}': an http sink may POST an "
                     "event again (after a crash or a timeout): the receiver must "
                     "de-duplicate by the Idempotency-Key header", severity="warning",
                     node=node.id, path=path, suggestion="make the receiver ignore a key it "
                     "has already seen")

    def run(self, name: str | None, agents: list[AgentRecord] | None) -> None:
        if name in RESERVED_FLOW_NAMES:
            path = None
            if self.source is not None:
                path = "metadata.name" if "metadata.name" in self.source.lines else "name"
            self.add("reserved_name", f"flow name '{name}' is reserved (it names the log "
                     "subjects)", path=path, suggestion="choose another flow name")
        shapes: dict[str, Shape | None] = {}
        first: dict[str, int] = {}
        for i, node in enumerate(self.spec.nodes):
            if node.id in first:
                self.add("duplicate_id", f"node id '{node.id}' is used more than once (first at "
                         f"{self.node_path[first[node.id]]})", node=node.id,
                         path=self.node_path[i], suggestion="give every node a unique id")
                continue
            first[node.id] = i
            shapes[node.id] = self.shape(i, node)
            self._check_command(i, node)
            self._check_keyed(i, node)
            self._check_exactly_once(i, node)
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


def validate_loaded(loaded: LoadedFlow | None, problems: list[Problem], *,
                    agents: list[AgentRecord] | None = None,
                    extra: list[ValidationIssue] | None = None) -> ValidationResult:
    """The problems of a leniently loaded file (:func:`flowstore.loader.parse_flow_lenient`)
    and the checks of what could be loaded of it, in one result: schema, config and graph
    problems are reported in one pass, in file order. ``extra``: more issues (the
    caller's checks of the file system)."""
    issues = [ValidationIssue(code=p.code, severity="warning" if p.severity == "warning"
                              else "error", message=p.message, suggestion=p.suggestion,
                              path=p.path or None, line=p.line)
              for p in problems]
    if loaded is not None:
        issues += validate(loaded.spec, source=loaded.source, agents=agents,
                           name=loaded.name).issues
    issues += extra or []
    issues.sort(key=lambda i: i.line or 0)
    return ValidationResult.from_issues(issues)


def rescale_issues(deployed: FlowSpec, new: FlowSpec) -> list[ValidationIssue]:
    """Changes a deployed flow cannot take: the replica count of a stateful node (its
    state is split by replica: windows and joins would lose or double-count keys)."""
    issues = []
    for i, node in enumerate(new.nodes):
        old = deployed.node(node.id)
        ctype = resolve_type(node, new)
        if (old is None or old.replicas == node.replicas or ctype is None
                or not ctype.extra.get("stateful")):
            continue
        issues.append(ValidationIssue(
            code="stateful_rescale", severity="error", node=node.id,
            path=f"spec.nodes[{i}].replicas",
            message=f"node '{node.id}': the replicas of a {ctype.name} cannot change while "
                    f"the flow is deployed ({old.replicas} -> {node.replicas}): its state "
                    "is split by replica",
            suggestion="keep replicas as deployed, or undeploy (its open state is "
                       "dropped), apply and deploy again"))
    return issues
