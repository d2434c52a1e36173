"""Inputs of keyed and stateful replicas: mixin of
:class:`~componentmanager.runners.inprocess.InProcessReplica`.

* ``partition_by``: every replica of the node reads each input through its own durable
  consumer (``<node>-<port>-p<i>of<n>``; at-most-once: a plain subscription, no queue group)
  and takes only the events of its partition (:mod:`componentmanager.dataplane.partition`);
  the others' events it acks without counting them (their own replica counts them). A
  replica that moves to another agent takes its consumer, and so its place in the
  stream, with it: per-key order holds across failover.
* order across a restart or move: a replica that reads a consumer of its own (a
  partitioned node's replica, or a node's only replica) and finds inputs its predecessor
  had in hand (delivered, never acked: an agent killed) takes those first, as the server
  delivers them again after the ack wait, and holds newer ones back until then
  (:class:`CatchUp`): one key's events are never taken out of order. (A replica that
  stops cleanly hands back what it had not handled at once, so a restart does not wait.)
* exactly-once: every replica of a processor or sink reads consumers of its own and
  commits like a stateful one, its record also holding its floors, counters, next output
  id and its sink's part (see :mod:`componentmanager.runners.commit`).
* stateful components (``window``, ``join``): their state is restored at start and
  checkpointed with the input positions (:class:`~componentmanager.runners.state.OperatorState`)
  every :data:`STATE_EVERY_S`, after a tick that emitted results, when
  :data:`~componentmanager.runners.acks.HOLD_MAX` inputs wait, and at stop. With
  at-least-once delivery inputs are acked only once they are in a stored checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from componentmanager.components.expressions import compile_expression
from componentmanager.dataplane import PublishFailed
from componentmanager.dataplane.partition import HDR_NO_KEY, Partitioner
from componentmanager.runners.commit import Floors, counters_record, new_epoch, restore_counters
from componentmanager.runners.handover import Inherited, take_over
from componentmanager.runners.state import OperatorState
from flowstore.models import HDR_AFTER, is_partitioned, own_subject, stream_name

log = structlog.get_logger("flowctl.replica")

#: How often a stateful replica checkpoints (and acks) when nothing forces it sooner,
#: and how many inputs may wait for a checkpoint (below the consumer's max_ack_pending).
STATE_EVERY_S = 1.0
STATE_HOLD_MAX = 500
#: How often a catching-up input asks its consumer how far the acks got.
CATCH_UP_CHECK_S = 0.5


@dataclass
class CatchUp:
    """An input whose consumer had deliveries in hand when this replica started: inputs
    up to ``upto`` (the last delivered then) are taken as they are delivered again;
    newer ones wait in ``waiting`` (kept alive with in-progress acks) until every input
    up to ``upto`` is acked."""

    durable: str
    upto: int
    handle: Callable[[Any], Awaitable[None]]
    waiting: dict[int, Any] = field(default_factory=dict)
    checked_at: float = 0.0
    touched_at: float = 0.0
    passing: int | None = None  # the held-back input being released now


class KeyedInputs:
    """Partition filtering and state checkpoints (see the module doc)."""

    # provided by the replica
    nc: Any
    cfg: Any
    index: int
    key: str
    counters: Any
    component: Any
    host: Any
    last_error: str | None
    _acked: bool
    _publisher: Any
    _outbox: Any
    _unacked: list[Any]
    _unacked_since: float | None
    _settling: asyncio.Lock
    _partitioner: Partitioner | None = None  # None: every event is this replica's
    _own_subjects: frozenset[str] = frozenset()  # its partitions, sent by producers
    _catch_up: dict[str, CatchUp]
    _state: OperatorState | None = None
    _state_saved_at: float = 0.0
    _mid_message: int = 0  # input messages being handled right now (at-least-once)
    _floors: Floors | None = None  # exactly-once: per producer, the highest event passed
    _inherited: Inherited | None = None  # exactly-once, rescaled: what was passed before
    _prepared: Any = None  # exactly-once: the sink's part of the commit being written
    _commit: dict[str, Any] | None = None  # exactly-once: the commit being written
    _serial: int = 0  # exactly-once: the number of the last commit taken
    #: why the in-memory state can no longer be checkpointed (outputs it made were not
    #: stored): the replica restarts from its last checkpoint, see _settle_stateful
    _state_broken: str | None = None

    @property
    def partition(self) -> int | None:
        """This replica's partition when its node is partitioned, else None."""
        return self.index if self.cfg.partition_by else None

    async def _open_keyed(self, comp: Any) -> None:
        """Before the inputs open: the partition filter; a stateful component's state."""
        self._partitioner, self._catch_up, self._state_broken = None, {}, None
        self._own_subjects = frozenset(
            own_subject(s, self.index) for subjects in self.cfg.inputs.values()
            for s in subjects if is_partitioned(s))
        if self.cfg.partition_by and self.cfg.replicas > 1:
            expression = compile_expression(self.cfg.partition_by)
            self._partitioner = Partitioner(expression.evaluate, self.index, self.cfg.replicas)
        self._state, self._floors, self._prepared = None, None, None
        self._inherited = None
        committing = self.cfg.delivery == "exactly-once" and self.cfg.role != "source"
        if getattr(comp, "stateful", False) or committing:
            self._state = OperatorState(self.nc, self.cfg, self.index)
            if committing and self._own_subjects and self.cfg.partition_by:
                await self._take_over(self._state)
            parts = await self._state.load()
            if getattr(comp, "stateful", False):
                comp.restore(parts)
            if committing:
                self._resume_commit(self._state.commit)
                if not self._state.commit:  # the epoch of its ids is kept before any output
                    await self._state.write(self._state.record({}, self._commit_part(True)),
                                            int(self.nc.max_payload or 1 << 20))
            if self._state.discarded:
                self.host.log_line(self, f"starts with an empty state: "
                                   f"{self._state.discarded}", "agent")
            if self._state.restored_keys:
                self.host.log_line(self, f"resumed the state of {self._state.restored_keys:,}"
                                   " key(s) from its checkpoint", "agent")
            self._state_saved_at = asyncio.get_running_loop().time()

    async def _take_over(self, state: OperatorState) -> None:
        """Exactly-once, partitioned at the producer: what the replicas of the counts
        before passed is not taken again (see :mod:`~componentmanager.runners.handover`)."""
        generations = await take_over(state, self.cfg.flow, self.cfg.node, self.cfg.replicas,
                                      lambda line: self.host.log_line(self, line, "agent"))
        key = compile_expression(str(self.cfg.partition_by)).evaluate
        self._inherited = Inherited(key, generations) if generations else None

    def _owns_for(self, msg: Any) -> Callable[[Any], bool] | None:
        """Which events of an input message this replica takes (None: all). Its own
        partition's are all its own (its producer computed their keys; one it could
        not, it marked: that event fails here); a subject every replica reads (a
        producer that sends it whole, the old partitions of a rescale, a replay) takes
        this replica's keys."""
        partitioner = self._partitioner
        if partitioner is None:
            return None
        if msg.subject not in self._own_subjects:
            return partitioner.owns
        why = msg.headers.get(HDR_NO_KEY) if msg.headers else None
        return None if why is None else Partitioner.without_key(why)

    def _after(self, msg: Any) -> int | None:
        """Exactly-once, a message of this replica's own partition: the last event its
        producer sent here before it (:data:`HDR_AFTER`); None for any other (the old
        partitions of a rescale interleave: their numbers are kept exactly)."""
        if msg.subject not in self._own_subjects or not msg.headers:
            return None
        after = msg.headers.get(HDR_AFTER)
        return int(after) if after and after.isdigit() else None

    def _resume_commit(self, commit: dict[str, Any]) -> None:
        """Exactly-once: continue from the last commit (floors, counters, output ids)."""
        self._floors = Floors(commit.get("floors"))
        self._serial = int(commit.get("serial") or 0)
        if self._state is not None and not self._state.discarded:
            restore_counters(self.counters, commit.get("counters"))  # (none: a first start)
        ids = commit.get("ids") or {}
        epoch = str(ids.get("epoch") or new_epoch())
        self._outbox.ids.continue_as(self.cfg.node, self.index, epoch,
                                     int(ids.get("emitted") or 0))
        if commit:
            self.host.log_line(self, f"resumed from its last commit ({self.counters.in_:,} in, "
                               f"{self.counters.out:,} out)", "agent")

    async def _recover_sink(self, comp: Any) -> None:
        """Exactly-once, at start: the sink undoes or finishes what followed the last
        commit; a sink that keeps the commit with its writes (a database: in the same
        transaction) returns it, and when it is newer than the bucket's it wins."""
        assert self._state is not None
        kept = await comp.recover(self._state.commit.get("sink"))
        if isinstance(kept, dict) and int(kept.get("serial") or 0) > self._serial:
            self._resume_commit(kept)

    def _commit_part(self, first: bool = False) -> dict[str, Any]:
        """Exactly-once: what the commit keeps beside the state, taken now (between input
        messages): the sink's output first (a file's length, its ``out``), then the
        floors, counters and the next output id. The ``first`` commit, stored before the
        component starts, keeps the sink's ``initial_commit()``: a replica killed before
        its next commit is stored cuts its output back to it."""
        comp = self.component
        prepare = None if comp is None else getattr(
            comp, "initial_commit" if first else "prepare_commit", None)
        self._prepared = prepare() if prepare is not None else None
        ids = self._outbox.ids
        self._serial += 1
        self._commit = {"serial": self._serial,
                        "floors": self._floors.as_dict() if self._floors else {},
                        "counters": counters_record(self.counters),
                        "ids": {"epoch": ids.epoch, "emitted": ids.emitted},
                        "sink": self._prepared}
        return self._commit

    def _catch_up_from(self, port: str, info: Any,
                       handle: Callable[[Any], Awaitable[None]]) -> None:
        """Before pulling an own consumer (its ``info`` as the replica found it): did a
        predecessor leave inputs in hand?"""
        own = (self.cfg.partition_by or self.cfg.stateful or self.cfg.replicas == 1
               or self.cfg.delivery == "exactly-once")
        if not (self._acked and own and info.num_ack_pending):
            return
        upto = int(info.delivered.stream_seq or 0)
        self._catch_up[port] = CatchUp(str(info.name), upto, handle)
        self.host.log_line(self, f"{info.num_ack_pending} input message(s) of port {port} "
                           "were in hand when this replica started: taking them first as "
                           "they are delivered again (within the ack wait), newer ones after",
                           "agent")

    def _held_back(self, port: str, msg: Any, sequence: int) -> bool:
        """Keep an input newer than what a predecessor had in hand until those are done."""
        gate = self._catch_up.get(port) if self._catch_up else None
        if gate is None or sequence <= gate.upto or sequence == gate.passing:
            return False
        gate.waiting.setdefault(sequence, msg)
        return True

    async def _check_catch_up(self) -> None:
        """Release the held-back inputs of a port once everything up to its mark is acked."""
        if not self._catch_up:
            return
        loop = asyncio.get_running_loop()
        for port, gate in list(self._catch_up.items()):
            now = loop.time()
            if now - gate.checked_at < CATCH_UP_CHECK_S:
                continue
            gate.checked_at = now
            try:
                info = await self.nc.jetstream().consumer_info(
                    stream_name(self.cfg.flow), gate.durable, timeout=2)
            except Exception:
                continue  # asked again at the next settle
            if gate.passing is not None:
                continue  # another task is releasing them
            if int(info.ack_floor.stream_seq or 0) >= gate.upto:
                # In order, oldest first, until none waits (what arrives meanwhile waits
                # too): a newer input taken first would pass the older ones' event ids.
                while gate.waiting:
                    gate.passing = min(gate.waiting)
                    await gate.handle(gate.waiting.pop(gate.passing))
                self._catch_up.pop(port, None)
            elif now - gate.touched_at >= STATE_EVERY_S * 2:
                gate.touched_at = now
                for msg in gate.waiting.values():  # not delivered again meanwhile
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _let_held_back_go(self) -> None:
        """Stopping: what was held back is delivered again at once (not after the wait)."""
        gates, self._catch_up = self._catch_up or {}, {}
        for gate in gates.values():
            for msg in gate.waiting.values():
                with contextlib.suppress(Exception):
                    await msg.nak()

    def _state_due(self, force: bool) -> bool:
        now = asyncio.get_running_loop().time()
        return force or len(self._unacked) >= STATE_HOLD_MAX or (
            now - self._state_saved_at >= STATE_EVERY_S)

    def _state_record(self) -> bytes | None:
        """The component's state with the input positions, encoded now (None: it could
        not be; said once per interval, the inputs stay unacked and are tried again)."""
        comp, state = self.component, self._state
        if comp is None or state is None:
            return None
        try:
            snapshot = comp.snapshot() if getattr(comp, "stateful", False) else {}
            commit = self._commit_part() if self._floors is not None else None
            return state.record(snapshot, commit)
        except Exception as exc:
            self._state_failed(exc)
            return None

    async def _write_state(self, body: bytes | None) -> bool:
        if body is None or self._state is None:
            return False
        try:
            await self._state.write(body, int(self.nc.max_payload or 1 << 20))
        except Exception as exc:
            self._state_failed(exc)
            return False
        self._state_saved_at = asyncio.get_running_loop().time()
        return True

    def _state_failed(self, exc: Exception) -> None:
        self.last_error = f"state checkpoint failed: {exc}"
        if self.host.throttle.admit(("state checkpoint", self.key)):
            log.warning("state checkpoint failed", replica=self.key, error=str(exc))
            self.host.log_line(self, f"state checkpoint failed: {exc}", "error")

    async def _settle_stateful(self, force: bool = False) -> None:
        """Ack the inputs whose effect is in a stored checkpoint: the state is taken as
        it is now (with the inputs handled so far, the batch to ack), then every output
        emitted so far is stored, then the state, then the acks. Inputs handled while
        this runs are in neither: acked by a later checkpoint."""
        if (self.component is None or self._state_broken
                or (self._acked and self._publisher is None)):
            return
        async with self._settling:
            if self._mid_message or not self._state_due(force):
                return  # half a message in the state would be counted again after a crash
            comp = self.component
            if self._floors is not None and comp is not None and not comp.stateful and comp.held():
                await self._flush_held(comp)  # (a batch, an http sink's pending POSTs)
                if self._mid_message or self.component is None:
                    return
            body = self._state_record()
            if not self._acked:  # at-most-once: the state alone, for a clean restart
                await self._write_state(body)
                return
            if body is None:
                return
            batch, since = self._unacked, self._unacked_since
            self._unacked, self._unacked_since = [], None
            try:
                await self._outbox.flush()
                await self._publisher.wait()
            except PublishFailed as exc:
                # The state ran ahead of what is stored: never checkpoint it. The replica
                # restarts from its last checkpoint and takes these inputs again.
                self._state_broken = (f"outputs not stored ({exc}): restarting from the "
                                      "last checkpoint")
                log.warning("outputs not stored; restarting", replica=self.key, error=str(exc))
                await self._nak_all(batch)
                return
            prepared = self._prepared
            if self._floors is not None and self.component is not None:
                try:
                    await self.component.commit(prepared, self._commit)  # durable first
                except Exception as exc:
                    self._state_broken = f"the sink's commit failed ({exc}): restarting"
                    return
            if not await self._write_state(body):
                self._unacked, self._unacked_since = batch + self._unacked, since
                return
            if self._floors is not None and self.component is not None:
                try:
                    await self.component.committed(prepared)
                except Exception as exc:  # the record holds it: applied at the restart
                    self._state_broken = f"applying the commit failed ({exc}): restarting"
                    return
            await self._ack_all(batch)

    async def _flush_held(self, comp: Any) -> None:  # InputAcks (earlier in the MRO)
        raise NotImplementedError

    async def _nak_all(self, batch: list[Any]) -> None:  # InputAcks (earlier in the MRO)
        raise NotImplementedError

    async def _ack_all(self, batch: list[Any]) -> None:  # InputAcks (earlier in the MRO)
        raise NotImplementedError
