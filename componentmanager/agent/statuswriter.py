"""Writes replica status records to ``flowctl_status`` with fencing.

One writer task per agent drains a queue of replicas whose status changed, so a burst
of transitions costs no task per event: whatever is queued a moment after the first
change (up to
:data:`WRITES_IN_FLIGHT`) is written at once, one request each but all in flight
together, and a replica changing again meanwhile is written once more after that. The
first write of a replica is a put while its config assigns it here (``owns``), else
only where no record ever was: a replica that moved away before its first write never
covers the new owner's record (a late "stopped" from the old agent once hid a source
that had completed on its new one). Every later write is a compare-and-set on the
revision this agent last wrote. When that fails, someone else owns the record now (the
replica moved to another agent, or the flow was undeployed and the key deleted): the
writer stops writing that key instead of overwriting a newer owner or resurrecting a
deleted key, unless its config assigns the replica here (a write of the agent it left,
already in flight when it moved, is overwritten at the latest at the next REWRITE_S).

A record whose content would not change (an idle replica at the periodic refresh: same
state, counters, rates and lag) is not written again, except every
:data:`REWRITE_S` (its ``updated_at`` says when it was last written): a 10,000-replica
flow at rest costs the server no status writes a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import weakref
from collections.abc import Callable

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from componentmanager.agent.tasks import end_tasks
from componentmanager.runners.base import Replica
from flowstore.models import ReplicaStatus

log = structlog.get_logger("flowctl.status")

#: Status writes in flight at once (a burst of starts costs a few round trips, not one
#: round trip per replica).
WRITES_IN_FLIGHT = 128
#: How long the writer lets changes gather before it writes (a replica that starts and
#: runs at once is written running, not starting and then running).
GATHER_S = 0.02
#: An unchanged record is written again after this long (see the module doc).
REWRITE_S = 30.0

_STAMP = re.compile(rb'"updated_at":"[^"]*"')


def _content(data: bytes) -> bytes:
    """A status record's JSON without its ``updated_at``: what it says."""
    return _STAMP.sub(b"", data, count=1)


class StatusWriter:
    def __init__(self, kv: KeyValue, agent: str,
                 owns: Callable[[str], bool] | None = None) -> None:
        self.kv = kv
        self.agent = agent
        #: whether a replica key is assigned to this agent now (None: always)
        self.owns = owns
        self._queue: asyncio.Queue[Replica | None] = asyncio.Queue()
        self._queued: set[int] = set()
        self._revisions: dict[str, int] = {}
        #: per key, when (monotonic) its last write landed, and what it said
        self._written_at: dict[str, float] = {}
        self._said: dict[str, bytes] = {}
        # Replicas removed from this agent are never written again (weak: ids get reused).
        self._retired: weakref.WeakSet[Replica] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name="status writer")

    def changed(self, replica: Replica) -> None:
        """Queue a write of ``replica``'s status (coalesced while queued)."""
        if replica in self._retired:
            return
        if id(replica) not in self._queued:
            self._queued.add(id(replica))
            self._queue.put_nowait(replica)

    async def _pump(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(GATHER_S)
            while len(batch) < WRITES_IN_FLIGHT and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            due = []
            for replica in batch:
                if replica is None:
                    await asyncio.gather(*due)
                    return
                self._queued.discard(id(replica))
                if replica not in self._retired:
                    due.append(self._write_now(replica))
            await asyncio.gather(*due)

    async def _write_now(self, replica: Replica) -> None:
        try:
            await self.write(replica.status())
        except Exception as exc:  # NATS down: the periodic refresh writes it later
            log.debug("status write failed", key=replica.key, error=str(exc))

    def written_since(self, key: str, since: float) -> bool:
        """Whether a record of ``key`` was written here at or after ``since`` (monotonic)."""
        return self._written_at.get(key, -1.0) >= since

    def _landed(self, key: str, revision: int, said: bytes) -> bool:
        """A write of ``key`` landed at ``revision``: the next one compares against it."""
        self._revisions[key] = revision
        self._written_at[key] = time.monotonic()
        self._said[key] = said
        return True

    async def write(self, status: ReplicaStatus) -> bool:
        """Write one record; False when fenced (someone else owns the key). A record
        that would say what the last one said is not written (see the module doc)."""
        key = status.key
        data = status.to_json()
        said = _content(data)
        last = self._revisions.get(key)
        if last is None:
            if self.owns is None or self.owns(key):
                return self._landed(key, await self.kv.put(key, data), said)
            try:  # moved away before its first write: only where nobody ever wrote
                return self._landed(key, await self.kv.update(key, data, last=0), said)
            except KeyWrongLastSequenceError:
                return False
        if (self._said.get(key) == said
                and time.monotonic() - self._written_at.get(key, 0.0) < REWRITE_S):
            return True
        try:
            return self._landed(key, await self.kv.update(key, data, last=last), said)
        except KeyWrongLastSequenceError:
            pass
        try:
            current = await self.kv.get(key)
        except KeyNotFoundError:
            return False  # deleted (undeployed): do not resurrect it
        existing, _ = ReplicaStatus.parse(current.value)
        if current.value and (existing is None or existing.agent == self.agent
                              or (self.owns is not None and self.owns(key))):
            # ours (or junk someone put there, or the write of the agent it left: the
            # replica's agent writes it anew)
            return self._landed(key, await self.kv.update(key, data, last=current.revision),
                                said)
        return False

    async def retire(self, replica: Replica, final: bool) -> None:
        """The replica left this agent: write its final record (``final``; CAS only, so a
        deleted or re-owned key is never recreated), then never write it again."""
        self._retired.add(replica)
        self._queued.discard(id(replica))
        key = replica.key
        last = self._revisions.pop(key, None)
        if final and last is not None:
            with contextlib.suppress(Exception):
                self._revisions[key] = last
                await self.write(replica.status())
            self._revisions.pop(key, None)
        self._written_at.pop(key, None)
        self._said.pop(key, None)

    async def flush(self) -> None:
        """Write everything queued now (used at shutdown)."""
        while not self._queue.empty():
            replica = self._queue.get_nowait()
            if replica is None or replica in self._retired:
                continue
            self._queued.discard(id(replica))
            with contextlib.suppress(Exception):
                await self.write(replica.status())

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            await end_tasks([self._task], 5.0)
