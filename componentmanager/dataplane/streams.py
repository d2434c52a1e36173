"""JetStream plumbing of at-least-once flows, seen from a replica: publishing with
pipelined acks and backpressure (:class:`AckedPublisher`); pulling is
:mod:`componentmanager.dataplane.pull`.

The flow's stream and consumers are defined in :mod:`flowstore.streams` (the engine creates
them at deploy). Inputs are acked only after the outputs they caused are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from componentmanager.dataplane.wire import fit_dead_letter
from flowstore.streams import DEFAULT_ACK_WAIT_S, DEFAULT_MAX_DELIVER

__all__ = [
    "ACK_WINDOW", "DEFAULT_ACK_WAIT_S", "DEFAULT_MAX_DELIVER", "AckedPublisher", "PublishFailed",
    "store_dead_letter",
]

log = structlog.get_logger("flowctl.streams")

#: At most this many published messages (frames) may wait for their JetStream ack.
ACK_WINDOW = 256
#: A publisher that hears no ack at all for this long gives up (NATS is not answering).
ACK_SILENCE_S = 10.0
#: A source publishes only while its flow's stream is at most this full.
SOURCE_SHARE = 0.5
#: A publish nobody answered (no stream leader right now, e.g. while a cluster elects
#: one after losing a node) is tried again this often, about 20 s in all, before the
#: stream counts as missing.
NO_RESPONDERS_TRIES = 15


class PublishFailed(Exception):
    pass


async def store_dead_letter(nc: NatsClient, subject: str, data: bytes,
                            headers: dict[str, str], confirmed: bool) -> None:
    """Publish a dead letter (FLOWCTL_DLQ keeps it), as a preview when it would not fit
    beside its headers; ``confirmed``: wait for the stream's ack (at-least-once). Raises
    when it was not taken."""
    data, headers = fit_dead_letter(data, headers, nc.max_payload or 1 << 20)
    if confirmed:
        await nc.jetstream().publish(subject, data, headers=headers)
    else:
        await nc.publish(subject, data, headers=headers)


def _stream_full(reply: bytes) -> bool:
    """A PubAck error that means "the stream is at its limit": publish again later."""
    return b"maximum" in reply and b"exceeded" in reply


class AckedPublisher:
    """Publish to JetStream without a round trip per message, with backpressure.

    Every message goes out with its own reply subject; one subscription takes the PubAcks.
    A message the stream refuses because it is full (the flow's ``buffer``), or that
    nobody answered (a cluster electing the stream's leader), is published again after a
    short, growing pause, so a fast producer waits for a slow consumer
    instead of losing events or growing the stream. At most :data:`ACK_WINDOW` messages
    are in flight: ``publish`` waits for room. ``wait()`` returns when every message
    published so far is stored; it raises :class:`PublishFailed` on any other error, or
    when no ack at all arrived for :data:`ACK_SILENCE_S` (then the publisher moves to a
    new generation of reply subjects: late acks of abandoned messages are ignored; a
    ``publish`` that meets the silence abandons what is pending without raising, and the
    next ``wait()`` raises, so every input processed meanwhile is delivered again). A
    source's publisher never gives up: after such a silence it publishes what is unacked
    again (see :meth:`_resend_all`), and a message the stream refuses for any reason is
    published again after a pause of up to 2 s until it is stored (``refused`` says
    why meanwhile; the source waits once :data:`ACK_WINDOW` messages are pending), so its
    checkpoint never passes an event that is not stored. :meth:`stored_events` tells how
    many of the events published so far, in order, are surely stored.

    ``strict`` (exactly-once): once a message was given up every later ``publish``
    raises :class:`PublishFailed`: the replica restarts from its last commit and emits
    again, under the same ids, everything after it.
    """

    def __init__(self, nc: NatsClient, source_of: str | None = None,
                 strict: bool = False) -> None:
        self.nc = nc
        self._strict = strict
        self._source_of = source_of  # a source's stream: it leaves headroom (see _headroom)
        self._room = 0  # bytes a source may still publish before it looks again
        self._base = nc.new_inbox()
        self._generation = 0
        self._n = 0
        self._pending: dict[int, tuple[str, bytes, dict[str, str], int]] = {}
        self.error: str | None = None
        self.full_since: float | None = None  # the stream refused us as full since then
        self._progress = time.monotonic()
        self._changed = asyncio.Event()
        self._retries: set[asyncio.Future[None]] = set()
        self._sub: Any = None
        self._published_events = 0
        self.given_up = 0  # messages refused or abandoned (their inputs must be redone)
        self.refused: str | None = None  # a source's: why its oldest retry is refused
        self._closed = False
        self._events_before: dict[int, int] = {}  # pending message -> events published before it
        self._acked_up_to = 0  # the newest message acked
        self._overtaken: set[int] = set()  # pending, older than an acked one, at the last look
        self._overtaken_at = 0.0

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    async def open(self) -> AckedPublisher:
        self._sub = await self.nc.subscribe(f"{self._base}.>", cb=self._on_ack)
        return self

    def _reply(self, n: int) -> str:
        return f"{self._base}.{self._generation}.{n}"

    def stored_events(self) -> int:
        """How many of the events published so far (in order) are surely stored."""
        if not self._pending:
            return self._published_events
        return self._events_before[min(self._pending)]

    async def publish(self, subject: str, body: bytes, headers: dict[str, str],
                      count: int = 1) -> None:
        while len(self._pending) >= ACK_WINDOW:
            await self._wait_change()
        if self._strict and self.given_up:
            raise PublishFailed(f"an earlier output was not stored ({self.error or 'given up'})")
        if self._source_of is not None:
            if self._room <= len(body):
                await self._headroom()
            self._room -= len(body)
        self._n += 1
        self._pending[self._n] = (subject, body, headers, 0)
        self._events_before[self._n] = self._published_events
        self._published_events += count
        await self.nc.publish(subject, body, reply=self._reply(self._n), headers=headers)

    async def _headroom(self) -> None:
        """A source waits while the stream is more than :data:`SOURCE_SHARE` full, so the
        stages downstream always have room for their outputs (one byte limit is shared
        by every stage of a flow: a source that filled it would leave them unable to
        emit, and their inputs would be delivered again). What it published that is not
        stored yet counts against its share. It looks at the stream again once it has
        published what was left of its share when it last looked."""
        js = self.nc.jetstream()
        while True:
            try:
                info = await js.stream_info(self._source_of)
            except Exception:
                self._room = 2**20  # cannot tell: the stream's own limit still holds
                return
            limit = info.config.max_bytes or 0
            if limit <= 0:
                self._room = 2**62
                return
            in_flight = sum(len(entry[1]) for entry in self._pending.values())  # not stored yet
            room = int(SOURCE_SHARE * limit) - info.state.bytes - in_flight
            if room > 0:
                self._room = max(room, 1)
                return
            self.full_since = self.full_since or time.monotonic()
            await asyncio.sleep(0.05)

    async def _on_ack(self, msg: Msg) -> None:
        _, gen, n = msg.subject.rsplit(".", 2)
        entry = self._pending.get(int(n)) if int(gen) == self._generation else None
        if entry is None:
            return  # an ack of an abandoned generation, or a duplicate
        self._progress = time.monotonic()
        data = msg.data
        if data and b'"error"' in data:
            if _stream_full(data):
                self.full_since = self.full_since or self._progress
                self._again(int(n), entry, 0.02, 1.0)
                return
            why = msgspec.json.decode(data).get("error", {}).get("description", "error")
            if self._source_of is not None:  # never past an event that is not stored
                self._refused(why)
                self._again(int(n), entry, 0.05, 2.0)
                return
            self.error = why
            self.given_up += 1
        elif not data:  # no responders: a cluster electing the stream's leader, or gone
            tries = entry[3]
            if tries < NO_RESPONDERS_TRIES or self._source_of is not None:
                if tries >= NO_RESPONDERS_TRIES:
                    self._refused("no responders (the flow's stream is missing or has no "
                                  "leader)")
                self._again(int(n), entry, 0.05, 2.0)  # the same Nats-Msg-Id: stored once
                return
            self.error = "no responders (the flow's stream is missing: deploy it again)"
            self.given_up += 1
        else:
            self.full_since = None
            if self.refused is not None:
                log.warning("the stream stores a source's events again", stream=self._source_of)
                self.refused = None
        del self._pending[int(n)]
        self._events_before.pop(int(n), None)
        self._acked_up_to = max(self._acked_up_to, int(n))
        self._changed.set()

    def _again(self, n: int, entry: tuple[str, bytes, dict[str, str], int], first: float,
               most: float) -> None:
        """Publish message ``n`` again after a pause growing from ``first`` to ``most``."""
        subject, body, headers, tries = entry
        self._pending[n] = (subject, body, headers, tries + 1)
        delay = min(first * 2 ** min(tries, 20), most)
        asyncio.get_running_loop().call_later(delay, self._republish, n, self._generation)

    def _refused(self, why: str) -> None:
        if self.refused is None:  # once per spell, not per retry
            log.warning("the stream refuses a source's events; publishing them again until "
                        "it stores them", stream=self._source_of, reason=why)
        self.refused = why

    def _republish(self, n: int, generation: int) -> None:
        entry = self._pending.get(n)
        if entry is None or generation != self._generation or self.nc.is_closed or self._closed:
            return
        subject, body, headers, _ = entry
        task = asyncio.ensure_future(self.nc.publish(subject, body, reply=self._reply(n),
                                                     headers=headers))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _wait_change(self) -> None:
        self._changed.clear()
        try:
            async with asyncio.timeout(1.0):
                await self._changed.wait()
        except TimeoutError:
            pass
        if self._closed:  # a stop gave up on what is pending (bounded)
            raise PublishFailed("the publisher is closed")
        if self._source_of is not None:
            self._resend_overtaken()
        if self._pending and time.monotonic() - self._progress > ACK_SILENCE_S:
            if self._source_of is not None:  # a source has no input to be redelivered:
                self._resend_all()          # publish again; the stream drops duplicates
                return
            self._abandon(f"no JetStream ack for {ACK_SILENCE_S:g} s")

    def _resend_overtaken(self) -> None:
        """A source's message still unacked a second after a later one was acked was lost
        with a connection (the stream stores one publisher's messages in order): publish
        it again now (stored once, by its id) instead of after :data:`ACK_SILENCE_S`."""
        now = time.monotonic()
        if now - self._overtaken_at < 1.0:
            return
        self._overtaken_at = now
        overtaken = {n for n, entry in self._pending.items()
                     if n < self._acked_up_to and entry[3] == 0}  # (not a full stream's retry)
        for n in sorted(overtaken & self._overtaken):
            self._republish(n, self._generation)
        self._overtaken = overtaken

    def _abandon(self, why: str) -> None:
        """Give up on every pending message: the next ``wait()`` raises ``why``, so the
        inputs behind them (and any processed since) are delivered again, never acked."""
        self.given_up += len(self._pending)
        self._generation += 1
        self._pending.clear()
        self._events_before.clear()
        self.error = why
        self.full_since = None

    def _resend_all(self) -> None:
        """Publish every unacknowledged message again under a new generation (acks of the
        old one are ignored). Each carries its ``Nats-Msg-Id``: what the stream already
        stored is dropped as a duplicate, so a publish retried after a lost ack is
        stored once."""
        self._generation += 1
        self._progress = time.monotonic()
        for n in sorted(self._pending):
            self._republish(n, self._generation)

    async def wait(self) -> None:
        """Return when everything published so far is stored (see the class doc)."""
        if self._pending:
            with contextlib.suppress(Exception):  # a silent server is judged below
                await self.nc.flush(timeout=ACK_SILENCE_S / 2)
            self._progress = max(self._progress, time.monotonic() - ACK_SILENCE_S / 2)
        while self._pending:
            await self._wait_change()
        if self.error is not None:
            error, self.error = self.error, None
            raise PublishFailed(error)

    async def close(self) -> None:
        """No more publishing or retrying (what is pending stays as it is: a source's
        checkpoint is before it); a ``publish``/``wait`` blocked on the window raises."""
        self._closed = True
        self._changed.set()
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
