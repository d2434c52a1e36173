"""Source positions kept with what the stream has acknowledged: :class:`SourceCheckpoint`.

A source of an at-least-once flow says how far it got with ``ctx.advance(position)``
("everything I emitted so far is covered by this position": ``generate``'s next sequence,
``file``'s byte offset, any JSON value for a third-party source) and asks where to resume
with ``await ctx.resume_position()``. The runtime writes a position to the
``flowctl_checkpoints`` bucket (key ``<flow>.<node>.<replica>``, one line of JSON) only
once every event emitted before it is stored in the flow's stream, every
:data:`CHECKPOINT_EVERY_S`; so a source restarted by failover, a crash or a stop resumes
after what was stored and loses nothing, repeating at most what was stored in the last
interval before it died. A finished source's checkpoint says ``completed``: it stays
completed across restarts and failover. A checkpoint of another config (the source's
``type`` or ``config`` changed) is ignored: the source starts over. Undeploy removes them.

A source restarted on the same agent (its replica failed, e.g. a task died while NATS was
away) resumes from what its last run knew was stored (:class:`StoredMark`) when that is
newer than the bucket's checkpoint (whose writes may have failed meanwhile, e.g. while a
cluster elected the bucket's leader): it repeats nothing the stream acknowledged. A
source whose positions cannot be written for :data:`CHECKPOINT_LAG_S` pauses until they
are, so a failover to another agent repeats at most that much.

Positions are exact for a source with one output port (events leave in emit order); a
source that emits on several ports gets them per emit order of messages, which frames
may reorder across ports.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from flowstore.models import ComponentConfig, utcnow
from flowstore.nats import CHECKPOINTS_BUCKET, open_bucket

#: How often a stored position is written.
CHECKPOINT_EVERY_S = 0.2
#: A source whose stored position could not be written for this long waits until it is
#: (a failover meanwhile would repeat everything since the last write: this bounds it).
CHECKPOINT_LAG_S = 2.0
_NOTHING = object()


def config_fingerprint(cfg: ComponentConfig) -> str:
    """What a position is relative to: the source's type and config."""
    body = json.dumps({"type": cfg.type, "config": cfg.config}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class StoredMark:
    """A position and the events (over every run) surely stored up to it."""

    position: Any
    events: int
    completed: bool = False


class SourceCheckpoint:
    """The checkpoint of one source replica (see the module doc)."""

    def __init__(self, nc: Any, cfg: ComponentConfig, replica: int,
                 stored_events: Callable[[], int]) -> None:
        self.nc = nc
        self.key = f"{cfg.flow}.{cfg.node}.{replica}"
        self.fingerprint = config_fingerprint(cfg)
        self._stored_events = stored_events
        self._marks: collections.deque[tuple[int, Any]] = collections.deque()
        self._written: Any = _NOTHING
        self._last: Any = None  # the latest position advanced to (or loaded)
        self._kv: Any = None
        self.position: Any = None
        self.completed = False
        self.events_before = 0  # events stored by earlier runs of this source
        #: exactly-once: the epoch of the source's event ids (kept with the position)
        self.epoch: str | None = None
        self._stored: StoredMark | None = None
        self._unwritten_since: float | None = None  # writes of a stored position failing
        self._writing = asyncio.Lock()

    async def load(self, carried: StoredMark | None = None) -> None:
        """Read the checkpoint (a missing, junk or foreign one means: from the start);
        ``carried``, what an earlier run on this agent knew was stored, wins when newer."""
        self._kv = await open_bucket(self.nc, CHECKPOINTS_BUCKET)  # the engine made it
        try:
            entry = await self._kv.get(self.key)
            data = json.loads(entry.value or b"")
        except Exception:
            data = None
        if isinstance(data, dict) and data.get("config") == self.fingerprint:
            self.position = data.get("position")
            self.completed = bool(data.get("completed"))
            self.events_before = int(data.get("events") or 0)
            self.epoch = data.get("epoch")
            self._last = self.position
            self._written = (self.position, self.completed)
        if carried is not None and not self.completed and (
                carried.completed or carried.events > self.events_before):
            self.position = self._last = carried.position
            self.events_before, self.completed = carried.events, carried.completed
            self._stored = StoredMark(carried.position, carried.events)  # written by the
            # next flush (a completion too: the bucket may have missed it)

    async def keep_epoch(self, epoch: str) -> None:
        """Exactly-once: the epoch of the source's ids is written before its first event
        (a crash before any position was written must not renumber what was stored)."""
        fresh = self.epoch != epoch
        self.epoch = epoch
        if fresh:
            await self._write(StoredMark(self._last, self.events_before))

    def stored_mark(self) -> StoredMark | None:
        """The newest position surely stored (written to the bucket or not)."""
        self._note_stored()
        if self._stored is None:
            return None
        return dataclasses.replace(self._stored, completed=self.completed)

    def advance(self, emitted_events: int, position: Any) -> None:
        """The first ``emitted_events`` events of this run are covered by ``position``."""
        self._last = position
        if self._marks and self._marks[-1][0] == emitted_events:
            self._marks[-1] = (emitted_events, position)
        else:
            self._marks.append((emitted_events, position))

    def _note_stored(self) -> None:
        """Move ``_stored`` to the newest position whose events the stream acknowledged."""
        stored = self._stored_events()
        while self._marks and self._marks[0][0] <= stored:
            events, position = self._marks.popleft()
            self._stored = StoredMark(position, self.events_before + events)

    async def _write(self, mark: StoredMark) -> None:
        completed = self.completed
        value = {"position": mark.position, "events": mark.events, "completed": completed,
                 "config": self.fingerprint, "updated_at": utcnow()}
        if self.epoch is not None:
            value["epoch"] = self.epoch
        async with self._writing:  # one at a time: an older one never lands last
            await self._kv.put(self.key, json.dumps(value, separators=(",", ":")).encode())
        self._written = (mark.position, completed)

    async def run(self) -> None:
        """Write the latest stored position every :data:`CHECKPOINT_EVERY_S`."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            await self.flush()

    async def flush(self) -> None:
        self._note_stored()
        mark = self._stored
        if mark is not None and (mark.position, self.completed) != self._written:
            try:
                await self._write(mark)
            except Exception:  # the next interval tries again
                self._unwritten_since = self._unwritten_since or time.monotonic()
                return
        self._unwritten_since = None

    def too_far_behind(self) -> bool:
        """Stored positions have failed to be written for over :data:`CHECKPOINT_LAG_S`."""
        since = self._unwritten_since
        return since is not None and time.monotonic() - since > CHECKPOINT_LAG_S

    async def catch_up(self) -> None:
        """Wait until the stored position is written (the source pauses meanwhile)."""
        while self.too_far_behind():
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            await self.flush()

    async def complete(self, events: int) -> None:
        """Everything was emitted and stored: the source is done for good (written now,
        or by a later flush if the bucket does not answer now)."""
        self._marks.clear()
        self.completed = True
        self._stored = StoredMark(self._last, self.events_before + events)
        await self.flush()
