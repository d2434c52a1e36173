"""FlowStore: flows in the ``flowctl_flows`` bucket, with revisions and compare-and-set.

Every update is a compare-and-set on the KV revision that was read: a stale revision
raises :class:`RevisionConflict` and writes nothing. Also here: :func:`read_all`, the one
way any package snapshots a whole bucket (complete, and leaving no consumer behind),
:func:`stored_at`, a value with the server's timestamp, and :func:`pipelined`, many
requests in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
)
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from flowstore.errors import (
    BrokenRecord,
    FlowctlError,
    FlowExists,
    FlowNotFound,
    RevisionConflict,
    RevisionNotFound,
)
from flowstore.models import FlowRecord, FlowSpec, FlowState, utcnow
from flowstore.nats import FLOWS_BUCKET, open_bucket


def is_delete(entry: KeyValue.Entry) -> bool:
    return entry.operation in (KV_DEL, KV_PURGE)


#: Headers that mark a KV entry as a deletion: KV-Operation, or (nats-server 2.11+) the
#: marker the server writes when a value expires or is removed.
_KV_OP = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
_DELETED_BY_MARKER = ("MaxAge", "Purge", "Remove")
#: read_all: how long no value may arrive before the consumer is asked, and how many
#: such checks finding every delivered value arrived end a read the server keeps open.
_QUIET_S = 0.05
_PATIENCE = 3


def _operation(msg: Msg) -> str | None:
    headers = msg.headers or {}
    if _KV_OP in headers:
        return headers[_KV_OP]
    if headers.get(_MARKER_REASON) in _DELETED_BY_MARKER:
        return KV_DEL
    return None


async def _consumer_state(sub: Any, received: int) -> tuple[bool, bool]:
    """(nothing pending and everything delivered arrived, everything delivered arrived)."""
    info = await sub.consumer_info()
    delivered = (info.delivered.consumer_seq if info.delivered is not None else 0) or 0
    arrived = delivered <= received
    return arrived and not info.num_pending, arrived


async def read_all(kv: KeyValue, keys: str = ">", timeout: float = 5.0,
                   ) -> dict[str, KeyValue.Entry]:
    """Every live key matching ``keys`` with its latest entry: one complete snapshot.

    Read through one ephemeral ordered consumer (last value per key). The snapshot is
    done when the consumer itself reports nothing pending and nothing delivered beyond
    what arrived. A value saying "nothing pending after me" is not enough: values may
    still be in flight (nats-py's watcher then reported an empty bucket now and then), and
    when a key is rewritten during the read the server skips its old value and delivers
    the new one after counting zero pending. (While keys are rewritten without pause, the
    server's count can stay off: after a few checks that found every delivered value
    arrived, the read ends there.) The consumer is deleted afterwards, not left to
    expire: a KV stream allows a limited number of consumers. Raises TimeoutError when
    values are due but none arrives for ``timeout`` seconds.
    """
    # nats-py's KeyValue has no public handle on its JetStream context, stream or prefix.
    js, stream, prefix = kv._js, kv._stream, kv._pre
    inbox: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        inbox.put_nowait(msg)

    sub = await js.subscribe(f"{prefix}{keys}", stream=stream, cb=on_msg, ordered_consumer=True,
                             deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                             inactive_threshold=30.0)
    out: dict[str, KeyValue.Entry] = {}
    received, patience = 0, _PATIENCE
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        if (await _consumer_state(sub, received))[0]:
            return out
        while True:
            try:
                msg: Msg | None = await asyncio.wait_for(inbox.get(), _QUIET_S)
            except TimeoutError:
                msg = None
            if msg is not None:
                deadline = loop.time() + timeout
                received += 1
                meta = msg.metadata
                key = msg.subject[len(prefix):]
                operation = _operation(msg)
                if operation in (KV_DEL, KV_PURGE):
                    out.pop(key, None)
                else:
                    out[key] = KeyValue.Entry(
                        bucket=kv._name, key=key, value=msg.data,
                        revision=meta.sequence.stream, delta=meta.num_pending,
                        created=meta.timestamp, operation=operation)
                if meta.num_pending or not inbox.empty():
                    continue
            elif loop.time() > deadline:
                raise TimeoutError(f"reading {keys} of {stream}: values due but none came")
            # A value said nothing is pending, or none came for a moment: ask the consumer.
            done, arrived = await _consumer_state(sub, received)
            if done:
                return out
            if arrived and received:
                patience -= 1
                if patience <= 0:
                    return out
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(Exception):  # it expires on its own if this fails
            await js.delete_consumer(stream, sub._consumer)


async def stored_at(kv: KeyValue, key: str | None = None, revision: int | None = None,
                    ) -> tuple[bytes, int, datetime] | None:
    """The latest value of ``key`` (or the entry at ``revision``) with its revision and
    the time the server stored it; None when there is none (or it is a deletion).
    nats-py's ``KeyValue.get`` drops the server's timestamp: read the stream directly."""
    js, stream = kv._js, kv._stream
    try:
        if revision is not None:
            msg = await js.get_msg(stream, seq=revision, direct=kv._direct)
        else:
            msg = await js.get_msg(stream, subject=f"{kv._pre}{key}", direct=kv._direct)
    except NotFoundError:
        return None
    headers = msg.headers or {}
    if headers.get(_KV_OP) in (KV_DEL, KV_PURGE) or msg.time is None or msg.seq is None:
        return None
    return msg.data or b"", msg.seq, msg.time


#: Requests in flight at once in :func:`pipelined`.
PIPELINE_WIDTH = 256


async def pipelined(requests: Iterable[Awaitable[object]], width: int = PIPELINE_WIDTH,
                    ) -> None:
    """Await ``requests`` ``width`` at a time instead of one round trip each. Every
    request of a group ends before the first failure is raised, so what was done is
    known; the groups after it are never started."""
    pending = list(requests)
    for start in range(0, len(pending), width):
        results = await asyncio.gather(*pending[start:start + width], return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for rest in pending[start + width:]:
                if inspect.iscoroutine(rest):
                    rest.close()  # never started
            raise failed[0]


async def delete_keys(kv: KeyValue, keys: list[str], deleted: list[str]) -> None:
    """Delete ``keys`` of ``kv``, many requests in flight (not a round trip each); each
    key deleted is added to ``deleted`` (in order, once), also when one fails."""
    done: set[str] = set()

    async def delete(key: str) -> None:
        await kv.delete(key)
        done.add(key)

    try:
        await pipelined(delete(key) for key in keys)
    finally:
        deleted += [key for key in keys if key in done and key not in deleted]


@dataclass
class FlowEvent:
    """One change seen by :meth:`FlowStore.watch`: ``flow`` is None when it was deleted."""

    name: str
    flow: FlowRecord | None


class FlowStore:
    """Async CRUD over ``flowctl_flows``. Construct with :meth:`open`."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        #: keys whose value is not a flow record, with why (filled by ``list``)
        self.broken: dict[str, str] = {}

    @classmethod
    async def open(cls, nc: NatsClient, *, replicas: int = 1) -> FlowStore:
        return cls(await open_bucket(nc, FLOWS_BUCKET, replicas=replicas))

    @staticmethod
    def _parse(key: str, value: bytes | None) -> tuple[FlowRecord | None, str | None]:
        """A flow record, or why the value under ``key`` is not one (its ``name`` must be
        its key: a copy under another key would act on the wrong flow)."""
        record, why = FlowRecord.parse(value)
        if record is not None and record.name != key:
            return None, f"its name {record.name!r} is not its key"
        return record, why

    @classmethod
    def _decode(cls, entry: KeyValue.Entry) -> FlowRecord:
        record, why = cls._parse(entry.key, entry.value)
        if record is None:
            raise BrokenRecord(FLOWS_BUCKET, entry.key, why or "not a flow record")
        record.kv_revision = entry.revision
        return record

    async def create(self, name: str, spec: FlowSpec) -> FlowRecord:
        """Store a new flow (state not_deployed, revision 1, or the next after those of an
        earlier, deleted flow of that name: its history goes on). Fails if it exists."""
        try:
            earlier = max((r.revision for r in await self.history(name)), default=0)
        except FlowNotFound:
            earlier = 0
        record = FlowRecord(name=name, spec=spec, revision=earlier + 1)
        try:
            record.kv_revision = await self.kv.create(name, record.to_json())
        except KeyWrongLastSequenceError:
            raise FlowExists(name) from None
        return record

    async def get(self, name: str) -> FlowRecord:
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:
            raise FlowNotFound(name) from None
        if entry.value is None or is_delete(entry):
            raise FlowNotFound(name)
        return self._decode(entry)

    async def list(self) -> list[FlowRecord]:
        """Every flow, by name; values that are not flow records are skipped and listed in
        :attr:`broken`."""
        entries = await read_all(self.kv)
        flows, self.broken = [], {}
        for key, entry in entries.items():
            record, why = self._parse(key, entry.value)
            if record is None:
                self.broken[key] = why or "not a flow record"
                continue
            record.kv_revision = entry.revision
            flows.append(record)
        return sorted(flows, key=lambda f: f.name)

    async def update(
        self,
        record: FlowRecord,
        *,
        spec: FlowSpec | None = None,
        state: FlowState | None = None,
        deployed_revision: int | None = None,
    ) -> FlowRecord:
        """Write ``record`` anew if nobody wrote since it was read (CAS). ``revision``
        counts spec changes: a new spec makes the next one, a state change keeps it.

        Returns the new record; raises :class:`RevisionConflict` and writes nothing when
        ``record.kv_revision`` is stale.
        """
        changes: dict[str, object] = {"updated_at": utcnow()}
        if spec is not None:
            changes["spec"] = spec
            changes["revision"] = record.revision + 1
        if state is not None:
            changes["state"] = state
        if deployed_revision is not None:
            changes["deployed_revision"] = deployed_revision
        new = record.model_copy(update=changes)
        try:
            new.kv_revision = await self.kv.update(
                record.name, new.to_json(), last=record.kv_revision
            )
        except KeyWrongLastSequenceError:
            raise RevisionConflict(record.name, record.kv_revision) from None
        return new

    async def delete(self, record: FlowRecord) -> None:
        """Delete the flow if it is unchanged since read (its history is kept)."""
        try:
            await self.kv.delete(record.name, last=record.kv_revision)
        except KeyWrongLastSequenceError:
            raise RevisionConflict(record.name, record.kv_revision) from None
        except Exception as exc:  # nats-py reports the CAS failure of a delete as APIError
            if getattr(exc, "err_code", None) in (10071, 10164):
                raise RevisionConflict(record.name, record.kv_revision) from None
            raise

    async def history(self, name: str) -> list[FlowRecord]:
        """Every revision (spec) of the flow, oldest first, each as last written (its
        latest state); deletions skipped."""
        for _ in range(3):
            try:
                entries = await self.kv.history(name)
                break
            except NoKeysError:
                # nats-py's watcher ends on a short silence: a busy server can make an
                # existing key look empty. Only a key that is really absent is "not found".
                await self.get(name)  # raises FlowNotFound when it is
        else:
            raise FlowctlError(f"the history of flow '{name}' could not be read (NATS too "
                               "busy to answer in time); try again")
        latest: dict[int, FlowRecord] = {}
        for entry in entries:
            if not is_delete(entry) and entry.value:
                record, _ = self._parse(name, entry.value)
                if record is None:
                    continue  # a junk value someone put: not a revision
                record.kv_revision = entry.revision
                latest[record.revision] = record
        return [latest[r] for r in sorted(latest)]

    async def previous_spec(self, name: str, current: FlowRecord) -> FlowRecord:
        """The latest revision before ``current`` whose spec differs from it."""
        for record in reversed(await self.history(name)):
            if record.revision < current.revision and record.spec != current.spec:
                return record
        raise FlowctlError(f"flow '{name}' has had one spec so far (revision "
                           f"{current.revision}): there is nothing to roll back to")

    async def at_revision(self, name: str, revision: int) -> FlowRecord:
        for record in await self.history(name):
            if record.revision == revision:
                return record
        raise RevisionNotFound(name, revision)

    async def watch(self, name: str = ">") -> AsyncIterator[FlowEvent]:
        """Changes to one flow (or all), current values first. Stops when the caller does."""
        watcher = await self.kv.watch(name)
        try:
            while True:
                entry = await watcher.updates(timeout=3600)
                if entry is None:
                    continue
                flow = None if is_delete(entry) else self._decode(entry)
                yield FlowEvent(entry.key, flow)
        except asyncio.CancelledError:
            raise
        finally:
            await watcher.stop()
