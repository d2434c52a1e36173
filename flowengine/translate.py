"""Translation of a flow into one self-contained ComponentConfig per node. Pure, no I/O.

:func:`translate` returns ``{"<flow>.<node>": ComponentConfig}``: the subjects a node
reads and writes (``flowctl.<flow>.<node>.<port>``), its queue group, its config with
every default made explicit, its role (which picks the type when a source and a sink
share a name), its placement and delivery, the replicas of every node downstream and of
every node it ``depends_on`` (with how deep its chain of dependencies goes), and the
fused chain it runs in (:mod:`flowengine.plan`).
``assignments`` stay empty: placement fills them. Call it on a flow that passed
:func:`flowengine.validate.validate`; it does not check anything itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from flowengine.graph import dependency_depths
from flowengine.plan import fusion_plan
from flowstore.models import (
    DEFAULT_OUTPUT_PORT,
    ComponentConfig,
    ExternalFields,
    FlowSpec,
    KeyedReader,
    Node,
    Role,
    config_key,
    data_subject,
    partition_subjects,
    queue_group,
)

if TYPE_CHECKING:
    from componentmanager.registry import ComponentType


def infer_role(node: Node, spec: FlowSpec) -> Role | None:
    """The node's file section, else what its connections make it (canvas exports)."""
    if node.role is not None:
        return node.role
    has_in = any(c.target[0] == node.id for c in spec.connections)
    has_out = any(c.source[0] == node.id for c in spec.connections)
    if has_in and has_out:
        return "processor"
    return "sink" if has_in else "source" if has_out else None


def resolve_type(node: Node, spec: FlowSpec) -> ComponentType | None:
    """The registered type of a node. Types are keyed by (role, name): a source and a
    sink may share a name (``file``), so the node's role picks one; a name only one role
    uses resolves without a role. None: unknown, in the wrong section, or ambiguous."""
    from componentmanager.registry import types_named  # on first use: readers skip it

    candidates = types_named(node.type)
    if node.role is None and len(candidates) == 1:
        return candidates[0]
    role = infer_role(node, spec)
    return next((t for t in candidates if t.role == role), None)


def explicit_config(node: Node, ctype: ComponentType | None) -> dict[str, Any]:
    """The node's config validated by its type's model and dumped with every default.

    Unknown types (external programs) and configs that do not validate pass unchanged.
    """
    if ctype is None:
        return dict(node.config)
    try:
        model = ctype.config_model.model_validate(node.config)
    except (ValidationError, ValueError, TypeError):
        return dict(node.config)
    return model.model_dump(mode="json", by_alias=True)


def _output_ports(ctype: ComponentType | None, role: Role | None, config: dict[str, Any],
                  used: list[str]) -> list[str]:
    """Declared output ports (route: from its config) plus any port a connection reads."""
    if ctype is not None:
        try:
            declared = ctype.output_names(config)
        except Exception:  # a broken route config: fall back to the static ports
            declared = [p.name for p in ctype.outputs]
    else:
        declared = [] if role in ("sink", None) else [DEFAULT_OUTPUT_PORT]
    if role == "sink":
        return []
    return list(dict.fromkeys([*declared, *used]))


def _reachable(succ: dict[str, list[str]], start: str) -> set[str]:
    """Every node reachable from ``start`` (not itself)."""
    seen: set[str] = set()
    stack = list(succ.get(start, []))
    while stack:
        node = stack.pop()
        if node in seen or node == start:
            continue
        seen.add(node)
        stack.extend(succ.get(node, []))
    return seen


def _downstream(replicas: dict[str, int], succ: dict[str, list[str]], start: str,
                order: dict[str, int]) -> dict[str, int]:
    """Every node reachable from ``start`` -> its replicas, in flow order. Only sources
    wait for their downstream, so other nodes get {} (keeps translate linear)."""
    return {n: replicas[n] for n in sorted(_reachable(succ, start), key=order.__getitem__)}


def upstream_input_name(conn_source: tuple[str, str], sources: list[tuple[str, str]]) -> str:
    """The input port of a node whose inputs are named after its upstream nodes (``join``):
    the upstream node's id, or ``<node>_<port>`` when it feeds the node from several ports."""
    node, port = conn_source
    if sum(1 for other, _ in sources if other == node) > 1:
        return f"{node}_{port}"
    return node


def partition_key(node: Node, ctype: ComponentType | None, config: dict[str, Any]) -> str | None:
    """What a node is partitioned by: its ``partition_by``; a stateful type with replicas
    partitions by its ``key`` by default (one key's events must meet in one replica)."""
    if node.partition_by:
        return node.partition_by
    if ctype is not None and ctype.extra.get("stateful") and node.replicas > 1:
        key = config.get("key")
        return key if isinstance(key, str) and key else None
    return None


def keyed_at_producer(spec: FlowSpec) -> dict[str, str]:
    """The nodes whose producers partition their events for them: node -> its key. A
    keyed (``partition_by``) in-process node; its in-process producers then send each
    of its replicas only its partition (a program or container publishes on its own:
    its keyed readers read it whole and keep their share, see :func:`producer_partitions`)."""
    keyed: dict[str, str] = {}
    for node in spec.nodes:
        if node.kind != "inprocess":
            continue
        ctype = resolve_type(node, spec)
        # the config only matters for a stateful type's default key (see partition_key)
        by_config = not node.partition_by and ctype is not None and ctype.extra.get("stateful")
        key = partition_key(node, ctype, explicit_config(node, ctype) if by_config else {})
        if key:
            keyed[node.id] = key
    return keyed


