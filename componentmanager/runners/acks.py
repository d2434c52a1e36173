"""How an at-least-once replica settles its inputs: acks once outputs are stored.

An input message is acked once every output it caused is stored by the stream and, for
a buffering component (``held()``), flushed (:meth:`InputAcks._settle`); inputs whose
outputs could not be stored are nak'ed for redelivery. A message delivered again after
its ack was lost is recognised (:class:`DoneInputs`) and acked again, not processed
twice.

The consumers' ack wait is short (:data:`~flowstore.streams.DEFAULT_ACK_WAIT_S`), so
that what a dead replica had in hand is delivered again soon after it died. A live
replica therefore keeps what it has in hand alive: the message being handled and those
waiting for their ack are reported in progress every :data:`PROGRESS_EVERY_S`
(the puller and :meth:`InputAcks.keep_in_hand_alive`), however long a slow function, a
slow sink or a buffering component holds them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import structlog
from nats.aio.msg import Msg

from componentmanager.dataplane import DEFAULT_ACK_WAIT_S, PublishFailed
from componentmanager.dataplane.wire import message_identity

log = structlog.get_logger("flowctl.replica")

#: Inputs held unacked by a buffering component before it is flushed (keep below the
#: consumer's max_ack_pending) and how long they may wait (they are kept alive meanwhile:
#: :meth:`InputAcks.keep_in_hand_alive`).
HOLD_MAX = 500
HOLD_AGE_S = 5.0
#: How many acked stream sequences a replica remembers (a redelivery of one is acked
#: again without being processed twice).
DONE_REMEMBERED = 65536
#: An input in hand this long is reported in progress (resets its ack wait).
PROGRESS_EVERY_S = DEFAULT_ACK_WAIT_S / 4


class DoneInputs:
    """The input messages a replica acked lately, by :func:`message_identity` (bounded,
    oldest forgotten first): one delivered again after its ack was lost, or stored twice
    after its producer's publish ack was lost, is acked again, not processed twice."""

    def __init__(self, size: int = DONE_REMEMBERED) -> None:
        self._order: collections.deque[str] = collections.deque(maxlen=size)
        self._set: set[str] = set()

    def remember(self, ident: str | None) -> None:
        if ident is None:
            return
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(ident)
        self._set.add(ident)

    def __contains__(self, ident: str) -> bool:
        return ident in self._set


