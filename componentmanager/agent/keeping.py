"""The agent's replicas, started, stopped and reported: the part of
:class:`~componentmanager.agent.agent.Agent` that keeps ``self.replicas`` (a mixin, so the
agent module stays one screenful of control loops).

* start: a replica continues the counters of its last status record (they belong to
  ``<flow>.<node>.<replica>``, not to a process), is registered for health watching and
  started on the data loop;
* stop: dependents before their dependencies, then in flow order (sources, processors,
  sinks), its final record written once;
* every status interval: health judged, rates and lag measured, status written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import structlog

from componentmanager.agent.reconcile import stop_groups
from componentmanager.runners import make_replica, watchdog
from componentmanager.runners.base import Replica
from flowstore.models import ReplicaState, ReplicaStatus

log = structlog.get_logger("flowctl.agent")

#: A replica that has not stopped by then is abandoned with an error in the log
#: (process runners escalate to SIGKILL well before: grace 5 s).
REPLICA_STOP_TIMEOUT_S = 20.0


class ReplicaKeeping:
    # provided by the agent
    replicas: dict[str, Replica]
    fingerprints: dict[str, str]
    settings: Any
    instance: str
    nc: Any
    data: Any
    health: Any
    figures: Any
    status: Any
    status_kv: Any
    _watchdog: Any
    _broken_reported: dict[str, str]

    def changed(self, replica: Replica) -> None:
        raise NotImplementedError

    async def _stop_in_flow_order(self, stops: list[tuple[str, str]]) -> None:
        """Stop what depends on others first, then sources, processors, sinks (each group
        concurrently; see :func:`~componentmanager.agent.reconcile.stop_groups`), the
        nodes of a fused chain head first."""
        reasons = dict(stops)
        known = [(k, self.replicas[k].cfg.role, self.replicas[k].cfg.dependency_depth or 0)
                 for k in reasons if k in self.replicas]
        for group in stop_groups(known, {k: self.replicas[k].cfg.fused_at for k, _, _ in known}):
            await asyncio.gather(*(self._stop_replica(k, reasons[k]) for k in group))

    async def _start_replicas(self, starts: list[tuple[Any, int]]) -> None:
        """Start these replicas (config, index) together: their last status records are
        read at once, then all start in one call to the data loop (not a hop between the
        threads each). One that cannot be made does not keep the others from starting;
        the first such error is raised after."""
        assert self.data is not None
        made: list[Replica] = []
        fingerprints: dict[int, str] = {}  # of the config as stored (not the replica's
        errors: list[Exception] = []       # copy, e.g. with --orchestrator's kind)
        for cfg, index in starts:
            try:
                made.append(make_replica(cfg, index, self.data))
                fingerprints[id(made[-1])] = cfg.desired_fingerprint()
            except Exception as exc:
                errors.append(exc)
        if any(r.cfg.kind == "container" for r in made) and self._watchdog is None:
            self._watchdog = watchdog.spawn(os.getpid(), self.instance)
        await asyncio.gather(*(self._continue_counters(r) for r in made))
        now = time.monotonic()
        for replica in made:
            key, cfg = replica.key, replica.cfg
            self.replicas[key] = replica
            self.fingerprints[key] = fingerprints[id(replica)]
            if self.health is not None:
                self.health.add(key, replica.counters.dropped)
            self.figures.started(key, replica, now)
            log.info("starting replica", replica=key, type=cfg.type, kind=cfg.kind)
            self.changed(replica)
        results = await self.data.call(_start_all(made))
        errors += [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    async def _continue_counters(self, replica: Replica) -> None:
        """Counts belong to the replica, not this process: start from its last record."""
        with contextlib.suppress(Exception):  # none yet, junk, or NATS busy: start at 0
            entry = await self.status_kv.get(replica.key)
            previous, _ = ReplicaStatus.parse(entry.value)
            if previous is not None and previous.flow == replica.cfg.flow:
                replica.counters.continue_from(previous.counters)
                replica.restarts = previous.restarts

    async def _stop_replica(self, key: str, reason: str) -> None:
        replica = self.replicas.pop(key, None)
        self.fingerprints.pop(key, None)
        if self.health is not None:
            self.health.remove(key)
        if replica is None or self.data is None:
            return
        log.info("stopping replica", replica=key, reason=reason)
        replica.degraded = None
        try:
            await asyncio.wait_for(self.data.call(replica.stop()), REPLICA_STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("replica did not stop in time", replica=key, seconds=REPLICA_STOP_TIMEOUT_S)
        except Exception as exc:
            log.error("replica stop failed", replica=key, error=str(exc))
        # The final record; with NATS gone it would only time out.
        await self.status.retire(replica, final=self.nc.is_connected)

    async def _report_broken(self, config_key: str, reason: str) -> None:
        """Record the problem as replica 0's status, only where no record exists (create:
        never clobbering what a running replica reports)."""
        if self._broken_reported.get(config_key) == reason:
            return
        self._broken_reported[config_key] = reason
        flow, _, node = config_key.partition(".")
        if not node:
            return
        status = ReplicaStatus(
            flow=flow, node=node, replica=0, state=ReplicaState.FAILED, last_error=reason
        )
        with contextlib.suppress(Exception):
            await self.status_kv.create(status.key, status.to_json())

    async def _status_refresh_loop(self) -> None:
        """Every status interval: judge each replica's health and measure its rates and
        lag, then write its status; one whose health stayed the same and whose state
        change was written in the last half interval waits for the next interval (a burst
        of starts is not written twice over; busy replicas are written every interval)."""
        interval = self.settings.status_interval
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            await self.figures.update(dict(self.replicas), now)
            for key, replica in list(self.replicas.items()):
                degraded = replica.degraded
                if self.health is not None:
                    self.health.judge(key, replica, now)
                if replica.degraded == degraded and self.status.written_since(
                        key, now - interval / 2):
                    continue
                self.changed(replica)


async def _start_all(replicas: list[Replica]) -> list[object]:
    """On the data loop: start every replica; each one's error, or None."""
    return await asyncio.gather(*(r.start() for r in replicas), return_exceptions=True)
