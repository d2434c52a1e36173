"""The order in which ``stop`` disables a flow's nodes, and when a wave has stopped. Pure.

Stopping disables the nodes in waves that follow the flow's connections: the sources
first, then every node all of whose upstream nodes are already disabled, and so on, sinks
last. A node that emits on stop (``batch`` flushes its partial batch) thus still has its
downstream consumers running, on whichever agent they are. A node that others
``depends_on`` stops after them (the reverse of the start order). :func:`stop_waves` computes the
waves; :func:`still_running` lists the replicas of a wave that have not stopped yet, which
:meth:`~flowengine.lifecycle.FlowEngine.stop` polls (bounded) before the next wave.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from flowengine.observe import is_source
from flowstore.models import (
    ACTIVE_STATES,
    ComponentConfig,
    FlowSpec,
    ReplicaStatus,
    status_key,
)

#: Replica states that still need waiting for: the replica runs (or is about to).
ACTIVE = ACTIVE_STATES


def stop_waves(spec: FlowSpec, configs: Iterable[ComponentConfig]) -> list[list[str]]:
    """The nodes of ``configs`` in the order to disable them, grouped in waves.

    Wave 0: the sources and every node nothing feeds, unless another node depends on
    them (``depends_on``). Then each wave holds the nodes all of whose upstream nodes and
    dependents are in earlier waves: a node stops after every node that depends on it.
    Nodes left on a cycle (which validation refuses) make up one last wave. Within a
    wave, nodes keep the order of ``configs``.
    """
    cfgs = list(configs)
    nodes = [c.node for c in cfgs]
    upstream: dict[str, set[str]] = {n: set() for n in nodes}
    for conn in spec.connections:
        src, dst = conn.source[0], conn.target[0]
        if src in upstream and dst in upstream and src != dst:
            upstream[dst].add(src)
    dependents: dict[str, set[str]] = {n: set() for n in nodes}
    for cfg in cfgs:
        for dep in cfg.depends_on or {}:
            if dep in dependents and dep != cfg.node:
                dependents[dep].add(cfg.node)
    sources = {c.node for c in cfgs if is_source(c)}
    waves: list[list[str]] = []
    done: set[str] = set()
    remaining = nodes
    while remaining:
        if waves:
            wave = [n for n in remaining if (upstream[n] | dependents[n]) <= done]
        else:
            wave = [n for n in remaining
                    if (n in sources or not upstream[n]) and not dependents[n]]
        wave = wave or remaining  # a cycle: nothing left is ready, take the rest at once
        waves.append(wave)
        done.update(wave)
        remaining = [n for n in remaining if n not in done]
    return waves


def still_running(configs: Iterable[ComponentConfig], nodes: Collection[str],
                  statuses: Mapping[str, ReplicaStatus], live: Collection[str]) -> list[str]:
    """Status keys of the replicas of ``nodes`` that are still running or starting.

    A replica counts as stopped when it reports stopped, completed or failed, when it has
    no status (it never started) or is pending, and when its agent is not live (nobody is
    left to report it, and nothing runs there that could be waited for).
    """
    out = []
    for cfg in configs:
        if cfg.node not in nodes:
            continue
        for replica in range(cfg.replicas):
            key = status_key(cfg.flow, cfg.node, replica)
            status = statuses.get(key)
            if status is not None and status.state in ACTIVE and status.agent in live:
                out.append(key)
    return out
