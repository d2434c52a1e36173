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
* every consumer replica reads a consumer of its own and keeps, per producer prefix, the
  numbers it has passed (:class:`Floors`: a floor and the ranges above it): an event
  passed before (taken, or another replica's) is skipped, however it was framed,
  however late and in whatever order it comes (a delivery redelivered after newer ones,
  a producer's message stored after a later one). The floors are in the replica's commit, with its
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
from flowstore.models import Counters

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


def owned(prefix: str, first: int, indexes: list[int], replica: int,
          replicas: int) -> list[int]:
    """Of a message's event ``indexes`` (its first event is number ``first``), those
    :func:`owner_of` gives to ``replica`` (the prefix hashed once per message)."""
    base = zlib.crc32(prefix.encode())
    return [i for i in indexes if (base + (first + i - 1) // OWNER_BLOCK) % replicas == replica]


class Floors:
    """Per producer prefix, the event numbers this replica has passed: everything up to
    a floor, and the ranges above it seen out of order (a delivery that came late, a
    replay); a range that reaches the floor joins it. Order of arrival does not matter.
    """

    def __init__(self, floors: dict[str, Any] | None = None) -> None:
        self._seen: dict[str, list[int]] = {}  # prefix -> [floor, a1, b1, a2, b2, ...]
        for prefix, value in (floors or {}).items():
            self._seen[prefix] = ([int(value)] if isinstance(value, int)
                                  else [int(v) for v in value])

    def fresh(self, prefix: str, first: int, count: int, after: int | None = None
              ) -> list[int]:
        """The indexes (0-based, in the message) of its events not passed before; the
        message's events are passed from now on. ``after``: a partition's message, whose
        producer sent the numbers from ``after + 1`` to ``first - 1`` to other
        partitions: they count as passed, so the floor keeps up without ranges."""
        seen = self._seen.pop(prefix, None) or [0]
        self._seen[prefix] = seen  # most recent last: the oldest are forgotten
        if len(self._seen) > FLOORS_KEPT:
            del self._seen[next(iter(self._seen))]
        if after is not None and first - 1 > max(after, seen[0]):
            _add_range(seen, max(after, seen[0]) + 1, first - 1)
        last = first + count - 1
        if last <= seen[0]:
            return []
        if len(seen) == 1 and first <= seen[0] + 1:  # the common case: in order
            skip, seen[0] = seen[0] + 1 - first, last
            return list(range(skip, count))
        taken = [n - first for n in range(max(first, seen[0] + 1), last + 1)
                 if not _in_ranges(seen, n)]
        _add_range(seen, max(first, seen[0] + 1), last)
        return taken

    def passed(self, prefix: str, n: int) -> bool:
        """Was event ``n`` of ``prefix`` passed?"""
        seen = self._seen.get(prefix)
        return seen is not None and (n <= seen[0] or _in_ranges(seen, n))

    def as_dict(self) -> dict[str, Any]:
        return {p: (s[0] if len(s) == 1 else list(s)) for p, s in self._seen.items()}


def _in_ranges(seen: list[int], n: int) -> bool:
    return any(seen[i] <= n <= seen[i + 1] for i in range(1, len(seen), 2))


def _add_range(seen: list[int], a: int, b: int) -> None:
    """Mark ``a..b`` (above the floor) passed: merge the ranges, raise the floor."""
    ranges = [(seen[i], seen[i + 1]) for i in range(1, len(seen), 2)] + [(a, b)]
    ranges.sort()
    floor, merged = seen[0], []
    for lo, hi in ranges:
        if lo <= floor + 1:
            floor = max(floor, hi)
        elif merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    while merged and merged[0][0] <= floor + 1:  # (a range the new floor reached)
        floor = max(floor, merged.pop(0)[1])
    seen[:] = [floor] + [v for r in merged for v in r]


def counters_record(counters: Any) -> dict[str, Any]:
    """The counters of a replica as its commit keeps them."""
    return counters.to_model().model_dump(by_alias=True)


def restore_counters(counters: Any, record: dict[str, Any] | None) -> None:
    """Set the live counters to a commit's (a replayed input is then counted once)."""
    counters.restart_from(Counters.model_validate(record or {}))
