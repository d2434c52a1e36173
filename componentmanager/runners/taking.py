"""Taking the events of one input message: in frames where the component can, one by one
where it must. Mixin of :class:`~componentmanager.runners.delivery.InputDelivery`, used by
both delivery modes (at-most-once: :mod:`.core_inputs`; acked: :mod:`.delivery`).

A component with ``process_batch`` is offered the message's events (this partition's,
for a ``partition_by`` node) at once. It answers True (all taken), False (none: each goes
through ``process``), or a number n: the first n are taken, the next one goes through
``process`` (one that fails, is late, or closes windows: exactly what the one-by-one path
does with it) and the events after it are offered again. What goes one by one is counted,
failed and dead-lettered per event (``fail``). Input handling gives the loop a turn
(``turn``) every :data:`YIELD_EVERY` events taken one by one, every
:data:`YIELD_EVERY_BATCHED` taken in frames.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from componentmanager.dataplane.partition import KeyNotComputed
from componentmanager.dataplane.wire import decode_frame, frame_count, raw_frame

#: Input handling gives the loop a turn after this many events (taken one by one), or
#: this many taken in frames at once (a turn per frame halves the at-least-once rate).
YIELD_EVERY = 8
YIELD_EVERY_BATCHED = 1024

class Numbered(Sequence[tuple[int, Any]]):
    """A message's events as (index in the message, event) pairs, made only when asked
    for: the common path offers the events list itself (no pair per event)."""

    __slots__ = ("events",)

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(enumerate(self.events))[index]
        return (index, self.events[index])

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return enumerate(self.events)


Indexed = Sequence[tuple[int, Any]]  # (index in its message, event)
Fail = Callable[[int, Any, Exception], Awaitable[None]]
Turn = Callable[[], Awaitable[None]]


class FrameTaking:
    """Offer frames, take the rest one by one (see the module doc)."""

    # provided by the replica
    cfg: Any
    counters: Any
    component: Any
    _since_yield: int = 0
    _current_event: tuple[Any, int] | None = None
    #: the context's ``batch_owned``: True while ``process_batch`` takes decoded events
    batch_owned: bool = False

    def _events_of(self, comp: Any, msg: Any) -> list[Any]:
        """The events of input message ``msg``: decoded, or as their JSON for a component
        that ``takes_raw_json``, unless the node is partitioned (keys are computed on
        decoded events: sorting out partitions, a rescale's inherited floors)."""
        count = frame_count(msg.headers)
        if getattr(comp, "takes_raw_json", False) and not self.cfg.partition_by:
            return raw_frame(msg.data, count)
        return decode_frame(msg.data, count)

    @staticmethod
    def _mine(indexed: Indexed, owns: Any) -> tuple[Indexed, bool]:
        """This partition's events, and whether they were sorted out here (False: a key
        cannot be computed; then each is checked as it is taken, and fails on replica 0)."""
        if owns is None:
            return indexed, True
        try:
            return [item for item in indexed if owns(item[1])], True
        except KeyNotComputed:
            return indexed, False

    async def _offer(self, comp: Any, port: str, events: list[Any]) -> int | None:
        """``events`` through ``process_batch``: how many it took (None: none, and the
        rest of the message goes one by one)."""
        self.batch_owned = True  # (read by the component before its first await)
        try:
            took = await comp.process_batch(port, events)
        except Exception:  # (a write or a publish failed): each event its own way, where
            return None    # failures are retried, counted and dead-lettered one by one
        finally:
            self.batch_owned = False
        if took is True:
            took = len(events)
        elif took is False or took is None:
            return None
        self.counters.in_ += took
        self._since_yield += took
        return int(took)

    async def _take_events(self, comp: Any, port: str, headers: Any, indexed: Indexed,
                           fail: Fail, turn: Turn, owns: Any = None
                           ) -> tuple[int, int | None]:
        """Take ``indexed``: (events taken, None), or (events taken, events left) when the
        replica stopped midway (those are never taken here). ``owns``: which events are
        this replica's (None: all; see ``_owns_for``)."""
        pending, sorted_out = self._mine(indexed, owns)
        owns = None if sorted_out else owns
        offered = None
        if sorted_out and len(pending) > 1:
            offered = (pending.events if isinstance(pending, Numbered)
                       else [e for _, e in pending])
        taken = pos = 0
        counters = self.counters
        while pos < len(pending):
            if offered is not None and len(pending) - pos > 1:
                took = await self._offer(comp, port, offered[pos:] if pos else offered)
                if took is None:
                    offered = None
                else:
                    taken += took
                    pos += took
                    if self._since_yield >= YIELD_EVERY_BATCHED:
                        self._since_yield = 0
                        await turn()
                    if pos >= len(pending):
                        break
            if self.component is not comp:
                return taken, len(pending) - pos  # stopped mid-message
            index, event = pending[pos]
            pos += 1
            counters.in_ += 1
            taken += 1
            try:
                if owns is not None and not owns(event):
                    counters.in_ -= 1  # another partition's: its replica counts it
                    taken -= 1
                    continue
                self._current_event = (headers, index)
                await comp.process(port, event)  # the common case, inline
            except Exception as exc:
                await fail(index, event, exc)
            self._since_yield += 1
            if self._since_yield >= YIELD_EVERY:
                self._since_yield = 0
                await turn()
        self._current_event = None
        return taken, None