def producer_partitions(spec: FlowSpec, keyed: dict[str, str]) -> set[tuple[str, str, str]]:
    """The connections partitioned at the producer: (producer, port, keyed reader), for
    an in-process producer feeding a node of ``keyed``."""
    kinds = {n.id: n.kind for n in spec.nodes}
    return {(src, sport, dst) for conn in spec.connections
            for (src, sport), (dst, _) in [(conn.source, conn.target)]
            if dst in keyed and kinds.get(src) == "inprocess"}


def translate(
    name: str, spec: FlowSpec, *, flow_revision: int, enabled: bool
) -> dict[str, ComponentConfig]:
    """One ComponentConfig per node of flow ``name``, keyed ``<flow>.<node>``, in node order."""
    by_upstream = {n.id for n in spec.nodes
                   if (t := resolve_type(n, spec)) and t.extra.get("inputs_by_upstream")}
    feeds: dict[str, list[tuple[str, str]]] = {}
    for conn in spec.connections:
        if conn.target[0] in by_upstream:
            feeds.setdefault(conn.target[0], []).append(conn.source)
    inputs: dict[str, dict[str, list[str]]] = {}
    reads: dict[str, list[str]] = {}
    succ: dict[str, list[str]] = {}
    readers: dict[tuple[str, str], list[str]] = {}
    keyed = keyed_at_producer(spec)
    split = producer_partitions(spec, keyed)
    replicas = {n.id: n.replicas for n in spec.nodes}
    keyed_outputs: dict[str, dict[str, list[KeyedReader]]] = {}
    plain: set[tuple[str, str]] = set()  # outputs some reader reads whole
    for conn in spec.connections:
        succ.setdefault(conn.source[0], []).append(conn.target[0])
        readers.setdefault(conn.source, []).append(conn.target[0])
        (src, sport), (dst, dport) = conn.source, conn.target
        if dst in by_upstream:
            dport = upstream_input_name(conn.source, feeds[dst])
        subjects = inputs.setdefault(dst, {}).setdefault(dport, [])
        subject = data_subject(name, src, sport)
        if (src, sport, dst) in split:
            subject = partition_subjects(subject, dst, replicas[dst])
            port_readers = keyed_outputs.setdefault(src, {}).setdefault(sport, [])
            if all(r.node != dst for r in port_readers):
                port_readers.append(KeyedReader(node=dst, key=keyed[dst],
                                                partitions=replicas[dst], subjects=subject))
        else:
            plain.add((src, sport))
        if subject not in subjects:
            subjects.append(subject)
        reads.setdefault(src, []).append(sport)

    order = {n.id: i for i, n in enumerate(spec.nodes)}
    depths = dependency_depths(spec)
    replicas = {n.id: n.replicas for n in spec.nodes}
    takes_frames = {n.id: n.kind == "inprocess" or n.frames for n in spec.nodes}
    plan = fusion_plan(spec)
    out: dict[str, ComponentConfig] = {}
    for node in spec.nodes:
        ctype = resolve_type(node, spec)
        role = ctype.role if ctype is not None else infer_role(node, spec)
        config = explicit_config(node, ctype)
        ports = _output_ports(ctype, role, config, reads.get(node.id, []))
        kind = node.kind
        external = None
        if kind != "inprocess":
            external = ExternalFields.model_validate(
                node.model_dump(include=set(ExternalFields.model_fields))
            )
        out[config_key(name, node.id)] = ComponentConfig(
            flow=name,
            node=node.id,
            type=node.type,
            role=role,
            kind=kind,
            config=config,
            inputs=inputs.get(node.id, {}),
            outputs={port: data_subject(name, node.id, port) for port in ports},
            frame_ports=[p for p in ports
                         if all(takes_frames.get(r, False) for r in readers.get((node.id, p), []))],
            keyed_outputs=keyed_outputs.get(node.id, {}),
            partitioned_only=[p for p in keyed_outputs.get(node.id, {})
                              if (node.id, p) not in plain],
            queue=queue_group(name, node.id),
            replicas=node.replicas,
            partition_by=partition_key(node, ctype, config),
            stateful=bool(ctype is not None and ctype.extra.get("stateful")),
            placement=node.placement,
            assignments=[],
            enabled=enabled,
            delivery=spec.delivery,
            flow_revision=flow_revision,
            # only at-most-once sources wait for their downstream (at-least-once: the
            # stream keeps events); leaving it out spares them a restart on a rescale.
            # Not for the nodes of its own fused chain: it hands them events in memory
            # and waits for each on its agent (runners.fusion), not for status records.
            downstream=({n: c for n, c in _downstream(replicas, succ, node.id, order).items()
                         if n not in plan.chain_of(node.id)}
                        if role == "source" and spec.delivery == "at-most-once" else {}),
            depends_on={d: replicas[d] for d in node.depends_on if d in replicas} or None,
            dependency_depth=depths.get(node.id) or None,
            external=external,
            fused=plan.chain_of(node.id) or None,
            fused_port=plan.port.get(node.id),
        )
    return out
