"""The one interface every replica runner implements (in-process, process, container).

The agent owns a :class:`Replica` per ``<flow>.<node>.<replica>`` it runs. It calls
``start()`` and ``stop()`` and reads ``status()``; the runner calls ``host.changed(self)``
on every state transition so the agent writes the status record at once. Counters are
plain ints on the replica, updated on the hot path without any I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from componentmanager.dataplane.latency import LatencyHistogram
from flowstore.liveness import current_rate
from flowstore.models import ComponentConfig, Counters, ReplicaState, ReplicaStatus, utcnow
from flowstore.nats import NatsOptions


class ReplicaHost(Protocol):
    """What the agent gives a runner."""

    agent_name: str
    nc: Any  # the data plane's nats-py client (not the agent's control connection)
    nats_options: NatsOptions
    log_dir: str
    allow_inline_code: bool
    allow_commands: tuple[str, ...]  # globs of the executables it may run (permits.py)
    allow_images: tuple[str, ...]  # globs of the images it may run
    heartbeat_s: float
    drops: Any  # a componentmanager.dataplane.accounting.DropRouter
    throttle: Any  # a componentmanager.dataplane.accounting.Throttle
    fused: Any  # a componentmanager.runners.fusion.FusedPeers
    taps: Any  # a componentmanager.dataplane.taps.Taps (in-memory ports being tapped)
    downstream: Any  # a componentmanager.runners.downstream.DownstreamStatuses (or None)

    def changed(self, replica: Replica) -> None:
        """Called on every state transition: the agent writes the status record."""
        ...

    def log_line(self, replica: Replica, line: str, stream: str = "stdout",
                 event_id: str | None = None) -> None:
        """One log line of a component: logged and published on
        ``flowctl.logs.<flow>.<node>.<replica>`` (kept in FLOWCTL_LOGS)."""
        ...


@dataclass
class ReplicaCounters:
    """Hot-path counters: plain attribute increments on the data loop, read by the agent
    (see :class:`~flowstore.models.Counters` for what each one means)."""

    in_: int = 0
    out: int = 0
    filtered: int = 0
    errors: int = 0
    dropped: int = 0
    redelivered: int = 0
    replayed: int = 0
    in_ports: dict[str, int] = field(default_factory=dict)
    out_ports: dict[str, int] = field(default_factory=dict)
    #: why events were dropped most recently ("overload (slow consumer)", ...)
    drop_reason: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def drop(self, count: int, reason: str) -> None:
        self.dropped += count
        self.drop_reason = reason

    def taken(self, port: str, count: int) -> None:
        """``count`` events of input ``port`` were taken in (``in`` is counted per event
        as they are handled; this splits it by port once per message)."""
        self.in_ports[port] = self.in_ports.get(port, 0) + count

    def continue_from(self, previous: Counters) -> None:
        """Start from what the replica reported before (restarted or moved here): the
        counts belong to the replica, not to this process."""
        self.in_ += previous.in_
        self.out += previous.out
        self.filtered += previous.filtered
        self.errors += previous.errors
        self.dropped += previous.dropped
        self.redelivered += previous.redelivered
        self.replayed += previous.replayed
        for mine, theirs in ((self.in_ports, previous.in_ports),
                             (self.out_ports, previous.out_ports)):
            for port, count in theirs.items():
                mine[port] = mine.get(port, 0) + count

    def restart_from(self, committed: Counters) -> None:
        """Exactly-once: set the counts to a commit's (what followed it is counted again
        as it is taken again)."""
        self.in_ = self.out = self.filtered = self.errors = self.dropped = 0
        self.redelivered = self.replayed = 0
        self.in_ports, self.out_ports = {}, {}
        self.continue_from(committed)

    def to_model(self) -> Counters:
        return Counters(
            in_=self.in_,
            out=self.out,
            filtered=self.filtered,
            errors=self.errors,
            dropped=self.dropped,
            redelivered=self.redelivered,
            replayed=self.replayed,
            in_ports=dict(self.in_ports),
            out_ports=dict(self.out_ports),
        )


class Replica:
    """Base runner: state bookkeeping shared by all kinds. Subclasses implement
    ``_run()`` (start the work; return once it is running) and ``_halt()``."""

    def __init__(self, cfg: ComponentConfig, index: int, host: ReplicaHost) -> None:
        self.cfg = cfg
        self.index = index
        self.host = host
        self.state = ReplicaState.STARTING
        self.started_at: str | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.exit_code: int | None = None
        self.pid: int | None = None
        self.counters = ReplicaCounters()
        #: set by the agent while a running replica is not keeping up (see agent.health)
        self.degraded: str | None = None
        #: why the state is what it is, when not obvious (shown as the status reason)
        self.note: str | None = None
        #: set by the agent each status interval (see componentmanager.agent.rates)
        self.rate: dict[str, float] = {}
        self.lag: dict[str, int] = {}

    @property
    def key(self) -> str:
        return f"{self.cfg.flow}.{self.cfg.node}.{self.index}"

    def set_state(self, state: ReplicaState, error: str | None = None) -> None:
        """Move to ``state`` (recording ``error``) and tell the host."""
        changed = state != self.state or (error is not None and error != self.last_error)
        self.state = state
        if error is not None:
            self.last_error = error
        if state == ReplicaState.RUNNING and self.started_at is None:
            self.started_at = utcnow()
        if changed:
            self.host.changed(self)

    def status(self) -> ReplicaStatus:
        degraded = self.state == ReplicaState.RUNNING and self.degraded is not None
        state = ReplicaState.DEGRADED if degraded else self.state
        return ReplicaStatus(
            flow=self.cfg.flow,
            node=self.cfg.node,
            replica=self.index,
            state=state,
            reason=self.degraded if degraded else (self.note or self.held_up_by()),
            agent=self.host.agent_name,
            started_at=self.started_at,
            restarts=self.restarts,
            last_error=self.last_error,
            exit_code=self.exit_code,
            pid=self.pid if self.pid is not None else os.getpid(),
            counters=self.counters.to_model(),
            rate=current_rate(state, self.rate),
            lag=dict(self.lag),
            held=self.held_events(),
            flow_revision=self.cfg.flow_revision,
        )

    def held_up_by(self) -> str | None:
        """Why the replica cannot move on right now, when it knows (shown as its reason)."""
        return None

    def blocking_advice(self) -> str | None:
        """What to do when this replica holds the agent's event loop, when its code knows
        better than the general advice (:func:`componentmanager.agent.health.assess`)."""
        return None

    #: what a stopped stateful component held (kept in its checkpoint for the next start)
    held_at_stop = 0

    def held_events(self) -> int:
        """Input events the component holds, not emitted yet (in-process components)."""
        component = getattr(self, "component", None)
        try:
            return int(component.held()) if component is not None else self.held_at_stop
        except Exception:
            return 0

    def input_queues(self) -> dict[str, int]:
        """Per input port, messages queued in this process (at-most-once inputs); {}
        where the runner cannot tell (the agent asks the stream for at-least-once)."""
        return {}

    async def start(self) -> None:
        """Start the work. Never raises: a failure becomes state ``failed`` with the reason."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop the work cleanly (drain, flush), then state ``stopped``. Idempotent."""
        raise NotImplementedError
