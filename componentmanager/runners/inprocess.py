"""In-process replicas: a registered component type run on the agent's data loop.

The runner wires the component to the data plane (see :mod:`componentmanager.dataplane`):
what it emits goes through an :class:`~componentmanager.dataplane.Outbox` (adaptive
frames) to a plain publish (at-most-once; what NATS refuses is counted in ``dropped``) or
an :class:`~componentmanager.dataplane.AckedPublisher` (at-least-once, with backpressure);
its inputs are :mod:`componentmanager.runners.delivery`. A source waits until every
replica downstream reports running before it emits (at-most-once only: the stream keeps
events for consumers that exist from deploy on). A failing source or start is retried
with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import structlog
from nats.aio.msg import Msg

from componentmanager.component import Component, EventTooLarge
from componentmanager.dataplane import AckedPublisher, EventIds, Puller, encode
from componentmanager.dataplane.wire import (
    HDR_META,
    PREVIEW_BYTES,
    event_id,
    frame_chunks,
)
from componentmanager.registry import get_type
from componentmanager.runners.acks import DoneInputs
from componentmanager.runners.base import Replica, ReplicaHost
from componentmanager.runners.checkpoint import SourceCheckpoint, StoredMark
from componentmanager.runners.commit import new_epoch
from componentmanager.runners.delivery import InputDelivery
from componentmanager.runners.dependencies import wait_for_dependencies
from componentmanager.runners.downstream import wait_for_downstream
from componentmanager.runners.fusion import FusedFeed
from componentmanager.runners.keyed_outputs import KeyedOutputs
from componentmanager.runners.teardown import ReplicaTeardown
from flowstore.models import ComponentConfig, ReplicaState, stream_name

log = structlog.get_logger("flowctl.replica")

RESTART_BACKOFF_S = (0.5, 30.0)
#: Exactly-once: a replica commits at least this often (and when 500 inputs wait).
COMMIT_EVERY_S = 0.5
#: Room left in a message for its header (the event's metadata).
HEADER_ROOM = 512


class InProcessReplica(InputDelivery, FusedFeed, KeyedOutputs, ReplicaTeardown, Replica):
    """One replica of a registered component type, run as asyncio tasks."""

    def __init__(self, cfg: ComponentConfig, index: int, host: ReplicaHost) -> None:
        super().__init__(cfg, index, host)
        self.flow, self.node, self.replica = cfg.flow, cfg.node, index
        self.nc = host.nc
        self.allow_inline_code = host.allow_inline_code
        self.component: Component | None = None
        self._acked = cfg.delivery != "at-most-once"
        self._exactly_once = cfg.delivery == "exactly-once"
        self._current_event: tuple[Any, int] | None = None  # (headers, index) in process
        self._source_epoch: str | None = None  # exactly-once: carried across restarts here
        self._publisher: AckedPublisher | None = None
        self._open_outbox(cfg, EventIds(cfg.node, index, secrets.token_hex(3)))
        self._fed_outputs: dict[str, tuple[Any, str]] = {}
        self._fed_sinks: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._sub_ports: list[tuple[str, Any]] = []
        self._pullers: list[Puller] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._unacked: list[Msg] = []  # processed inputs not acked yet (see _settle)
        self._unacked_since: float | None = None
        self._progress_at: dict[str, float] = {}
        self._done = DoneInputs()
        self._handled: set[str] = set()
        self._in_hand: set[str] = set()  # inputs being handled now, by identity
        self._dead_letters_unstored: set[int] = set()
        self._checkpoint: SourceCheckpoint | None = None
        self._stored_mark: StoredMark | None = None  # what the last run knew was stored
        self._emitted = 0  # events emitted in this run (source checkpoints count them)
        self._settling = asyncio.Lock()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    # -- the Context a component sees -------------------------------------------------
    @property
    def max_event_bytes(self) -> int:
        """The largest encoded event the server takes (its max_payload, less room for
        the header)."""
        return max(1024, int(self.nc.max_payload or 1 << 20) - HEADER_ROOM)

    async def _pause_for_checkpoint(self, checkpoint: SourceCheckpoint) -> None:
        """A source pauses while its position cannot be written (bounds a failover's
        repeats); only its own emitting waits, never a flush or a stop."""
        self.note = "paused: its checkpoint cannot be written (flowctl_checkpoints does not answer)"
        self.host.log_line(self, self.note, "agent")
        await checkpoint.catch_up()
        self.note = None
        self.host.log_line(self, "resumed: the checkpoint is written", "agent")

    def _waiting_for(self, keys: list[str]) -> None:
        if keys:
            self.set_state(ReplicaState.STARTING, f"waiting for downstream: {', '.join(keys)}")
        else:
            self.last_error = None

    def held_up_by(self) -> str | None:
        publisher = self._publisher
        if publisher is None or publisher.refused is None:
            return None
        return f"waiting: the stream refuses its events ({publisher.refused}); retrying"

    def blocking_advice(self) -> str | None:
        return self.component.blocking_advice() if self.component is not None else None

    async def emit(self, port: str, event: Any) -> None:
        if self._checkpoint is not None and self._checkpoint.too_far_behind():  # (a source)
            await self._pause_for_checkpoint(self._checkpoint)
        if port == self.cfg.fused_port:  # to the next node of its chain, in memory
            await self._feed([event], False)
            return
        subject = self._subject_of(port)
        body = encode(event)
        if len(body) > self.max_event_bytes:
            reason = (f"an event of {len(body):,} bytes on port {port} is larger than the "
                      f"server allows ({self.max_event_bytes:,} bytes, its max_payload)")
            if self.cfg.role != "source":
                raise EventTooLarge(reason)  # the input that made it fails (dead-lettered)
            await self.reject(body[:PREVIEW_BYTES], reason)  # counted, a preview kept
            return
        self._root_now()._emitted += 1  # (what its source's checkpoint waits to be stored)
        self._sends_through(subject, port)
        await self._put_event(port, subject, body, event)

    def _subject_of(self, port: str) -> str:
        subject = self.cfg.outputs.get(port)
        if subject is None:
            raise ValueError(f"{self.node} has no output port '{port}'")
        return subject

    async def emit_batch(self, port: str, events: list[Any]) -> bool:
        if self._checkpoint is not None and self._checkpoint.too_far_behind():
            await self._pause_for_checkpoint(self._checkpoint)
        if port == self.cfg.fused_port:
            await self._feed(events, True)
            return True
        subject = self._subject_of(port)
        if not events:
            return True
        try:
            frames = frame_chunks(events, self.max_event_bytes)
        except Exception:
            return False  # one of them cannot be encoded: emit() says which
        if frames is None:
            return False  # one of them is too large: emit() fails just that one
        self._root_now()._emitted += len(events)
        self._sends_through(subject, port)
        for part, lines in frames:
            await self._put_events(port, subject, part, lines)
        return True

    async def _send(self, subject: str, body: bytes, headers: dict[str, str], count: int) -> None:
        """One message (an event or a frame of ``count``) out; counted once it is out."""
        if self._publisher is not None:
            if self._exactly_once:  # the same events framed alike are stored once
                first = headers[HDR_META].split(" ", 1)[0]
                headers = {**headers, "Nats-Msg-Id": f"{first}:{count}"}
            elif self.cfg.role == "source":  # the stream stores a retried publish once
                headers = {**headers, "Nats-Msg-Id": headers[HDR_META].split(" ", 1)[0]}
            await self._publisher.publish(subject, body, headers, count)
        else:
            try:
                await self.nc.publish(subject, body, headers=headers)
            except Exception as exc:  # at-most-once: NATS refused it; lost, counted
                owner, port = self._sent_by(subject)
                if port is not None:  # (a keyed reader's copy is counted on its first)
                    owner.counters.drop(count, f"publish refused ({type(exc).__name__})")
                return
        owner, port = self._sent_by(subject)
        if port is None:
            return  # another keyed reader's copy: counted once, on its counted subject
        c = owner.counters
        c.out += count
        c.out_ports[port] = c.out_ports.get(port, 0) + count

    def inputs_quiet(self) -> bool:
        """Did the inputs really run dry (the server said so: at-least-once), rather than
        stall with NATS unreachable? At-most-once: while connected."""
        if self._acked:
            return bool(self._pullers) and all(p.quiet for p in self._pullers)
        return bool(self.nc.is_connected)

    @property
    def input_ports(self) -> list[str]:
        """The node's input ports (a ``join``'s are named after its upstream nodes)."""
        return list(self.cfg.inputs)

    async def resume_position(self) -> Any:
        """Where a source resumes (its last stored position), None to start over."""
        return self._checkpoint.position if self._checkpoint is not None else None

    def advance(self, position: Any) -> None:
        """A source: everything emitted so far is covered by ``position``."""
        if self._checkpoint is not None:
            self._checkpoint.advance(self._emitted, position)

    @property
    def exactly_once(self) -> bool:
        return self._exactly_once

    def event_id(self) -> str | None:
        current = self._current_event
        return event_id(current[0], current[1]) if current is not None else None

    def log(self, message: str, **fields: Any) -> None:
        self.host.log_line(self, message + "".join(f" {k}={v}" for k, v in fields.items()))

    def count_filtered(self, count: int = 1) -> None:
        self.counters.filtered += count

    def wrote(self, count: int = 1) -> None:
        self.counters.out += count

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._supervisor = asyncio.create_task(self._supervise(), name=f"replica {self.key}")

    async def _supervise(self) -> None:
        delay = RESTART_BACKOFF_S[0]
        while not self._stopping:
            try:
                await wait_for_dependencies(self, asyncio.Event())  # (stop cancels it)
                await self._run_once()
                if self.state != ReplicaState.COMPLETED:
                    await self._until_a_task_dies()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.host.fused.remove(self)
                await self._teardown()  # a failure of the replica, not of an event:
                self.set_state(ReplicaState.FAILED, f"{type(exc).__name__}: {exc}")
                log.warning("replica failed", replica=self.key, error=str(exc))
                self.host.log_line(self, f"replica failed: {type(exc).__name__}: {exc}",
                                   "agent")
                policy = self.cfg.external.restart_policy if self.cfg.external else "on-failure"
                if policy == "never" or self._stopping:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_S[1])
                self.restarts += 1
                self.set_state(ReplicaState.STARTING)

    async def _run_once(self) -> None:
        """Start the component and open its inputs; for a source, run it to the end."""
        ctype = get_type(self.cfg.type, self.cfg.role)
        if ctype is None:
            raise RuntimeError(f"unknown component type '{self.cfg.type}' on this agent")
        config = ctype.config_model.model_validate(self.cfg.config)
        self.component = ctype.load_class()(config, self)
        await self._open_keyed(self.component)  # partition filter, restored state
        if self._acked:
            source_of = stream_name(self.flow) if ctype.role == "source" else None
            self._publisher = await AckedPublisher(self.nc, source_of,
                                                   strict=self._exactly_once).open()
        self._tasks.append(asyncio.create_task(self._outbox.run_flusher(),
                                               name=f"output flusher {self.key}"))
        await self.component.start()
        if self._exactly_once and self._state is not None:  # undo what followed the commit
            await self._recover_sink(self.component)
            self._tasks.append(asyncio.create_task(self._commit_loop(),
                                                   name=f"commit loop {self.key}"))
        await self._open_inputs()
        if self.cfg.fused_head is not None:  # fed in memory by the head's replica
            self.host.fused.add(self)
        if self._pullers:
            self._tasks.append(asyncio.create_task(self.keep_in_hand_alive(),
                                                   name=f"inputs kept alive {self.key}"))
        interval = getattr(self.component, "flush_interval", None)
        if interval:
            self._tasks.append(asyncio.create_task(self._flush_loop(interval),
                                                   name=f"flush loop {self.key}"))
        if ctype.role != "source":
            self.set_state(ReplicaState.RUNNING)
            return
        if not self._acked:
            await wait_for_downstream(self.host, self.nc, self.cfg, lambda: self._stopping,
                                      self._waiting_for)
        elif self._publisher is not None:
            self._checkpoint = SourceCheckpoint(
                self.nc, self.cfg, self.index, self._publisher.stored_events,
                position_fields=type(self.component).position_fields,
                seal=self._flush_chain if self.cfg.fused_port else None)
            await self._checkpoint.load(self._stored_mark)
            if self._exactly_once:
                await self._number_source_events(self._checkpoint)
            self._tasks.append(asyncio.create_task(self._checkpoint.run(),
                                                   name=f"checkpoint {self.key}"))
            if self._checkpoint.completed:  # finished in an earlier run: stays finished
                self.note = (f"completed in an earlier run "
                             f"({self._checkpoint.events_before:,} events)")
                self.set_state(ReplicaState.COMPLETED)
                return
        self._emitted = 0
        self.set_state(ReplicaState.RUNNING)
        running = asyncio.create_task(self.component.run(), name=f"run {self.key}")
        try:
            await self._until_a_task_dies(running)
        finally:
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
        running.result()  # the source's own failure
        if not self._acked:  # (at-least-once: its completion flushes them, see complete)
            await self._flush_chain()  # a chain's sinks write out what the source made
        await self._outbox.flush()
        if self._publisher is not None:
            await self._publisher.wait()
        if self._checkpoint is not None:
            await self._checkpoint.complete(self._emitted)
        await self.nc.flush()
        self.set_state(ReplicaState.COMPLETED)

    async def _number_source_events(self, checkpoint: SourceCheckpoint) -> None:
        """Exactly-once: a source numbers its events on from its checkpoint's count,
        under the epoch it had, so what it emits again has the ids it had (readers skip
        it); its ``out`` is the checkpoint's (what the stream stored), after what it
        counted before it started over (a reset, another thing read: a new epoch)."""
        if checkpoint.epoch is None and self._source_epoch is None:  # numbering starts
            checkpoint.counted_before = self.counters.out  # (as the status had it)
        epoch = checkpoint.epoch or self._source_epoch or new_epoch()
        await checkpoint.keep_epoch(epoch)
        self._source_epoch = epoch
        self._outbox.ids.continue_as(self.node, self.index, epoch, checkpoint.events_before)
        stored = checkpoint.counted_before + checkpoint.events_before
        ports = list(self.cfg.outputs)
        self.counters.out = stored
        self.counters.out_ports = {ports[0]: stored} if len(ports) == 1 and stored else {}

    async def _commit_loop(self) -> None:
        """Exactly-once: commit at least every :data:`COMMIT_EVERY_S`; fail the replica
        (it restarts from its last commit) once its state cannot be committed."""
        while True:
            await asyncio.sleep(COMMIT_EVERY_S)
            if self._state_broken:
                raise RuntimeError(self._state_broken)
            await self._settle()

    async def _flush_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._state_broken:  # the replica fails and restarts from its checkpoint
                raise RuntimeError(self._state_broken)
            emitted, comp = self.counters.out, self.component
            if comp is None:
                continue  # stopping: the stop flushes it (and ends this loop)
            try:  # no tick while inputs catch up: a quiet input is not an idle stream
                if not self._catch_up:
                    await comp.flush()
            except Exception as exc:
                self.counters.errors += 1
                self.last_error = f"flush: {exc}"
            if self._state is not None:  # results out: checkpoint them at once
                await self._settle(force=self.counters.out != emitted)
            elif self._acked:
                await self._settle()

    async def stop(self) -> None:
        self._stopping = True
        self.host.fused.remove(self)
        await self._close_inputs()  # a component never sees an event after stop
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._teardown()
        if self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
        if self.state != ReplicaState.COMPLETED:
            self.set_state(ReplicaState.STOPPED)
