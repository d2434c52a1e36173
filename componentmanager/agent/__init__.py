"""The agent: one per host. Control work only: announcing itself, heartbeats, the leader
lease and placement, the config watch, reconciliation and status writes. The replicas
it runs live on the data plane's own thread and connection
(:mod:`componentmanager.agent.dataloop`), so user code and data traffic cannot starve or
disconnect the control work.

Arrows point one way: ``agent -> runners -> dataplane``.
"""

from componentmanager.agent.agent import Agent, AgentSettings
from componentmanager.agent.identity import AgentFenced, AgentNameTaken

__all__ = ["Agent", "AgentFenced", "AgentNameTaken", "AgentSettings"]
