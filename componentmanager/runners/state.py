"""The checkpointed state of a stateful processor (``window``, ``join``): :class:`OperatorState`.

Kept in ``flowctl_checkpoints`` under the replica's key ``<flow>.<node>.<replica>``
(the bucket of source positions; a node is a source or a processor, never both), one
line of JSON::

    {"state": {"keys": {<key>: ...}, ...}, "seen": {"in": 1234}, "partitions": 3,
     "config": "<fingerprint>", "updated_at": "..."}

With ``delivery: exactly-once`` every replica of a processor or sink keeps such a
record, with ``commit``: ``{floors: {<producer prefix>: n}, counters: {...}, ids:
{epoch, emitted}, sink: ...}`` (see :mod:`componentmanager.runners.commit`).

``state`` is what the component's ``snapshot()`` returned: its per-key state under
``keys`` (named by :func:`~componentmanager.dataplane.partition.key_text`) and anything
else it needs. ``seen`` is, per input port, the highest stream sequence whose event is
in that state. With at-least-once delivery the runner writes the record (after the
outputs emitted so far are stored) and only then acks the inputs it covers, so after a
crash an input delivered again is either in the state (its sequence is at most
``seen``: acked, not counted twice) or not (processed). What can repeat: the results a
component emitted after the last record was written and before the crash (a window or
a join emitted again, with the same content).

A record larger than one KV value (the server's largest message, less room) is written
whole to the object store ``flowctl_state`` under the same name (an object is replaced
atomically), then the KV value becomes a one-line pointer ``{"object": "flowctl_state/<key>",
"bytes": N, "updated_at": ...}``; a crash between the two leaves the older record in force,
whose inputs were not acked yet. Undeploy removes both.

A record of another config (the node's type or config changed) or of another replica
count is ignored: the state starts empty (the engine refuses to change the replicas of a
stateful node while its flow is deployed, and undeploy removes the records).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from nats.js.errors import KeyNotFoundError, ObjectNotFoundError

from componentmanager.runners.checkpoint import config_fingerprint
from flowstore.models import ComponentConfig, utcnow
from flowstore.nats import (
    CHECKPOINTS_BUCKET,
    STATE_OBJECTS_BUCKET,
    open_bucket,
    state_objects,
)

#: The largest state record written at all (an object of this size is written every
#: second): past it the checkpoint fails and says so.
STATE_MAX_BYTES = 64 * 2**20
#: Room left in a KV value for its headers.
KV_ROOM = 1024


class StateTooLarge(Exception):
    pass


class OperatorState:
    """Load and save one replica's state record (see the module doc)."""

    def __init__(self, nc: Any, cfg: ComponentConfig, replica: int) -> None:
        self.nc = nc
        self.cfg = cfg
        self.replica = replica
        self.key = f"{cfg.flow}.{cfg.node}.{replica}"
        self.fingerprint = config_fingerprint(cfg)
        self.seen: dict[str, int] = {}  # input port -> highest stream sequence in the state
        self.restored_keys = 0
        #: exactly-once: the commit part of the record loaded ({} on a first start)
        self.commit: dict[str, Any] = {}
        #: why a record that was there is not used (said by the replica), None if it is
        self.discarded: str | None = None
        #: the replica is stopping: its next record is its last (a rescale waits for it)
        self.sealed = False
        self._kv: Any = None
        self._store: Any = None  # the object store, once a state needed it

    async def load(self) -> list[dict[str, Any]]:
        """The state this replica resumes from (a list of one part; empty: afresh). A
        record that cannot be read now (NATS busy) raises: the replica fails and retries,
        it never starts over an existing state."""
        self._kv = await open_bucket(self.nc, CHECKPOINTS_BUCKET)
        try:
            record = await self.read(self.key)
        except KeyNotFoundError:
            return []  # a first start
        if not isinstance(record, dict):
            self.discarded = "its checkpoint is not a flowctl record"
            return []
        if record.get("config") != self.fingerprint:
            self.discarded = "its checkpoint is of another config"
            return []
        if record.get("partitions") != self.cfg.replicas:
            self.discarded = "its checkpoint is of another replica count"
            return []
        self.seen = {str(p): int(s) for p, s in (record.get("seen") or {}).items()}
        self.commit = record.get("commit") or {}
        state = record.get("state") or {}
        self.restored_keys = len(state.get("keys") or {})
        return [state]

    async def read(self, key: str) -> Any:
        """The record under ``key`` (of this replica or another of its node), through
        its pointer when it is an object; None for junk; KeyNotFoundError when none."""
        if self._kv is None:
            self._kv = await open_bucket(self.nc, CHECKPOINTS_BUCKET)
        record = _parse((await self._kv.get(key)).value)
        if isinstance(record, dict) and "object" in record:  # a large state
            try:
                if self._store is None:
                    self._store = await state_objects(self.nc, create=False)
                found = await self._store.get(key) if self._store else None
            except ObjectNotFoundError:
                found = None
            record = _parse(found.data) if found is not None else None
        return record

    async def put(self, key: str, record: dict[str, Any]) -> None:
        """Store a small record of the node beside its replicas' (see handover)."""
        if self._kv is None:
            self._kv = await open_bucket(self.nc, CHECKPOINTS_BUCKET)
        await self._kv.put(key, json.dumps(record, separators=(",", ":")).encode())

    def saw(self, port: str, sequence: int) -> None:
        if sequence > self.seen.get(port, 0):
            self.seen[port] = sequence

    def covers(self, port: str, sequence: int) -> bool:
        """Is this input (delivered again) already in the restored state?"""
        return sequence <= self.seen.get(port, 0)

    def record(self, state: dict[str, Any], commit: dict[str, Any] | None = None) -> bytes:
        """The record of ``state`` and the positions as they are now, encoded at once
        (the component goes on changing its state while the record is written). Raises
        :class:`StateTooLarge` past :data:`STATE_MAX_BYTES`."""
        record = {"state": state, "seen": self.seen, "partitions": self.cfg.replicas,
                  "config": self.fingerprint, "updated_at": utcnow()}
        if self.sealed:  # the replica stops: its last record (see handover)
            record["sealed"] = True
        if commit is not None:
            record["commit"] = commit
        body = json.dumps(record, separators=(",", ":"), default=str).encode()
        if len(body) > STATE_MAX_BYTES:
            raise StateTooLarge(
                f"the state of {self.key} is {len(body):,} bytes, more than "
                f"{STATE_MAX_BYTES:,}; use a shorter window, more replicas (partitions) "
                "or less collected data")
        return body

    async def write(self, body: bytes, max_payload: int) -> None:
        """Store a record: in the KV value, or (too large for one) as an object with a
        pointer in the KV value (see the module doc)."""
        if len(body) <= max_payload - KV_ROOM:
            await self._kv.put(self.key, body)
            return
        if self._store is None:
            self._store = await state_objects(self.nc, create=True,
                                              replicas=await self._replicas())
        await self._store.put(self.key, body)
        pointer = {"object": f"{STATE_OBJECTS_BUCKET}/{self.key}", "bytes": len(body),
                   "updated_at": utcnow()}
        await self._kv.put(self.key, json.dumps(pointer, separators=(",", ":")).encode())

    async def _replicas(self) -> int:  # once, when the first large state is written
        """The object store's replicas: those of the checkpoints bucket (a cluster's)."""
        with contextlib.suppress(Exception):
            status = await self._kv.status()
            return int(status.stream_info.config.num_replicas or 1)
        return 1


def _parse(value: bytes | None) -> Any:
    """A stored record, or None for junk (someone's ``nats kv put``)."""
    try:
        return json.loads(value or b"")
    except ValueError:
        return None