class InputAcks:
    """Acking, nak'ing and in-progress reports of a replica's pulled inputs (a mixin of
    :class:`~componentmanager.runners.delivery.InputDelivery`)."""

    # provided by the replica
    component: Any
    counters: Any
    host: Any
    key: str
    last_error: str | None
    _publisher: Any
    _outbox: Any
    _unacked: list[Msg]
    _unacked_since: float | None
    _settling: asyncio.Lock
    _progress_at: dict[str, float]
    _done: DoneInputs
    _handled: set[str]
    _in_hand: set[str]
    _state: Any
    _flush_chain: Any  # (FusedFeed's: a chain's sinks flushed, whether all is written)
    #: Output failures so far: an input being handled when one happened may have lost
    #: outputs in it, so it is delivered again too (see delivery's _taken_or_again).
    _failures = 0

    async def _ack_again(self, msg: Msg, counted: bool = True) -> None:
        if not counted:
            with contextlib.suppress(Exception):
                await msg.ack()
            return
        self.counters.redelivered += 1
        if self.host.throttle.admit(("redelivered", self.key)):
            log.info("inputs delivered again after their ack was lost: acked again, not "
                     "processed twice", replica=self.key)
        with contextlib.suppress(Exception):
            await msg.ack()

    async def _still_working(self, port: str, msg: Msg) -> None:
        """A frame handled for long (slow code, retries) tells the server it is still being
        worked on, so it is not delivered again to another replica after the ack wait."""
        now = asyncio.get_running_loop().time()
        if msg.reply and now - self._progress_at.get(port, now) >= PROGRESS_EVERY_S:
            self._progress_at[port] = now
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def keep_in_hand_alive(self) -> None:
        """Every :data:`PROGRESS_EVERY_S`: the inputs waiting for their ack for half the
        ack wait (held by a buffering component, outputs not stored yet) are reported in
        progress (their ack wait starts again), so a live replica's inputs are never
        delivered again elsewhere. (The one being handled is kept alive by its
        :class:`~componentmanager.dataplane.pull.Puller`.)"""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            since = self._unacked_since
            if since is None or loop.time() - since < DEFAULT_ACK_WAIT_S / 2:
                continue
            for msg in list(self._unacked):
                if msg.reply:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _settle(self, force: bool = False) -> None:
        """Ack processed inputs once their outputs are stored and nothing of them is held.

        A component holding inputs (``held()``) keeps them unacked until it emits or
        flushes; when too many (HOLD_MAX) or too old (HOLD_AGE_S) wait, it is flushed.
        If the outputs cannot be stored, the inputs are nak'ed for redelivery. A stateful
        component's inputs are acked once they are in its checkpoint instead
        (:meth:`~componentmanager.runners.stateful.KeyedInputs._settle_stateful`).
        """
        await self._check_catch_up()
        if self._state is not None:
            await self._settle_stateful(force)
            return
        comp, publisher = self.component, self._publisher
        if comp is None or publisher is None:
            return
        async with self._settling:
            if not self._unacked:
                return
            age = asyncio.get_running_loop().time() - (self._unacked_since or 0.0)
            if comp.held() and (force or len(self._unacked) >= HOLD_MAX or age >= HOLD_AGE_S
                                or getattr(comp, "flush_when_idle", False)):
                await self._flush_held(comp)  # (settled between requests and when idle)
            try:
                if not await self._flush_chain():  # (a chain's sinks: written first)
                    raise PublishFailed("a fused sink lost what it buffered")
                await self._outbox.flush()
                await publisher.wait()
            except PublishFailed as exc:
                log.warning("outputs not stored; redelivery", replica=self.key, error=str(exc))
                batch, self._unacked, self._unacked_since = self._unacked, [], None
                self._failures += 1
                await self._nak_all(batch)
                return
            if comp.held():
                return  # still buffered: acked after a later emit or flush
            batch, self._unacked, self._unacked_since = self._unacked, [], None
            await self._ack_all(batch)

    async def _flush_held(self, comp: Any) -> None:
        """Flush what a component holds; a failure is counted and shown, not raised."""
        try:
            await comp.flush()
        except Exception as exc:
            self.counters.errors += 1
            self.last_error = f"flush: {exc}"

    def _settle_at_teardown(self, effects_kept: bool) -> None:
        """The replica stops (or restarts) with inputs processed but not acked (NATS was
        unreachable). When their effects are kept (the component flushed and stopped, every
        output is stored), their redelivery is only acked again: a sink's file already
        has them. Otherwise they are processed again when delivered again (a repeat, never
        a loss: nothing of them is remembered as handled). A stateful replica's are always
        taken again: its state is restored from a checkpoint that may predate them."""
        if effects_kept and self._state is None:
            for msg in self._unacked:
                self._done.remember(message_identity(msg.headers, msg.reply))
        self._unacked, self._unacked_since = [], None
        self._handled.clear()  # whatever was in hand is delivered again and taken anew
        self._in_hand.clear()

    async def _nak_all(self, batch: list[Msg]) -> None:
        """Inputs whose outputs could not be stored: delivered again shortly."""
        for msg in batch:
            self._handled.discard(message_identity(msg.headers, msg.reply))
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _ack_all(self, batch: list[Msg]) -> None:
        for msg in batch:
            with contextlib.suppress(Exception):
                await msg.ack()
            ident = message_identity(msg.headers, msg.reply)
            self._done.remember(ident)
            self._handled.discard(ident)
