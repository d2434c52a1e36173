"""Keyed partitions (``partition_by``): which replica of a node takes an event. Pure.

A key is any JSON value (what the node's ``partition_by`` expression, or a stateful
processor's ``key``, returns). Its canonical JSON (:func:`key_text`: sorted keys, no
spaces) names it in operator state, and its CRC-32 modulo the node's replica count picks
the replica (:func:`partition_of`), the same on every agent and across restarts.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

from componentmanager.component import EventError
from flowstore.names import HDR_NO_KEY as HDR_NO_KEY

_json_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


class KeyNotComputed(EventError):
    """An event's ``partition_by`` key cannot be computed: the event fails (on replica 0)."""


def key_text(value: Any) -> str:
    """The canonical JSON of a key: equal values give equal text on every agent. (A
    string or an integer, the usual keys, the way ``json.dumps`` writes it, faster.)"""
    kind = type(value)
    if kind is str:
        return _json_string(value)
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def partition_of(text: str, partitions: int) -> int:
    """The partition (replica index) of a key given as :func:`key_text`."""
    return zlib.crc32(text.encode()) % partitions if partitions > 1 else 0


def partition_origin(origin: str, index: int, partitions: int) -> str:
    """The origin (see ``Outbox.handling``) of what one partition emits for an input
    message: every partition takes other events of the same message, so each needs its
    own output ids; with the count in it, a message delivered again after the node was
    repartitioned (other events per partition) is never taken for a duplicate of what
    the same index emitted before and dropped by the stream's de-duplication."""
    return f"{origin}/p{index}of{partitions}"


class Partitioner:
    """Does this replica take an event? ``key`` evaluates the node's ``partition_by``.

    An event whose key cannot be computed belongs to partition 0, so exactly one replica
    takes it (and fails it: counted, dead-lettered once, not once per replica).
    """

    def __init__(self, key: Callable[[Any], Any], index: int, partitions: int) -> None:
        self._key = key
        self.index = index
        self.partitions = partitions

    @staticmethod
    def without_key(why: str) -> Callable[[Any], bool]:
        """For a message its producer marked (:data:`HDR_NO_KEY`): its event fails."""
        def fail(_event: Any) -> bool:
            raise KeyNotComputed(why)
        return fail

    def owns(self, event: Any) -> bool:
        """True for this replica's events; raises :class:`KeyNotComputed` on replica 0
        for an event whose key cannot be computed (it fails there, once)."""
        try:
            text = key_text(self._key(event))
        except Exception as exc:
            if self.index == 0:
                raise KeyNotComputed(f"partition_by: {exc}") from exc
            return False
        return partition_of(text, self.partitions) == self.index


#: How many keys a producer remembers the partition of, per keyed reader.
KEYS_REMEMBERED = 65536


class Route:
    """One keyed reader of an output port, partitioned at the producer: ``subjects[i]``
    is partition ``i``'s (see :func:`flowstore.names.partition_subjects`)."""

    __slots__ = ("_key", "_known", "partitions", "subjects")

    def __init__(self, key: Callable[[Any], Any], partitions: int, template: str) -> None:
        self._key = key
        self.partitions = partitions
        self.subjects = [f"{template[:-1]}{i}" for i in range(partitions)]
        self._known: dict[int | str, str] = {}  # a string or integer key -> its subject

    def _subject_of(self, key: Any) -> str:
        """The subject of a computed key; those of string and integer keys (the usual
        ones, each seen again and again) are remembered, at most :data:`KEYS_REMEMBERED`."""
        kind = type(key)
        if kind is not int and kind is not str:  # (True == 1, but its text is "true")
            return self.subjects[partition_of(key_text(key), self.partitions)]
        subject = self._known.get(key)
        if subject is None:
            if len(self._known) >= KEYS_REMEMBERED:
                self._known.clear()
            subject = self._known[key] = self.subjects[partition_of(key_text(key),
                                                                    self.partitions)]
        return subject

    def place(self, event: Any) -> tuple[str, str | None]:
        """The subject of ``event``'s partition, and why its key cannot be computed
        (None when it can): such an event goes to partition 0, alone and marked
        (:data:`HDR_NO_KEY`), whose replica fails it (counted, dead-lettered there once,
        as when every replica read every event)."""
        if self.partitions == 1:
            return self.subjects[0], None
        try:
            return self._subject_of(self._key(event)), None
        except Exception as exc:
            return self.subjects[0], f"partition_by: {exc}"


def split_by_subject(routes: list[Route], events: list[Any]
                     ) -> dict[tuple[str, str | None], list[Any]]:
    """Events grouped by the partition subjects they go to (each event once per route),
    in their order within each group (a frame per partition); an event without a key
    under (subject, why)."""
    groups: dict[tuple[str, str | None], list[Any]] = {}
    for route in routes:
        for event in events:
            groups.setdefault(route.place(event), []).append(event)
    return groups
