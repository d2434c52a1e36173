"""An agent cut off from NATS stops what must never run twice: :class:`CutOff`.

When the agent's heartbeats have not reached NATS for :data:`CUT_OFF_AFTER_HEARTBEATS`
heartbeat intervals (less than the leader's failover bound of 2.5), the leader may be
about to start its replicas elsewhere. Replicas whose double would do harm outside the
flow's stream are stopped then: by default (``--stop-when-cut-off external``) programs,
containers and ``http`` sources (a second copy would answer the same clients, write the
same files, call the same APIs); ``all`` stops every replica, ``none`` keeps everything
running. In-process stream work is safe to double under at-least-once (the stream and
message ids settle it). Once heartbeats get through again, the stopped replicas resume,
but only those whose config, read afresh from KV, still assigns them here.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Literal

import structlog

from flowstore.models import ComponentConfig

if TYPE_CHECKING:
    from componentmanager.agent.agent import Agent

log = structlog.get_logger("flowctl.agent")

CUT_OFF_AFTER_HEARTBEATS = 2.0
StopWhenCutOff = Literal["external", "all", "none"]


def must_not_run_twice(cfg: ComponentConfig, mode: StopWhenCutOff) -> bool:
    """Whether a replica of ``cfg`` is stopped while its agent is cut off."""
    if mode == "none":
        return False
    if mode == "all":
        return True
    return cfg.kind != "inprocess" or (cfg.role == "source" and cfg.type == "http")


class CutOff:
    """Tracks the agent's contact with NATS and what it stopped for lack of it."""

    def __init__(self, heartbeat_s: float, mode: StopWhenCutOff) -> None:
        self.bound = CUT_OFF_AFTER_HEARTBEATS * heartbeat_s
        self.mode = mode
        self.last_contact = time.monotonic()
        self.cut_off = False
        self.recovering = False

    def contact(self) -> None:
        """A heartbeat reached NATS."""
        self.last_contact = time.monotonic()

    async def watch(self, agent: Agent) -> None:
        """Flip in and out of the cut-off state; the agent's reconcile does the rest."""
        while True:
            await asyncio.sleep(min(0.25, self.bound / 4))
            silent = time.monotonic() - self.last_contact
            if not self.cut_off and silent > self.bound and self.mode != "none":
                self.cut_off = True
                log.warning("cut off from NATS: stopping the replicas that must not run "
                            "twice", seconds=round(silent, 1), mode=self.mode)
                # At once, not through the reconcile loop: that may be waiting on NATS
                # (a periodic resync) for seconds while the leader moves them elsewhere.
                await agent.reconcile_now()
            elif self.cut_off and silent <= self.bound:
                self.cut_off, self.recovering = False, True
                log.info("in touch with NATS again: resuming what is still ours")
                agent.changed_configs()

    async def filter(self, desired: dict[str, tuple[ComponentConfig, int]],
                     why: dict[str, str], config_kv: Any) -> None:
        """Drop from ``desired`` what must not run now (cut off), or, right after a cut
        off, what a fresh read of its config no longer assigns here."""
        if not (self.cut_off or self.recovering):
            return
        for key, (cfg, index) in list(desired.items()):
            if not must_not_run_twice(cfg, self.mode):
                continue
            if self.cut_off:
                del desired[key]
                why[key] = "cut off from NATS: stopped so that no second copy runs"
                continue
            try:
                fresh = ComponentConfig.from_json((await config_kv.get(cfg.key)).value)
                mine = index < len(fresh.assignments) and \
                    fresh.assignments[index] == cfg.assignments[index]
            except Exception:
                mine = False
            if not mine:
                del desired[key]
                why[key] = "moved elsewhere while this agent was cut off"
        if not self.cut_off:
            self.recovering = False
