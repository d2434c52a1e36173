"""Replica runners: in-process, process and container, behind one interface (base.Replica).

:func:`make_replica` picks the runner for a config's ``kind`` (for a node with both a
program and an image, the one the agent's ``orchestrator`` asks for); :func:`reap_leftovers`
cleans what a previous life of this agent left behind (processes, containers). Process
and container replicas share their supervision (:mod:`.external`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from componentmanager.runners.base import Replica, ReplicaHost

if TYPE_CHECKING:
    from flowstore.models import ComponentConfig

log = structlog.get_logger("flowctl.runners")


class RefusedReplica(Replica):
    """A program or container this agent is not allowed to run: ``failed`` with why."""

    def __init__(self, cfg: ComponentConfig, index: int, host: ReplicaHost,
                 reason: str) -> None:
        super().__init__(cfg, index, host)
        self.reason = reason

    async def start(self) -> None:
        from flowstore.models import ReplicaState

        log.warning("refused to run", replica=self.key, reason=self.reason)
        self.set_state(ReplicaState.FAILED, self.reason)

    async def stop(self) -> None:
        from flowstore.models import ReplicaState

        self.set_state(ReplicaState.STOPPED)


def make_replica(cfg: ComponentConfig, index: int, host: ReplicaHost) -> Replica:
    from componentmanager.runners.permits import refusal

    if cfg.external is not None:  # the agent's --orchestrator picks a form of two
        kind = cfg.external.runs_as(getattr(host, "orchestrator", None))
        if kind != cfg.kind:
            cfg = cfg.model_copy(update={"kind": kind})

    refused = refusal(cfg, getattr(host, "allow_commands", ()),
                      getattr(host, "allow_images", ()))
    if refused is not None:
        return RefusedReplica(cfg, index, host, refused)
    if cfg.kind == "process":
        from componentmanager.runners.process import ProcessReplica

        return ProcessReplica(cfg, index, host)
    if cfg.kind == "container":
        from componentmanager.runners.container import ContainerReplica

        return ContainerReplica(cfg, index, host)
    from componentmanager.runners.inprocess import InProcessReplica

    return InProcessReplica(cfg, index, host)


def warm_up() -> None:
    """Import the in-process runner (and with it the built-in components) at agent
    start: the first replica started on this agent then does not wait for it (about
    0.2 s, on the path from `flowctl start` to the first event)."""
    import componentmanager.runners.inprocess  # noqa: F401


async def reap_leftovers(log_dir: str, agent_name: str) -> None:
    """Kill processes and remove containers a previous life of this agent left behind."""
    try:
        from componentmanager.runners.process import reap_orphans

        await reap_orphans(log_dir)
    except Exception as exc:
        log.warning("could not reap leftover processes", error=str(exc))
    try:
        from componentmanager.runners.container import reap_orphan_containers

        await reap_orphan_containers(agent_name)
    except Exception as exc:
        log.debug("could not reap leftover containers", error=str(exc))


__all__ = ["Replica", "ReplicaHost", "make_replica", "reap_leftovers", "warm_up"]
