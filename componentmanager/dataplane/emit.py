"""Adaptive framing of what a replica emits: :class:`Outbox`.

``put`` adds an encoded event to its subject's pending frame. The frame goes out at once
when it is full (:data:`~.wire.FRAME_EVENTS` events or :data:`~.wire.FRAME_BYTES`; an
event that would take it past that goes into the next frame, so a frame is never larger
than the larger of FRAME_BYTES and one event), or
when the subject's readers take only single events. Otherwise: while an input message
is being handled (:meth:`Outbox.handling`), at its end, so one input frame makes one
output frame; else (a source, a timer) the replica's flusher sends it as soon as the
emitting code gives the event loop a turn (a linger of zero). So a lone event leaves
immediately on an idle link, and under load events coalesce into frames without any
timer: latency stays low at low rates, throughput rises at high ones. One exception: a
keyed reader's partition gets a share of each frame, so there the flusher sends partial
frames at most every :data:`PARTITION_LINGER_S` (see :func:`partition_linger`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from componentmanager.dataplane.wire import FRAME_BYTES, FRAME_EVENTS, EventIds
from flowstore.names import HDR_AFTER

Publish = Callable[[str, bytes, dict[str, str], int], Awaitable[None]]

#: Partial frames of keyed readers' partitions wait at most this long for more events
#: when the flusher sent some lately (a busy source), so each carries more than a share.
PARTITION_LINGER_S = 0.01


def partition_linger(since_flush: float, partial: bool) -> float:
    """How long the flusher waits before it sends, ``since_flush`` seconds after its last
    send: a while when partial partition frames are pending and it sent less than
    :data:`PARTITION_LINGER_S` ago (events keep coming), else not at all (a lone event
    leaves at once)."""
    if not partial or since_flush >= PARTITION_LINGER_S:
        return 0.0
    return PARTITION_LINGER_S - since_flush


class Outbox:
    """Pending frames per subject; ``publish(subject, body, headers, count)`` sends one."""

    def __init__(self, ids: EventIds, publish: Publish, framed: set[str],
                 partitions: frozenset[str] = frozenset()) -> None:
        self._ids = ids
        self._publish = publish
        self._framed = framed  # subjects whose readers all take frames
        #: keyed readers' partitions: each message says the last event sent there before
        #: (:data:`HDR_AFTER`), so its reader knows the numbers between went elsewhere
        self._partitions = partitions
        self._last_on: dict[str, int] = {}
        self._frames: dict[str, list[bytes]] = {}
        self._sizes: dict[str, int] = {}
        self._counts: dict[str, int] = {}  # events in each pending frame
        self._wake = asyncio.Event()
        self._one_input = asyncio.Lock()  # held while an input message is handled
        self._origin: str | None = None
        self._sent: dict[str, int] = {}
        self._sending = 0  # frames taken out of _frames whose publish has not returned
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ids(self) -> EventIds:
        """The ids this outbox gives (exactly-once: numbered on from a commit)."""
        return self._ids

    def also_framed(self, subject: str) -> None:
        """``subject``'s readers all take frames too (an output of a fused node)."""
        self._framed.add(subject)

    @property
    def pending(self) -> int:
        return sum(self._counts.values())

    async def put(self, subject: str, body: bytes) -> None:
        """One encoded event."""
        if subject not in self._framed:
            await self._publish(subject, body, self._ids.header(1), 1)
            return
        await self._add(subject, body, 1)

    async def put_lines(self, subject: str, lines: bytes, count: int) -> None:
        """``count`` encoded events as JSON lines (at most a frame's worth): they travel
        together, in one frame."""
        if subject not in self._framed:
            for line in lines.split(b"\n"):
                await self.put(subject, line)
            return
        await self._add(subject, lines, count)

    def room(self, subject: str) -> int:
        """How many more events the pending frame of ``subject`` takes (by count)."""
        return FRAME_EVENTS - self._counts.get(subject, 0)

    async def put_alone(self, subject: str, body: bytes, extra: dict[str, str]) -> None:
        """One encoded event in a message of its own, with ``extra`` headers, after what
        is pending for the subject (order kept)."""
        await self._send(subject)
        await self._send_frame(subject, [body], 1, extra)

    async def _add(self, subject: str, chunk: bytes, count: int) -> None:
        frame = self._frames.get(subject)
        if frame and (self._sizes[subject] + len(chunk) + 1 > FRAME_BYTES
                      or self._counts[subject] + count > FRAME_EVENTS):
            await self._send(subject)  # a frame never outgrows its bounds with a big event
            frame = None
        if frame is None:
            frame = self._frames[subject] = []
            self._sizes[subject] = self._counts[subject] = 0
        frame.append(chunk)
        self._sizes[subject] += len(chunk) + 1
        self._counts[subject] += count
        if self._counts[subject] >= FRAME_EVENTS or self._sizes[subject] >= FRAME_BYTES:
            await self._send(subject)
        elif not self._one_input.locked():
            self._wake.set()

    @contextlib.asynccontextmanager
    async def handling(self, origin: str | None = None) -> AsyncIterator[None]:
        """Around the handling of one input message: what it emits leaves at its end.

        ``origin`` (the input's stream sequence, for components that emit the same for
        the same input) gives every output message a ``Nats-Msg-Id`` of
        ``<subject>:<origin>:<k>``: when the input is delivered again (its ack was lost),
        the stream stores the outputs once."""
        async with self._one_input:  # never two at once: ids and frames are of one input
            self._origin, self._sent = origin, {}
            try:
                yield
            except BaseException:
                if origin is not None:  # delivered again: what it left here must not go
                    self.discard()      # out under ids its redelivery will use
                raise
            await self.flush()
            self._origin = None

    def discard(self) -> None:
        """Drop the pending frames (an input whose handling stopped halfway: it is
        delivered again, and a partial frame under its ids would hide the full one)."""
        self._frames.clear()
        self._sizes.clear()
        self._counts.clear()

    async def _send(self, subject: str) -> None:
        frame = self._frames.pop(subject, None)
        self._sizes.pop(subject, None)
        count = self._counts.pop(subject, 0)
        await self._send_frame(subject, frame, count)

    async def _send_frame(self, subject: str, frame: list[bytes] | None, count: int,
                          extra: dict[str, str] | None = None) -> None:
        if frame:
            body = frame[0] if len(frame) == 1 else b"\n".join(frame)
            headers = self._ids.header(count)
            if subject in self._partitions:
                before = self._last_on.get(subject)
                if before is not None:
                    headers[HDR_AFTER] = str(before)
                self._last_on[subject] = self._ids.emitted
            if extra:
                headers.update(extra)
            if self._origin is not None:
                k = self._sent[subject] = self._sent.get(subject, -1) + 1
                headers["Nats-Msg-Id"] = f"{subject}:{self._origin}:{k}"
            self._sending += 1
            self._idle.clear()
            try:
                await self._publish(subject, body, headers, count)
            finally:
                self._sending -= 1
                if not self._sending:
                    self._idle.set()

    async def flush(self) -> None:
        """Send every pending frame now, and wait for the sends already under way (the
        flusher's, waiting for room in the stream): after ``flush`` every event put
        before it is with the publisher, so its ``wait()`` covers them."""
        self._wake.clear()
        for subject in list(self._frames):
            await self._send(subject)
        await self._idle.wait()

    async def run_flusher(self) -> None:
        """The replica's flusher task: sends pending frames whenever the loop turns (a
        partition's partial frames after a short linger: see :func:`partition_linger`)."""
        loop = asyncio.get_running_loop()
        flushed = 0.0
        while True:
            await self._wake.wait()
            if self._one_input.locked():  # the input being handled sends all at its end
                self._wake.clear()
                continue
            partial = any(s in self._partitions for s in self._frames)
            linger = partition_linger(loop.time() - flushed, partial)
            if linger:
                await asyncio.sleep(linger)  # full frames leave meanwhile (see _add)
                if self._one_input.locked():
                    continue
            await self.flush()
            flushed = loop.time()
