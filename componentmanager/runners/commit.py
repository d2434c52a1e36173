"""The per-replica commit of ``delivery: exactly-once`` flows: what a replica has taken
in, what it wrote and its counters become durable together. Pure; the runner's I/O is in
:mod:`componentmanager.runners.stateful` and the record in
:mod:`componentmanager.runners.state`.

How a repeat is recognised, whatever its age (no time window):

* every event has an id ``<node>.<replica>.<epoch>-<n>``: a replica (its *producer
  prefix* ``<node>.<replica>.<epoch>``) numbers what it emits 1, 2, 3, ... and the next
  number is part of its commit, so after a crash the events it emits again carry the same
  ids (a source's next number is its checkpoint's event count). ``epoch`` changes only
  when the numbering starts over (a first start, a record of another config);
* an exactly-once producer publishes in order, one message in flight (the stream then
  holds each producer's events in increasing ``n``, never a gap closed later);
* every consumer replica reads a consumer of its own and keeps, per producer prefix, the
  highest ``n`` it has passed (:class:`Floors`): an event at or below it was taken
  before (or belongs to another replica of the node) and is skipped, however it was
  framed and however late it comes. The floors are in the replica's commit, with its
  counters, its next output number and what its sink needs to undo uncommitted writes.

A message without the ``Flowctl`` header (published by something else) is numbered by
its stream sequence under the prefix ``#<port>``.

Several replicas of a node without ``partition_by`` share the events by blocks of
:data:`OWNER_BLOCK` numbers of each producer (:func:`owner_of`): the owner of an event
is a function of its id alone, so a replay framed differently goes to the same replica.
"""

from __future__ import annotations

import secrets
import zlib
from typing import Any

from componentmanager.dataplane.wire import HDR_META, delivery_of

#: Consecutive event numbers of one producer that go to the same replica.
OWNER_BLOCK = 1024
#: Producer prefixes a replica remembers (an old epoch never emits again).
FLOORS_KEPT = 512


def new_epoch() -> str:
    """A fresh epoch: the numbering of a producer starts over under it."""
    return secrets.token_hex(3)


def message_range(headers: dict[str, str] | None, reply: str | None, port: str,
                  count: int) -> tuple[str, int] | None:
    """(producer prefix, number of the message's first event), or None when unknown."""
    meta = headers.get(HDR_META) if headers else None
    if meta:
        first = meta.split(" ", 1)[0]
        prefix, _, n = first.rpartition("-")
        if prefix and n.isdigit():
            return prefix, int(n)
    delivery = delivery_of(reply)
    if delivery is None:
        return None
    return f"#{port}", delivery[0]  # stream sequences: one per message


def owner_of(prefix: str, n: int, replicas: int) -> int:
    """The replica of a node (no ``partition_by``) that takes event ``n`` of ``prefix``."""
    if replicas <= 1:
        return 0
    return (zlib.crc32(prefix.encode()) + (n - 1) // OWNER_BLOCK) % replicas


class Floors:
    """Per producer prefix, the highest event number this replica has passed."""

    def __init__(self, floors: dict[str, int] | None = None) -> None:
        self._floors: dict[str, int] = dict(floors or {})

    def fresh(self, prefix: str, first: int, count: int) -> int:
        """How many leading events of a message (events ``first .. first+count-1``) were
        passed before; the floor moves past the message."""
        floor = self._floors.get(prefix, 0)
        last = first + count - 1
        if last > floor:
            self._floors.pop(prefix, None)  # most recent last: the oldest are forgotten
            self._floors[prefix] = last
            if len(self._floors) > FLOORS_KEPT:
                del self._floors[next(iter(self._floors))]
        return min(max(floor - first + 1, 0), count)

    def as_dict(self) -> dict[str, int]:
        return dict(self._floors)


def counters_record(counters: Any) -> dict[str, Any]:
    """The counters of a replica as its commit keeps them."""
    return counters.to_model().model_dump(by_alias=True)


def restore_counters(counters: Any, record: dict[str, Any] | None) -> None:
    """Set the live counters to a commit's (a replayed input is then counted once)."""
    saved = record or {}
    counters.in_ = int(saved.get("in", 0))
    for name in ("out", "filtered", "errors", "dropped", "redelivered", "replayed"):
        setattr(counters, name, int(saved.get(name, 0)))
    counters.in_ports = {str(k): int(v) for k, v in (saved.get("in_ports") or {}).items()}
    counters.out_ports = {str(k): int(v) for k, v in (saved.get("out_ports") or {}).items()}
