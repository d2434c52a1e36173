"""How an in-process replica takes its inputs, per delivery mode, and settles them.

* at-most-once: core queue subscriptions (:mod:`componentmanager.runners.core_inputs`:
  the oldest messages shed, counted, when the queue is full).
* at-least-once: a :class:`~componentmanager.dataplane.pull.Puller` per input. An
  input message is acked once every output it caused is stored (and, for a buffering
  component, flushed: see :mod:`componentmanager.runners.acks`). A failing event that
  may pass on a retry (an I/O error, a timeout, a
  :class:`~componentmanager.component.RetryableError`) is retried in place and then
  dead-lettered; any other failure (a data error, an exception of user code) is
  dead-lettered at once, so the events behind it do not wait. The frame's other events
  are not repeated.
* exactly-once: as at-least-once, through consumers of each replica's own; an event
  whose id the replica has passed is skipped (:meth:`InputDelivery._fresh`), inputs are
  acked once in a stored commit (:mod:`componentmanager.runners.commit`).

Either way an event that fails is counted in ``errors``, dead-lettered to
``flowctl.<flow>.<node>.dlq`` with the reason, and the replica goes on; once stopped, a
replica never processes or dead-letters another event. Input handling gives the loop a
turn every :data:`~.taking.YIELD_EVERY` events, so one busy input cannot starve the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import structlog
from nats.aio.msg import Msg

from componentmanager.component import Component, EventError, RetryableError
from componentmanager.dataplane import (
    PublishFailed,
    Puller,
)
from componentmanager.dataplane.partition import partition_origin
from componentmanager.dataplane.wire import (
    HDR_REPLAY_TO,
    delivery_of,
    message_identity,
    redelivery_delay,
    undeliverable,
)
from componentmanager.runners.acks import DoneInputs, InputAcks
from componentmanager.runners.commit import message_range, owned
from componentmanager.runners.core_inputs import (
    INPUT_PENDING_BYTES,
    INPUT_PENDING_MSGS,
    CoreInputs,
)
from componentmanager.runners.failures import EventFailures
from componentmanager.runners.stateful import KeyedInputs
from componentmanager.runners.taking import Indexed, Numbered
from flowstore.models import input_consumer, own_subject, stream_name
from flowstore.streams import ensure_consumer

log = structlog.get_logger("flowctl.replica")

#: Pauses between the in-place attempts of a failing event (at-least-once).
RETRY_PAUSES_S = (0.1, 0.2, 0.4, 0.8)



def retryable(exc: Exception) -> bool:
    """May trying the event again help? I/O errors (a refused connection, a timeout) and
    :class:`RetryableError`; not a data error, not an exception of the component's code."""
    if isinstance(exc, EventError):
        return False
    return isinstance(exc, OSError | TimeoutError | RetryableError)


async def retry_in_place(comp: Any, port: str, event: Any, exc: Exception, *,
                         going_on: Callable[[Exception], bool],
                         between: Callable[[], Awaitable[None]] | None = None
                         ) -> Exception | None:
    """Try a failing event again, after growing pauses, while a retry may help
    (:func:`retryable`) and ``going_on(failure)``: None once it passed, else its last
    failure."""
    for pause in RETRY_PAUSES_S:
        if not retryable(exc) or not going_on(exc):
            return exc
        if between is not None:
            await between()
        await asyncio.sleep(pause)
        try:
            await comp.process(port, event)
            return None
        except Exception as again:
            exc = again
    return exc


def _emits_per_input(comp: Any) -> bool:
    """A component that buffers nothing emits, for an input, what it emitted for it
    before: its outputs can carry ids derived from the input. So does a stateful one
    resumed from its checkpoint (the same state and input give the same results)."""
    return type(comp).held is Component.held or bool(getattr(comp, "stateful", False))




