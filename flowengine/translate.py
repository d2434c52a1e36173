"""Translation of a flow into one self-contained ComponentConfig per node. Pure, no I/O.

:func:`translate` returns ``{"<flow>.<node>": ComponentConfig}``: the subjects a node
reads and writes (``flowctl.<flow>.<node>.<port>``), its queue group, its config with
every default made explicit, its placement and delivery, and the replicas of every node
downstream of it. ``assignments`` stay empty: placement fills them. Call it on a flow that
passed :func:`flowengine.validate.validate`; it does not check anything itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from componentmanager.registry import get_type
from flowstore.models import (
    DEFAULT_OUTPUT_PORT,
    ComponentConfig,
    ExternalFields,
    FlowSpec,
    Node,
    config_key,
    data_subject,
    queue_group,
)


def explicit_config(node: Node) -> dict[str, Any]:
    """The node's config validated by its type's model and dumped with every default.

    Unknown types (external programs) and configs that do not validate pass unchanged.
    """
    ctype = get_type(node.type)
    if ctype is None:
        return dict(node.config)
    try:
        model = ctype.config_model.model_validate(node.config)
    except (ValidationError, ValueError, TypeError):
        return dict(node.config)
    return model.model_dump(mode="json", by_alias=True)


def _output_ports(node: Node, config: dict[str, Any], used: list[str]) -> list[str]:
    """Declared output ports (route: from its config) plus any port a connection reads."""
    ctype = get_type(node.type)
    if ctype is not None:
        try:
            declared = ctype.output_names(config)
        except Exception:  # a broken route config: fall back to the static ports
            declared = [p.name for p in ctype.outputs]
        role = ctype.role
    else:
        role = node.role
        declared = [] if role in ("sink", None) else [DEFAULT_OUTPUT_PORT]
    if role == "sink":
        return []
    return list(dict.fromkeys([*declared, *used]))


def _downstream(spec: FlowSpec, start: str) -> dict[str, int]:
    """Every node reachable from ``start`` (not itself) -> its replicas, in flow order."""
    succ: dict[str, list[str]] = {}
    for conn in spec.connections:
        succ.setdefault(conn.source[0], []).append(conn.target[0])
    seen: set[str] = set()
    stack = list(succ.get(start, []))
    while stack:
        node = stack.pop()
        if node in seen or node == start:
            continue
        seen.add(node)
        stack.extend(succ.get(node, []))
    return {n.id: n.replicas for n in spec.nodes if n.id in seen}


def translate(
    name: str, spec: FlowSpec, *, flow_revision: int, enabled: bool
) -> dict[str, ComponentConfig]:
    """One ComponentConfig per node of flow ``name``, keyed ``<flow>.<node>``, in node order."""
    inputs: dict[str, dict[str, list[str]]] = {}
    reads: dict[str, list[str]] = {}
    for conn in spec.connections:
        (src, sport), (dst, dport) = conn.source, conn.target
        subjects = inputs.setdefault(dst, {}).setdefault(dport, [])
        subject = data_subject(name, src, sport)
        if subject not in subjects:
            subjects.append(subject)
        reads.setdefault(src, []).append(sport)

    out: dict[str, ComponentConfig] = {}
    for node in spec.nodes:
        config = explicit_config(node)
        ports = _output_ports(node, config, reads.get(node.id, []))
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
            kind=kind,
            config=config,
            inputs=inputs.get(node.id, {}),
            outputs={port: data_subject(name, node.id, port) for port in ports},
            queue=queue_group(name, node.id),
            replicas=node.replicas,
            placement=node.placement,
            assignments=[],
            enabled=enabled,
            delivery=spec.delivery,
            flow_revision=flow_revision,
            downstream=_downstream(spec, node.id),
            external=external,
        )
    return out
