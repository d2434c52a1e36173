"""Is an agent live, and how should a reader show a replica it reports: one pure place.

An agent rewrites its record in ``flowctl_agents`` every ``heartbeat_s`` seconds. Its
heartbeat is *overdue* (the agent is *silent*, not live) once the record is
:data:`OVERDUE_AFTER_HEARTBEATS` heartbeat intervals old: one heartbeat missed (4 s at the
default 2 s heartbeat). That is the bound at which the agent itself takes itself for cut
off (``componentmanager.agent.cutoff``), and below the leader's 2.5 intervals before it
moves the agent's replicas, so a reader says ``unknown`` before anything moves.

:func:`silent_for` is what ``flowctl agents`` (LIVE), the console's agents and every
reader of replica states use; :func:`as_seen` turns a replica's status record into what a
reader shows: a replica that its record says is up (``starting``, ``running``,
``degraded``) on a silent agent is ``unknown``, with the reason ``agent a1 silent 2.1 s``.
``unknown`` is never written to ``flowctl_status``: it is what readers make of a record
nobody can vouch for. Pure: the caller reads the records and the clock. Age is judged
on the reader's clock against the agent's ``heartbeat_at`` (keep hosts' clocks in sync).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flowstore.models import ACTIVE_STATES, AgentRecord

#: Heartbeat intervals after which an agent's heartbeat is overdue (the agent not live).
OVERDUE_AFTER_HEARTBEATS = 2.0
#: The state readers show for a replica whose agent is silent (never stored).
UNKNOWN = "unknown"

_UP = frozenset(s.value for s in ACTIVE_STATES)


def silent_for(agent: AgentRecord, now: datetime) -> float | None:
    """Seconds since the agent's last heartbeat when it is overdue; None while it is live."""
    if agent.is_live(now, missed=OVERDUE_AFTER_HEARTBEATS):
        return None
    return max(0.0, agent.age_s(now))


def is_live(agent: AgentRecord, now: datetime) -> bool:
    return silent_for(agent, now) is None


def current_rate(state: str, rate: dict[str, float]) -> dict[str, float]:
    """A replica's rates as they are now: what it measured while it is up (starting,
    running, degraded); 0 once it is not (stopped, failed, completed, pending), since it
    takes and emits nothing then (its last measured rate would read as work going on)."""
    return dict(rate) if state in _UP else {"in": 0.0, "out": 0.0}


def as_seen(status: dict[str, Any], agent: AgentRecord | None, now: datetime) -> dict[str, Any]:
    """A dumped replica status record as a reader shows it at ``now``, given the record
    of the agent it names (None: there is none). Up on a silent agent (or one with no
    record left: it expired 60 s after its last heartbeat, or the agent left): state
    ``unknown``, reason ``agent a1 silent 2.1 s``, no rates or lag (they are stale),
    ``reported_state`` what the record said. A replica that is not up has rates 0
    (:func:`current_rate`). Anything else as written."""
    name = status.get("agent")
    if status.get("state") not in _UP:
        return {**status, "rate": current_rate(status.get("state", ""), status.get("rate") or {})}
    if not name:
        return status
    if agent is None or agent.name != name:
        reason = f"agent {name} silent (its heartbeat record is gone)"
    else:
        silent = silent_for(agent, now)
        if silent is None:
            return status
        reason = f"agent {name} silent {silent:.1f} s"
    return {**status, "state": UNKNOWN, "reported_state": status.get("state"),
            "reason": reason, "rate": {}, "lag": {}}


__all__ = ["OVERDUE_AFTER_HEARTBEATS", "UNKNOWN", "as_seen", "current_rate", "is_live",
           "silent_for"]