class InputDelivery(CoreInputs, InputAcks, EventFailures, KeyedInputs):
    """Mixin of :class:`~componentmanager.runners.inprocess.InProcessReplica`: inputs."""

    # provided by the replica
    nc: Any
    flow: str
    node: str
    key: str
    cfg: Any
    host: Any
    counters: Any
    component: Any
    last_error: str | None
    _acked: bool
    _publisher: Any
    _outbox: Any
    _subs: list[Any]
    _sub_ports: list[tuple[str, Any]]  # (input port, core subscription)
    _pullers: list[Puller]
    _unacked: list[Msg]
    _unacked_since: float | None
    _settling: asyncio.Lock
    _inflight: int = 0
    _since_yield: int = 0
    _progress_at: dict[str, float]  # per input port: when its frame last reported progress
    _done: DoneInputs  # input messages this replica acked lately
    _handled: set[str]  # input messages handled here whose ack is still to be sent
    _current_event: tuple[Any, int] | None

    async def _open_inputs(self) -> None:
        for port, subjects in self.cfg.inputs.items():
            if not subjects:
                continue
            subjects = [own_subject(s, self.index) for s in subjects]
            if self._acked:
                consumer = await ensure_consumer(
                    self.nc, self.flow, input_consumer(self.cfg, port, self.index), subjects)
                handler = self._pulled_handler(port)
                self._catch_up_from(port, consumer, handler)
                puller = Puller(self.nc, stream_name(self.flow), str(consumer.name), handler,
                                self._settle)
                self._pullers.append(puller)
                await puller.start()
                continue
            for subject in subjects:
                holder: list[Any] = []
                sub = await self.nc.subscribe(  # keyed: every replica sees all, but
                    subject, queue=self.cfg.queue  # its own partition's are its own
                    if subject in self._own_subjects or not self.cfg.partition_by else None,
                    cb=self._core_handler(port, holder),
                    pending_msgs_limit=4 * INPUT_PENDING_MSGS,
                    pending_bytes_limit=4 * INPUT_PENDING_BYTES,
                )
                holder.append(sub)
                self.host.drops.own(sub, self._overflowed)  # the safety net's drops
                self._subs.append(sub)
                self._sub_ports.append((port, sub))

    # -- at-least-once ----------------------------------------------------------------------
    def _pulled_handler(self, port: str):  # type: ignore[no-untyped-def]
        async def on_msg(msg: Msg) -> None:
            comp = self.component
            if comp is None:
                return  # never acked: delivered again after the ack wait
            ident = message_identity(msg.headers, msg.reply)
            # (exactly-once knows repeats by their event ids instead: see _fresh)
            if self._floors is None and ident is not None and ident in self._done:
                await self._ack_again(msg)  # done here already; only the ack was lost
                return
            if self._floors is None and ident is not None and ident in self._handled:
                self.counters.redelivered += 1  # handled here, its ack still to come:
                self._unacked.append(msg)       # acked with the first delivery
                return
            if ident is not None and ident in self._in_hand:
                # Delivered again after the ack wait while its first delivery is still
                # being handled here (waiting on a slow sink): never twice at once.
                self.counters.redelivered += 1
                with contextlib.suppress(Exception):
                    await msg.in_progress()
                return
            if not self._meant_for_me(msg):
                await self._ack_again(msg, counted=False)  # a replay for another node
                return
            sequence, delivered = delivery_of(msg.reply) or (0, 0)
            if self._state_broken:
                return  # restarting from the checkpoint: taken again after that
            if self._held_back(port, msg, sequence):
                return  # newer than what a predecessor had in hand: taken after those
            if (self._floors is None and self._state is not None
                    and self._state.covers(port, sequence)):
                await self._ack_again(msg)  # in the restored state already: not twice
                return
            if ident is not None:
                self._in_hand.add(ident)
            try:
                await self._take(port, comp, msg, ident, sequence, delivered)
            except BaseException:
                if self._floors is not None and not self._state_broken:  # its ids are
                    self._state_broken = ("an input's handling ended halfway: restarting "
                                          "from the last commit")  # passed: never commit
                raise
            finally:
                self._in_hand.discard(ident)  # type: ignore[arg-type]

        return on_msg

    async def _take(self, port: str, comp: Any, msg: Msg, ident: str | None, sequence: int,
                    delivered: int) -> None:
        """Handle an input message's events (it is in hand meanwhile: a redelivery of it
        is not taken twice), then let it wait for its ack or come again."""
        events = self._events_of(comp, msg)
        self._progress_at[port] = asyncio.get_running_loop().time()
        failures_before = self._failures
        indexed: Indexed = Numbered(events)
        if self._floors is not None:
            indexed = self._fresh(port, msg, indexed)
            events = [event for _, event in indexed]
        if (why := undeliverable(delivered)) is not None:
            await self._dead_letter_unprocessed(port, msg, events, EventError(why))
            await self._taken_or_again(port, msg, sequence, ident,
                                       delivered, failures_before)
            return
        origin = ident if ident and _emits_per_input(comp) else None
        if self._floors is not None:
            origin = None  # exactly-once outputs are known by their own ids
        if origin is not None and self.partition is not None:
            origin = partition_origin(origin, self.partition, self.cfg.replicas)
        began, taken = perf_counter(), 0

        async def fail(index: int, event: Any, exc: Exception) -> None:
            await self._retry(comp, port, msg, index, event, exc)

        async def turn() -> None:
            await self._still_working(port, msg)
            await asyncio.sleep(0)

        self._mid_message += 1  # no state checkpoint while a message is half done
        try:
            async with self._outbox.handling(origin):  # outputs go out at the end
                taken, left = await self._take_events(comp, port, msg.headers, indexed,
                                                      fail, turn, self._owns_for(msg))
                if left is not None:
                    self._took(port, msg, taken, perf_counter() - began)
                    if origin is not None:  # its partial frame must not take
                        self._outbox.discard()  # the ids of the full one
                    return  # stopped mid-frame: never acked, delivered again
                if origin is not None and self._failures != failures_before:
                    # delivered again (see _taken_or_again): what it made so far (a fused
                    # peer stopped midway, say) must not take the ids of its full outputs
                    # then, or the stream would drop those as repeats
                    self._outbox.discard()
        finally:
            self._mid_message -= 1
        self._took(port, msg, taken, perf_counter() - began)
        await self._taken_or_again(port, msg, sequence, ident, delivered, failures_before)

    def _fresh(self, port: str, msg: Msg, indexed: Indexed) -> Indexed:
        """Exactly-once: the events of a message this replica takes: not passed before
        (a repeat, however framed and however late) and, for a node with several
        replicas and no ``partition_by``, of its own blocks (see
        :mod:`~componentmanager.runners.commit`)."""
        assert self._floors is not None
        found = message_range(msg.headers, msg.reply, port, len(indexed))
        if found is None or (msg.headers and HDR_REPLAY_TO in msg.headers):
            return indexed  # (a dead letter sent back by `flowctl dlq replay`: taken)
        prefix, first = found
        taken = self._floors.fresh(prefix, first, len(indexed), self._after(msg))
        if self._inherited:  # a rescale: what the replicas before passed is not taken
            taken = [i for i in taken if not self._inherited.passed(
                prefix, first + i, indexed[i][1])]
        if len(taken) < len(indexed):
            self.counters.redelivered += 1
        replicas = self.cfg.replicas
        if replicas > 1 and not self.cfg.partition_by:
            return [indexed[i] for i in owned(prefix, first, taken, self.index, replicas)]
        return indexed if len(taken) == len(indexed) else [indexed[i] for i in taken]

    async def _taken_or_again(self, port: str, msg: Msg, sequence: int, ident: str | None,
                              delivered: int, failures_before: int) -> None:
        """Handled: wait for the ack; unless a dead letter of it could not be stored, or
        outputs failed to be stored while it was handled (then its own may be lost too,
        and the settle that saw the failure did not have it): delivered again, later
        each time. No await before the append (see _taken_in)."""
        unstored = id(msg) in self._dead_letters_unstored
        if not unstored and failures_before == self._failures:
            self._taken_in(port, msg, sequence, ident)
            return
        if self._floors is not None:  # its floors moved past it: from the last commit
            self._state_broken = "an input's outputs or dead letters were not stored"
            return
        self._dead_letters_unstored.discard(id(msg))
        with contextlib.suppress(Exception):
            await msg.nak(delay=redelivery_delay(delivered))

    def _taken_in(self, port: str, msg: Msg, sequence: int, ident: str | None) -> None:
        """An input message is handled: it waits for its ack (see _settle). Called with no
        await since its outputs were published: _settle acks it only after a publisher
        wait that began after them."""
        if self._state is not None:
            self._state.saw(port, sequence)
        self._unacked.append(msg)
        if ident is not None:
            self._handled.add(ident)
        if not self._unacked_since:
            self._unacked_since = asyncio.get_running_loop().time()

    def _meant_for_me(self, msg: Msg) -> bool:
        """A dead letter replayed into a shared input subject is meant for one node
        (:data:`HDR_REPLAY_TO`); the other readers of the subject let it pass."""
        target = msg.headers.get(HDR_REPLAY_TO) if msg.headers else None
        return target is None or target == self.node

    def _took(self, port: str, msg: Msg, taken: int, elapsed: float) -> None:
        """One input message is handled: split ``in`` by port, time it, count replays."""
        if not taken:
            return
        counters = self.counters
        counters.taken(port, taken)
        counters.latency.observe(elapsed, taken)
        if msg.headers and HDR_REPLAY_TO in msg.headers:
            counters.replayed += taken

    async def _retry(self, comp: Any, port: str, msg: Msg, index: int, event: Any,
                     exc: Exception) -> None:
        """An event failed: one that may pass on a retry (:func:`retryable`) is tried
        again in place (the other events of its frame are not repeated), then
        dead-lettered; any other failure is final at once."""
        def unstored(e: Exception) -> bool:
            return isinstance(e, PublishFailed) and self._floors is not None

        last = await retry_in_place(
            comp, port, event, exc,
            going_on=lambda e: self.component is not None and not unstored(e),
            between=lambda: self._still_working(port, msg))
        if last is None:
            return
        if unstored(last):
            self._state_broken = f"outputs not stored ({last}): restarting from the commit"
            return  # not the event's fault: taken again from the last commit
        await self._failed_event(port, msg, index, event, last)
