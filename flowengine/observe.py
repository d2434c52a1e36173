"""What a flow is observed to be: the pure :func:`observe` and the types it returns.

:func:`observe` sums up the replicas' reports in ``flowctl_status`` (given as data, along
with the flow record, its configs, the agents' records and the time) into one :class:`ObservedState`
with counts and reasons, an :class:`EffectiveState`. Pure: no NATS;
:meth:`~flowengine.lifecycle.FlowEngine.effective_state` reads the buckets and calls it.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from flowstore.liveness import UNKNOWN, as_seen
from flowstore.models import (
    AgentRecord,
    ComponentConfig,
    FlowRecord,
    FlowState,
    ReplicaStatus,
    status_key,
)


class ObservedState(StrEnum):
    """What the replicas of a flow report, summed up (see :func:`observe`)."""

    NOT_DEPLOYED = "not_deployed"  # no config keys
    PENDING = "pending"  # some replica has no eligible agent, none runs
    STARTING = "starting"  # enabled, not every replica reports running yet
    RUNNING = "running"  # every replica running (a finished source: completed)
    DEGRADED = "degraded"  # some replicas ok, some failed, unknown, pending or not keeping up
    FAILED = "failed"  # replicas failed (or their agent is silent) and none is ok
    STOPPING = "stopping"  # disabled, but some replica still reports running
    STOPPED = "stopped"  # disabled and nothing runs


class EffectiveState(BaseModel):
    """Desired state (the flow record) next to the observed one, with the reasons.

    ``counts`` maps a replica condition (running, completed, starting, stopped, failed,
    pending, unknown = up on an agent whose heartbeat is overdue (see
    :func:`flowstore.liveness.as_seen`), missing = no status yet) to how many replicas.
    """

    flow: str
    desired: FlowState
    observed: ObservedState
    replicas: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def is_source(cfg: ComponentConfig) -> bool:
    """A source node: its role says so (or, without one, it has no inputs)."""
    return cfg.role == "source" if cfg.role is not None else not cfg.inputs


def observe(record: FlowRecord, configs: list[ComponentConfig], statuses: list[ReplicaStatus],
            agents: dict[str, AgentRecord], now: datetime) -> EffectiveState:
    """Pure: sum up the replicas' reports into one observed state, with the reasons
    (``agents``: every agent record by name; a replica is judged as a reader shows it)."""
    name, desired = record.name, record.state
    if not configs:
        reasons = [] if desired == FlowState.NOT_DEPLOYED else ["no config keys: deploy again"]
        return EffectiveState(flow=name, desired=desired, observed=ObservedState.NOT_DEPLOYED,
                              reasons=reasons)
    by_key = {s.key: s for s in statuses}
    enabled = any(c.enabled for c in configs)
    counts: Counter[str] = Counter()
    reasons: list[str] = []
    ok = 0
    for cfg in configs:
        for replica in range(cfg.replicas):
            key = status_key(name, cfg.node, replica)
            st = by_key.get(key)
            agent = cfg.assignments[replica] if replica < len(cfg.assignments) else None
            if st is None:
                cond = "pending" if agent is None else "missing"
                detail = f"no status from agent '{agent}' yet" if agent else "no agent assigned"
            elif (seen := as_seen({"state": st.state.value, "agent": st.agent},
                                  agents.get(st.agent or ""), now))["state"] == UNKNOWN:
                cond, detail = UNKNOWN, seen["reason"]
            else:
                cond, detail = st.state.value, st.reason or st.last_error
            counts[cond] += 1
            good = cond == "running" or (cond == "completed" and is_source(cfg))
            ok += good
            if enabled and not good:
                reasons.append(f"{key}: {cond}" + (f": {detail}" if detail else ""))
    total = sum(counts.values())
    if not enabled:
        active = counts["running"] + counts["degraded"] + counts["starting"]
        observed = ObservedState.STOPPING if active else ObservedState.STOPPED
        reasons = [f"{active} replica(s) still running"] if active else []
    elif ok == total:
        observed = ObservedState.RUNNING
    elif counts["failed"] + counts[UNKNOWN] + counts["degraded"]:
        observed = ObservedState.DEGRADED if ok else ObservedState.FAILED
    elif counts["pending"]:
        observed = ObservedState.DEGRADED if ok else ObservedState.PENDING
    else:
        observed = ObservedState.STARTING
    return EffectiveState(flow=name, desired=desired, observed=observed, replicas=total,
                          counts=dict(sorted(counts.items())), reasons=reasons)


def in_flow_order(statuses: list[ReplicaStatus], spec: Any) -> list[ReplicaStatus]:
    """Replica records in the order of the flow's nodes (sources, processors, sinks as
    written), replicas in order within a node."""
    rank = {node.id: i for i, node in enumerate(spec.nodes)}
    return sorted(statuses, key=lambda s: (rank.get(s.node, len(rank)), s.node, s.replica))

