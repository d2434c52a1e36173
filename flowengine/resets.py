"""Which nodes ``flowctl apply --reset NODE`` starts over. Pure: checked before any write.

A reset renews the node's ``reset`` token in its config (``ComponentConfig.reset``); every
later write carries the token over (a new spec, a rollback, a start), so the node starts
over once. The token is part of what a source's position and a stateful node's state are
relative to (:mod:`componentmanager.runners.checkpoint`). Only nodes that keep something
can be reset: sources (their position) and stateful processors (``window``, ``join``:
their state). A name that is no such node is a usage error naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flowengine.translate import translate
from flowstore.errors import FlowctlError
from flowstore.models import ComponentConfig, FlowSpec


class CannotReset(FlowctlError):
    """``--reset NODE`` names no node that keeps a position or state (nothing written)."""

    exit_code = 2

    def __init__(self, node: str, why: str) -> None:
        super().__init__(f"--reset {node}: {why}")
        self.node = node


def keeps_position(cfg: ComponentConfig) -> bool:
    """Whether the node keeps something a reset starts over: a position or a state."""
    return cfg.role == "source" or cfg.stateful


def reset_targets(flows: Sequence[tuple[str, FlowSpec]],
                  nodes: Iterable[str]) -> dict[str, list[str]]:
    """Per flow (name, validated spec), the ``nodes`` it has, in the order given. Raises
    :class:`CannotReset` for a name no flow has, or a node that keeps nothing."""
    nodes = list(nodes)
    if not nodes:  # (nothing to look up: no translation of every flow)
        return {name: [] for name, _ in flows}
    configs = {name: {c.node: c for c in translate(name, spec, flow_revision=0,
                                                     enabled=False).values()}
               for name, spec in flows}
    targets: dict[str, list[str]] = {name: [] for name, _ in flows}
    for node in dict.fromkeys(nodes):
        having = [(name, by_node[node]) for name, by_node in configs.items() if node in by_node]
        if not having:
            raise CannotReset(node, _unknown(node, configs))
        for name, cfg in having:
            if not keeps_position(cfg):
                raise CannotReset(node, f"node '{node}' of flow '{name}' is a {cfg.role} "
                                        "that keeps no position or state (a reset takes "
                                        "sources and window or join nodes)")
            targets[name].append(node)
    return targets


def _unknown(node: str, configs: dict[str, dict[str, ComponentConfig]]) -> str:
    if len(configs) != 1:
        return f"none of the flows {', '.join(sorted(configs))} has a node '{node}'"
    [(name, by_node)] = configs.items()
    can = [n for n, cfg in by_node.items() if keeps_position(cfg)]
    return (f"flow '{name}' has no node '{node}' (nodes it can reset: "
            f"{', '.join(can) or 'none'})")
