"""FlowStore: flows in the ``flowctl_flows`` bucket, with revisions and compare-and-set.

Every update is a compare-and-set on the KV revision that was read: a stale revision
raises :class:`RevisionConflict` and writes nothing. Also here: :func:`read_all`, the one
way any package snapshots a whole bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from flowstore.errors import FlowExists, FlowNotFound, RevisionConflict, RevisionNotFound
from flowstore.models import FlowRecord, FlowSpec, FlowState, utcnow
from flowstore.nats import FLOWS_BUCKET, open_bucket


def is_delete(entry: KeyValue.Entry) -> bool:
    return entry.operation in (KV_DEL, KV_PURGE)


async def read_all(kv: KeyValue, keys: str = ">") -> dict[str, KeyValue.Entry]:
    """Every live key matching ``keys`` with its latest entry, read through one watcher."""
    watcher = await kv.watch(keys, ignore_deletes=True)
    out: dict[str, KeyValue.Entry] = {}
    try:
        while True:
            entry = await watcher.updates(timeout=5.0)
            if entry is None:
                break
            out[entry.key] = entry
    finally:
        await watcher.stop()
    return out


@dataclass
class FlowEvent:
    """One change seen by :meth:`FlowStore.watch`: ``flow`` is None when it was deleted."""

    name: str
    flow: FlowRecord | None


class FlowStore:
    """Async CRUD over ``flowctl_flows``. Construct with :meth:`open`."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, nc: NatsClient, *, replicas: int = 1) -> FlowStore:
        return cls(await open_bucket(nc, FLOWS_BUCKET, replicas=replicas))

    @staticmethod
    def _decode(entry: KeyValue.Entry) -> FlowRecord:
        record = FlowRecord.from_json(entry.value)
        record.kv_revision = entry.revision
        return record

    async def create(self, name: str, spec: FlowSpec) -> FlowRecord:
        """Store a new flow (state not_deployed, revision 1). Fails if it exists."""
        record = FlowRecord(name=name, spec=spec)
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
        entries = await read_all(self.kv)
        return sorted((self._decode(e) for e in entries.values()), key=lambda f: f.name)

    async def update(
        self,
        record: FlowRecord,
        *,
        spec: FlowSpec | None = None,
        state: FlowState | None = None,
        deployed_revision: int | None = None,
    ) -> FlowRecord:
        """Write a new revision of ``record`` if nobody wrote since it was read (CAS).

        Returns the new record; raises :class:`RevisionConflict` and writes nothing when
        ``record.kv_revision`` is stale.
        """
        changes: dict[str, object] = {"revision": record.revision + 1, "updated_at": utcnow()}
        if spec is not None:
            changes["spec"] = spec
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
        """Every stored revision of the flow, oldest first (deletions skipped)."""
        try:
            entries = await self.kv.history(name)
        except NoKeysError:
            raise FlowNotFound(name) from None
        return [self._decode(e) for e in entries if not is_delete(e) and e.value]

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
