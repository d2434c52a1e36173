"""Placement: which agent runs each replica. A pure function over plain records, no I/O.

:func:`place` takes component configs (each with ``replicas``, ``placement`` and its
current ``assignments``) and the *live* agents, and returns the new assignments of every
config. It is stable: a replica whose agent is still live and eligible never moves. The
others go to eligible agents, spreading the replicas of one node over distinct agents
first, then least loaded (load = replicas assigned across all configs), ties by name. A
replica no agent can take stays ``None`` and gets a reason. The nodes of a fused chain
(:mod:`flowengine.plan`) but the first go where the first goes.

It lives in flowstore because both the engine (deploy) and the agents' leader (failover)
use it; neither the caller's I/O nor liveness checks happen here (pass only live agents).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowstore.models import AgentRecord, ComponentConfig, Placement


@dataclass
class PlacementResult:
    """What :func:`place` decided.

    ``assignments``: config key -> one agent name (or None) per replica.
    ``reasons``: config key -> replica index -> why that replica has no agent.
    ``load``: agent name -> replicas assigned to it (including ``others``).
    """

    assignments: dict[str, list[str | None]] = field(default_factory=dict)
    reasons: dict[str, dict[int, str]] = field(default_factory=dict)
    load: dict[str, int] = field(default_factory=dict)

    def pending(self) -> list[tuple[str, int, str]]:
        """Every unplaced replica as ``(config key, replica, reason)``, sorted."""
        return sorted(
            (key, replica, reason)
            for key, per_replica in self.reasons.items()
            for replica, reason in per_replica.items()
        )

    def changed(self, configs: Iterable[ComponentConfig]) -> list[str]:
        """Keys of ``configs`` whose assignments differ from what was decided."""
        mine = self.assignments
        return sorted(c.key for c in configs if c.key in mine and c.assignments != mine[c.key])


def eligible_agents(
    placement: Placement | None, agents: Iterable[AgentRecord]
) -> list[AgentRecord]:
    """The agents a node with this placement may run on, sorted by name."""
    return sorted(
        (a for a in agents if placement is None or placement.matches(a.name, a.labels)),
        key=lambda a: a.name,
    )


def unplaceable_reason(placement: Placement | None, agents: Iterable[AgentRecord]) -> str | None:
    """Why no agent can take a replica with this placement, or None if one can."""
    agents = list(agents)
    if eligible_agents(placement, agents):
        return None
    if not agents:
        return "no live agent"
    assert placement is not None  # with no constraint, any live agent is eligible
    return f"no live agent matches placement {placement.describe()}"


def place(
    configs: Iterable[ComponentConfig],
    agents: Iterable[AgentRecord],
    *,
    others: Iterable[ComponentConfig] = (),
) -> PlacementResult:
    """Assign every replica of ``configs`` to one of ``agents`` (the live ones).

    ``others`` are configs that are not placed here but whose current assignments count
    towards each agent's load (e.g. the configs of other flows). Configs are handled in
    key order, so the result is deterministic for the same input.
    """
    given, others = list(configs), list(others)
    heads = {c.key: c for c in [*others, *given]}
    # A node fed in memory by its chain's head runs where the head runs (see follow_heads).
    ordered = sorted((c for c in given if _head_key(c) not in heads), key=lambda c: c.key)
    agent_list = sorted(agents, key=lambda a: a.name)
    live = {a.name for a in agent_list}
    load: Counter[str] = Counter({a.name: 0 for a in agent_list})
    for other in others:
        for name in other.assignments[: other.replicas]:
            if name in live:
                load[name] += 1

    result = PlacementResult()
    eligible: dict[str, list[AgentRecord]] = {}

    # First keep every assignment still valid, so later choices see the true load.
    for cfg in ordered:
        names = {a.name for a in eligible_agents(cfg.placement, agent_list)}
        eligible[cfg.key] = [a for a in agent_list if a.name in names]
        kept: list[str | None] = []
        for replica in range(cfg.replicas):
            current = cfg.assignments[replica] if replica < len(cfg.assignments) else None
            if current is not None and current in names:
                kept.append(current)
                load[current] += 1
            else:
                kept.append(None)
        result.assignments[cfg.key] = kept

    # Then fill the gaps: distinct agents for one node first, then least loaded, then name.
    for cfg in ordered:
        assigned = result.assignments[cfg.key]
        candidates = eligible[cfg.key]
        for replica, current in enumerate(assigned):
            if current is not None:
                continue
            if not candidates:
                reason = unplaceable_reason(cfg.placement, agent_list) or "no eligible agent"
                result.reasons.setdefault(cfg.key, {})[replica] = reason
                continue
            same_node = Counter(a for a in assigned if a is not None)
            best = min(candidates, key=lambda a: (same_node[a.name], load[a.name], a.name))
            assigned[replica] = best.name
            load[best.name] += 1

    follow_heads(result, [c for c in given if _head_key(c) in heads], heads, load)
    result.load = dict(sorted(load.items()))
    return result


def _head_key(cfg: ComponentConfig) -> str | None:
    head = cfg.fused_head
    return f"{cfg.flow}.{head}" if head is not None else None


def follow_heads(result: PlacementResult, members: list[ComponentConfig],
                 heads: dict[str, ComponentConfig], load: Counter[str]) -> None:
    """Each node of a fused chain but the first gets the head's assignments (and reasons):
    its replicas are fed in memory by the head's, on the same agent. A head not placed
    here (``others``) keeps its current assignments."""
    for cfg in sorted(members, key=lambda c: c.key):
        head = _head_key(cfg)
        assert head is not None
        theirs = result.assignments.get(head, heads[head].assignments)
        result.assignments[cfg.key] = [*theirs, *[None] * cfg.replicas][: cfg.replicas]
        for name in result.assignments[cfg.key]:
            if name is not None:
                load[name] += 1
        if head in result.reasons:
            result.reasons[cfg.key] = dict(result.reasons[head])
