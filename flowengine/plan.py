"""Which nodes of a flow run fused: pure, no I/O.

A *fused chain* is a run of consecutive nodes executed in one replica: the first node's
replica takes the chain's inputs from NATS (or, for a source, reads them) and passes what
it emits to the next node in memory, and so on; only the outputs that leave the chain are
published. Every node stays its own node in status, metrics, logs and dead letters.

Node ``b`` fuses after node ``a`` (a *link*) when ``b``'s only input is ``a`` and ``b`` is
``a``'s only consumer, both are in-process nodes of a type that takes part (``fusable``:
the stateless processors filter, transform, route and python; the sources generate and
file; the sinks file and stdout, whose flush is cheap: the chain's first replica flushes
them before it acks an input or stores a source position), neither is partitioned (no
``partition_by``), both have the same replicas and the same placement, neither says
``fuse: false``, ``b`` partitions nothing for a keyed node (see
:func:`flowengine.translate.producer_partitions`), and the flow is not exactly-once (a
chain would need one commit for the counters of all its nodes). :func:`fusion_plan`
returns the chains and, for every edge that does not fuse, why not (shown by
``flowctl describe``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowstore.models import FlowSpec, Node


@dataclass(frozen=True)
class FusionPlan:
    """``chains``: node ids of each fused chain, in order (two nodes or more), in flow
    order. ``apart``: (upstream, downstream, why) for each edge that stays a NATS
    hop. ``port``: per chain node but the last, its output port that
    feeds the next node in memory."""

    chains: list[list[str]] = field(default_factory=list)
    apart: list[tuple[str, str, str]] = field(default_factory=list)
    port: dict[str, str] = field(default_factory=dict)
    _chain_of: dict[str, list[str]] = field(default_factory=dict)

    def chain_of(self, node: str) -> list[str]:
        if self.chains and not self._chain_of:  # (built on first use: chains are final)
            self._chain_of.update((n, chain) for chain in self.chains for n in chain)
        return self._chain_of.get(node, [])


def _fusable(node: Node, spec: FlowSpec) -> str | None:
    """Why ``node`` cannot be part of a chain, or None when it can."""
    from flowengine.translate import partition_key, resolve_type

    if not node.fuse:
        return f"{node.id} says fuse: false"
    if node.kind != "inprocess":
        return f"{node.id} is a {node.kind}"
    ctype = resolve_type(node, spec)
    if ctype is None:
        return f"{node.id} ({node.type}) is not a known type"
    if not ctype.extra.get("fusable"):
        why = "stateful or buffering" if ctype.role == "processor" else "its own I/O"
        return f"{node.id} ({node.type}) keeps its own replica ({why})"
    if partition_key(node, ctype, node.config):
        return f"{node.id} is partitioned"
    return None


def _link_refusal(up: Node, down: Node, spec: FlowSpec, ins: int, outs: int,
                  partitioning: set[str]) -> str | None:
    """Why ``down`` does not fuse after ``up`` (the edge up -> down exists), or None."""
    if spec.delivery == "exactly-once":
        return "exactly-once flows run every node in a replica of its own"
    for node in (up, down):
        if (why := _fusable(node, spec)) is not None:
            return why
    if outs > 1:
        return f"{up.id} has other consumers"
    if ins > 1:
        return f"{down.id} has other inputs"
    if up.replicas != down.replicas:
        return f"replicas differ ({up.replicas} and {down.replicas})"
    if up.placement != down.placement:
        return "placements differ"
    if down.id in partitioning:  # (its outputs leave through its own outbox)
        return f"{down.id} partitions its events for a keyed node"
    return None


def fusion_plan(spec: FlowSpec) -> FusionPlan:
    """The fused chains of ``spec`` (see the module doc)."""
    from flowengine.translate import infer_role, keyed_at_producer, producer_partitions

    nodes = {n.id: n for n in spec.nodes}
    roles = {n.id: infer_role(n, spec) for n in spec.nodes}
    ins: dict[str, int] = {}
    outs: dict[str, int] = {}
    for conn in spec.connections:
        outs[conn.source[0]] = outs.get(conn.source[0], 0) + 1
        ins[conn.target[0]] = ins.get(conn.target[0], 0) + 1
    plan = FusionPlan()
    partitioning = {src for src, _, _ in producer_partitions(spec, keyed_at_producer(spec))}
    after: dict[str, str] = {}  # up -> the node fused after it
    for conn in spec.connections:
        up, down = nodes.get(conn.source[0]), nodes.get(conn.target[0])
        if up is None or down is None or up.id == down.id:
            continue
        if roles[up.id] == "sink" or roles[down.id] == "source":
            continue  # (refused by validation)
        why = _link_refusal(up, down, spec, ins.get(down.id, 0), outs.get(up.id, 0),
                            partitioning)
        if why is None:
            after[up.id] = down.id
            plan.port[up.id] = conn.source[1]
        else:
            plan.apart.append((up.id, down.id, why))
    fed = set(after.values())
    heads = [n.id for n in spec.nodes if n.id in after and n.id not in fed]
    for head in heads:
        chain = [head]
        while chain[-1] in after and after[chain[-1]] not in chain:
            chain.append(after[chain[-1]])
        plan.chains.append(chain)
    return plan


def describe_plan(plan: FusionPlan) -> dict[str, list[str]]:
    """The plan as `flowctl describe` shows it."""
    return {
        "fused": [" -> ".join(chain) for chain in plan.chains],
        "apart": [f"{up} -> {down}: {why}" for up, down, why in plan.apart],
    }
