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
completed across restarts and failover. Undeploy removes them.

A position is relative to *what the source reads* (:func:`position_identity`): its type,
the config fields its class lists in ``Component.position_fields`` (all of its config when
it lists none) and the node's ``reset`` token (``flowctl apply --reset NODE`` writes a new
one). A config change that keeps them (a ``generate``'s ``count`` or ``rate``, a ``file``'s
``format``) keeps the position, its event count and (exactly-once) the epoch of its event
ids: the source goes on from there, and a completed one runs again from its position
(``count: 10`` -> ``20`` emits 10 more; back to ``10`` emits nothing). A change of what it
reads (a ``file``'s ``path``, a ``nats`` subject) or a reset starts it over
(:func:`resume_decision`). What each built-in source reads:

* ``generate``: ``template`` (its sequence; ``count`` and ``rate`` only end and pace it)
* ``file``: ``path`` (``format``, ``follow``, ``poll_interval`` read it differently)
* ``nats``: ``subject`` (no position: a subscription has no replay; its event count and
  exactly-once epoch continue)
* ``http``: ``host``, ``port``, ``path`` (no position, as ``nats``)
* ``mqtt``: ``url``, ``topic``, ``client_id`` (the broker's session)
* ``sql``: ``url``, ``table``, ``query``, ``cursor``

A source restarted on the same agent (its replica failed, e.g. a task died while NATS was
away) resumes from what its last run knew was stored (:class:`StoredMark`) when that is
newer than the bucket's checkpoint (whose writes may have failed meanwhile, e.g. while a
cluster elected the bucket's leader): it repeats nothing the stream acknowledged. A
source whose positions cannot be written for :data:`CHECKPOINT_LAG_S` pauses until they
are, so a failover to another agent repeats at most that much.

A source running fused with the processors and sinks after it (:mod:`flowengine.plan`)
counts the chain's published outputs as its events, and a position is stored only after
the chain's sinks were flushed (``seal``): when they could not be, or an event was not
handed on, no later position is stored and the replica fails, to resume from the last
one stored.

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
from collections.abc import Awaitable, Callable
from typing import Any

from flowstore.models import ComponentConfig, utcnow
from flowstore.nats import CHECKPOINTS_BUCKET, open_bucket

#: How often a stored position is written.
CHECKPOINT_EVERY_S = 0.2
#: A source whose stored position could not be written for this long waits until it is
#: (a failover meanwhile would repeat everything since the last write: this bounds it).
CHECKPOINT_LAG_S = 2.0
_NOTHING = object()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def config_fingerprint(cfg: ComponentConfig) -> str:
    """The node's type, config and reset token (a stateful node's state is relative to
    it; a source's ``completed`` holds for it alone)."""
    body: dict[str, Any] = {"type": cfg.type, "config": cfg.config}
    if cfg.reset is not None:
        body["reset"] = cfg.reset
    return _digest(body)


def position_identity(cfg: ComponentConfig, fields: tuple[str, ...] | None) -> str:
    """What a source's position is relative to: its type, the config ``fields`` naming
    what it reads (None: the whole config) and its reset token."""
    config = cfg.config if fields is None else {f: cfg.config.get(f) for f in fields}
    return _digest({"type": cfg.type, "reads": config, "reset": cfg.reset})


@dataclasses.dataclass(frozen=True)
class Resume:
    """What a source takes over from a stored checkpoint (see :func:`resume_decision`)."""

    position: Any = None
    events: int = 0
    epoch: str | None = None
    completed: bool = False
    counted: int = 0  # exactly-once: events counted under earlier epochs


def resume_decision(record: Any, identity: str, fingerprint: str) -> Resume | None:
    """The part of a stored checkpoint a source with this identity and config fingerprint
    keeps: its position, event count and epoch when it read the same thing (a record
    written before identities were kept: the same config), ``completed`` only under the
    same config; None (start over) for another identity, a missing or a junk record."""
    if not isinstance(record, dict):
        return None
    same_config = record.get("config") == fingerprint
    same_reads = record.get("reads") == identity if "reads" in record else same_config
    if not same_reads:
        return None
    try:
        events, counted = int(record.get("events") or 0), int(record.get("counted") or 0)
    except (TypeError, ValueError):
        return None
    epoch = record.get("epoch")
    return Resume(record.get("position"), events, epoch if isinstance(epoch, str) else None,
                  same_config and bool(record.get("completed")), counted)


@dataclasses.dataclass(frozen=True)
class StoredMark:
    """A position and the events (over every run) surely stored up to it."""

    position: Any
    events: int
    completed: bool = False


class SourceCheckpoint:
    """The checkpoint of one source replica (see the module doc)."""

    def __init__(self, nc: Any, cfg: ComponentConfig, replica: int,
                 stored_events: Callable[[], int], *,
                 position_fields: tuple[str, ...] | None = None,
                 seal: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.nc = nc
        self.key = f"{cfg.flow}.{cfg.node}.{replica}"
        self.fingerprint = config_fingerprint(cfg)
        self.identity = position_identity(cfg, position_fields)
        self._stored_events = stored_events
        #: (advance number, events emitted, position), oldest first
        self._marks: collections.deque[tuple[int, int, Any]] = collections.deque()
        self._advances = 0
        self._seal = seal  # a fused chain's sinks flushed: whether all was written
        self._sealed = 0  # positions advanced up to the last successful seal
        self.broken: str | None = None  # a seal failed: no later position is stored
        self._written: Any = _NOTHING
        self._last: Any = None  # the latest position advanced to (or loaded)
        self._kv: Any = None
        self.position: Any = None
        self.completed = False
        self.events_before = 0  # events stored by earlier runs of this source
        #: exactly-once: the epoch of the source's event ids (kept with the position), and
        #: the events counted under earlier epochs (its ``out`` goes on after a reset)
        self.epoch: str | None = None
        self.counted_before = 0
        self._stored: StoredMark | None = None
        self._unwritten_since: float | None = None  # writes of a stored position failing
        self._writing = asyncio.Lock()

    async def load(self, carried: StoredMark | None = None) -> None:
        """Read the checkpoint (a missing, junk or foreign one means: from the start,
        see :func:`resume_decision`); ``carried``, what an earlier run on this agent knew
        was stored, wins when newer."""
        self._kv = await open_bucket(self.nc, CHECKPOINTS_BUCKET)  # the engine made it
        try:
            entry = await self._kv.get(self.key)
            data = json.loads(entry.value or b"")
        except Exception:
            data = None
        kept = resume_decision(data, self.identity, self.fingerprint)
        if kept is not None:
            self.position, self.completed = kept.position, kept.completed
            self.events_before, self.epoch = kept.events, kept.epoch
            self.counted_before = kept.counted
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
        self._advances += 1
        if self._marks and self._marks[-1][1] == emitted_events:
            self._marks[-1] = (self._advances, emitted_events, position)
        else:
            self._marks.append((self._advances, emitted_events, position))

    def _note_stored(self) -> None:
        """Move ``_stored`` to the newest position whose events the stream acknowledged."""
        stored = self._stored_events()
        sealed = self._sealed if self._seal is not None else self._advances
        while self._marks and self._marks[0][1] <= stored and self._marks[0][0] <= sealed:
            _, events, position = self._marks.popleft()
            self._stored = StoredMark(position, self.events_before + events)

    async def _sealed_now(self) -> bool:
        """A fused chain's sinks are flushed: the positions advanced so far are covered
        (see the module doc); False once a seal failed."""
        if self._seal is None:
            return True
        if self.broken is None:
            upto = self._advances
            if await self._seal():
                self._sealed = upto
            else:
                self.broken = ("a sink fused after this source did not write all it "
                               "was handed (it stopped or failed with events buffered, or "
                               "an event was not handed on): resuming from the last stored "
                               "position")
        return self.broken is None

    async def _write(self, mark: StoredMark) -> None:
        completed = self.completed
        value = {"position": mark.position, "events": mark.events, "completed": completed,
                 "config": self.fingerprint, "reads": self.identity, "updated_at": utcnow()}
        if self.epoch is not None:
            value["epoch"] = self.epoch
        if self.counted_before:
            value["counted"] = self.counted_before
        async with self._writing:  # one at a time: an older one never lands last
            await self._kv.put(self.key, json.dumps(value, separators=(",", ":")).encode())
        self._written = (mark.position, completed)

    async def run(self) -> None:
        """Write the latest stored position every :data:`CHECKPOINT_EVERY_S`."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            await self.flush()
            if self.broken is not None:
                raise RuntimeError(self.broken)

    async def flush(self) -> None:
        await self._sealed_now()
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
        if not await self._sealed_now():
            raise RuntimeError(self.broken)
        self._marks.clear()
        self.completed = True
        self._stored = StoredMark(self._last, self.events_before + events)
        await self.flush()
