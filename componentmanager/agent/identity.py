"""The agent's own record in ``flowctl_agents``: announcing it (a live agent of the
same name is refused), taking it back when someone overwrote it with junk, and noticing
when another process took the name over (fencing)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import structlog
from nats.js.errors import KeyNotFoundError

from flowstore.models import AgentRecord
from flowstore.server import pid_alive

if TYPE_CHECKING:
    from componentmanager.agent.agent import Agent

log = structlog.get_logger("flowctl.agent")


class AgentNameTaken(Exception):
    def __init__(self, record: AgentRecord) -> None:
        super().__init__(
            f"an agent named '{record.name}' is already running on {record.host} "
            f"(pid {record.pid}, heartbeat {record.age_s():.1f}s ago); "
            "choose another --name or stop that agent"
        )


class AgentFenced(Exception):
    """Another process took over this agent's name while we were unreachable."""



async def announce(agent: Agent) -> None:
    """Create our entry; refuse when a live agent already has the name."""
    data = agent.record().to_json()
    try:
        entry = await agent.agents_kv.get(agent.agent_name)
    except KeyNotFoundError:
        entry = None
    existing = AgentRecord.parse(entry.value)[0] if entry is not None else None
    if entry is not None and entry.value and existing is None:
        log.warning("our agent record was not an agent record; rewriting it",
                    agent=agent.agent_name)
        agent._agent_rev = await agent.agents_kv.update(agent.agent_name, data,
                                                      last=entry.revision)
    elif entry is not None and entry.value and existing is not None:
        # On this host the process table decides (a crashed agent restarted at once
        # takes its name back); elsewhere, a record that is still fresh does.
        same_host = existing.host == socket.gethostname()
        taken = pid_alive(existing.pid) if same_host else existing.is_live()
        if existing.instance != agent.instance and taken:
            raise AgentNameTaken(existing)
        agent._agent_rev = await agent.agents_kv.update(
            agent.agent_name, data, last=entry.revision
        )
    else:
        agent._agent_rev = await agent.agents_kv.create(agent.agent_name, data)



async def check_fenced(agent: Agent) -> None:
    try:
        entry = await agent.agents_kv.get(agent.agent_name)
    except KeyNotFoundError:
        entry = None
    if entry is None or not entry.value:
        # Our record expired while we could not write: announce again.
        agent._agent_rev = await agent.agents_kv.create(
            agent.agent_name, agent.record().to_json()
        )
        return
    existing, why = AgentRecord.parse(entry.value)
    if existing is None:  # someone put junk under our name: take it back
        log.warning("our agent record was overwritten with something else; rewriting it",
                    agent=agent.agent_name, reason=why)
        agent._agent_rev = await agent.agents_kv.update(
            agent.agent_name, agent.record().to_json(), last=entry.revision)
        return
    if existing.instance == agent.instance:
        agent._agent_rev = entry.revision
        return
    log.error("another agent took over this name; stopping", agent=agent.agent_name)
    agent.fenced = True
    agent._fenced_event.set()

