"""The pure core of the ``window`` processor: durations, aggregations, window assignment
and closing. No I/O, no clock: the component passes times in (epoch seconds).

* **tumbling** windows of ``size``: ``[k*size, (k+1)*size)``;
* **sliding** windows of ``size`` every ``slide``: an event is in every window
  ``[k*slide, k*slide+size)`` that contains it;
* **session** windows per key: events closer than ``gap`` to each other form one
  window, ``[first, last + gap)``; an event that bridges two sessions merges them.

A window closes when the watermark reaches its end. The watermark is the largest event
time seen less the allowed ``lateness`` (event time), or the clock (processing time). An
event whose every window is closed already is *late*. All state is JSON (for checkpoints):
per key, tumbling/sliding windows by start, sessions as a list.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

from componentmanager.component import EventError
from componentmanager.components.expressions.functions import kind

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_seconds(value: Any) -> Any:
    """``10``, ``2.5``, ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"1d"`` -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found:
            return float(found.group(1)) * _UNIT_S[found.group(2)]
        raise ValueError(f"{value!r} is not a duration: write 10, 10s, 500ms, 5m or 1h")
    return value


Seconds = Annotated[float, BeforeValidator(parse_seconds)]

# ----------------------------------------------------------------------------- aggregations

AGGREGATIONS = ("count", "sum", "min", "max", "avg", "first", "last", "collect")
_AGG = re.compile(r"^\s*([a-z]+)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def parse_aggregation(text: str) -> tuple[str, str | None]:
    """``"count"`` -> ("count", None); ``"sum(amount)"`` -> ("sum", "amount")."""
    found = _AGG.match(text)
    if not found or found.group(1) not in AGGREGATIONS:
        close = difflib.get_close_matches(found.group(1) if found else text, AGGREGATIONS, 1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{text!r} is not an aggregation: {hint}write count, or one of "
                         f"{', '.join(a + '(expr)' for a in AGGREGATIONS[1:])}")
    func, arg = found.group(1), (found.group(2) or "").strip() or None
    if func != "count" and arg is None:
        raise ValueError(f"{func} needs an expression, e.g. {func}(amount)")
    return func, arg


#: The aggregations whose values are checked (:func:`check_value`).
_CHECKED = ("sum", "avg", "min", "max")


def check_value(name: str, func: str, value: Any) -> None:
    """An event's value for one aggregation, checked before any window changes: sum and
    avg take numbers, min and max numbers or strings (a bool is not a number)."""
    what = "null (write get(x, 0) for a default)" if value is None else \
        f"{kind(value)} {value!r}"
    if func in ("sum", "avg") and kind(value) != "number":
        raise EventError(f"aggregate {name}: {func} needs numbers, got {what}")
    if func in ("min", "max") and kind(value) not in ("number", "string"):
        raise EventError(f"aggregate {name}: {func} needs numbers or strings, got {what}")


def add_value(func: str, acc: Any, value: Any) -> Any:
    """The accumulator of ``func`` after one more value (``acc`` None: the first);
    ``count(expr)`` counts the events whose value is not null."""
    if func == "count":
        return (acc or 0) + (value is not None)
    if func == "collect":
        return [*(acc or []), value]
    if func == "avg":
        total, n = acc or (0, 0)
        return [total + value, n + 1]
    if acc is None:
        return [value]  # min, max, first, last, sum: boxed, so a null value is kept
    if func == "sum":
        return [acc[0] + value]
    if func in ("min", "max") and kind(value) != kind(acc[0]):
        raise EventError(f"{func} cannot compare {kind(value)} {value!r} with the "
                         f"{kind(acc[0])} {acc[0]!r} of this window")
    if func == "min":
        return [value] if value < acc[0] else acc
    if func == "max":
        return [value] if value > acc[0] else acc
    if func == "last":
        return [value]
    return acc  # first


def merge_values(func: str, a: Any, b: Any) -> Any:
    """Two accumulators of ``func`` as one (sessions merging); ``b`` came later."""
    if a is None or b is None:
        return b if a is None else a
    if func == "count":
        return a + b
    if func == "collect":
        return [*a, *b]
    if func == "avg":
        return [a[0] + b[0], a[1] + b[1]]
    if func == "sum":
        return [a[0] + b[0]]
    if func == "min":
        return a if a[0] <= b[0] else b
    if func == "max":
        return a if a[0] >= b[0] else b
    return b if func == "last" else a


def result_of(func: str, acc: Any) -> Any:
    if func in ("count", "collect"):
        return acc if acc is not None else (0 if func == "count" else [])
    if acc is None:
        return None
    if func == "avg":
        return acc[0] / acc[1] if acc[1] else None
    return acc[0]


# ----------------------------------------------------------------------------- windows


def iso(seconds: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds (``2026-11-25T23:00:01.000Z``)."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


#: Event times beyond this many seconds from 1970 (about year 5000) are mistakes.
EVENT_TIME_LIMIT_S = 1e11


def event_seconds(value: Any) -> float:
    """An event-time field as epoch seconds: a number (seconds) or an ISO-8601 string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not -EVENT_TIME_LIMIT_S < value < EVENT_TIME_LIMIT_S:  # also NaN, infinity
            raise ValueError(f"event time {value!r} is out of range (epoch seconds, "
                             "up to about the year 5000; milliseconds? divide by 1000)")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"event time {value!r} is not ISO-8601") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise ValueError(f"event time must be epoch seconds or an ISO-8601 string, "
                     f"not {type(value).__name__}")


@dataclass(frozen=True)
class Shape:
    kind: str  # tumbling | sliding | session
    size: float = 0.0
    slide: float = 0.0
    gap: float = 0.0

    def starts(self, t: float) -> list[float]:
        """Tumbling and sliding: the starts of the windows that contain ``t``."""
        step = self.size if self.kind == "tumbling" else self.slide
        last = math.floor(t / step)
        first = last if self.kind == "tumbling" else math.floor((t - self.size) / step) + 1
        return [round(float(k * step), 9) for k in range(first, last + 1)
                if k * step <= t < k * step + self.size]


class Aggregations:
    """The ``aggregate`` of a window: output field -> (function, value getter or None)."""

    def __init__(self, fields: dict[str, tuple[str, Callable[[Any], Any] | None]]) -> None:
        self.fields = fields
        self._funcs = [func for func, _ in fields.values()]
        #: (name, function, getter, whether its values are checked): once per event
        self._readers = [(name, func, get, func in _CHECKED)
                         for name, (func, get) in fields.items()]

    def values(self, event: Any) -> list[Any]:
        """What each aggregation reads from one event (evaluated and checked before any
        window changes, so an event that fails changes nothing; ``count`` reads True)."""
        values = []
        for name, func, get, checked in self._readers:
            if get is None:
                values.append(True)
                continue
            value = get(event)
            if checked:
                check_value(name, func, value)
            values.append(value)
        return values

    def accumulate(self, accs: list[Any] | None, values: list[Any]) -> list[Any]:
        if accs is None:
            return [add_value(func, None, value)
                    for func, value in zip(self._funcs, values, strict=True)]
        return [add_value(func, acc, value)
                for func, acc, value in zip(self._funcs, accs, values, strict=True)]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return [merge_values(func, x, y)
                for (func, _), x, y in zip(self.fields.values(), a, b, strict=True)]

    def results(self, accs: list[Any] | None) -> dict[str, Any]:
        accs = accs or [None] * len(self.fields)
        return {name: result_of(func, acc)
                for (name, (func, _)), acc in zip(self.fields.items(), accs, strict=True)}


def groupable(shape: Shape, aggregations: Aggregations) -> bool:
    """Can a frame's events be accumulated per key first, then put in their windows
    together (:func:`group_frame`)? Not sessions (each event moves its session), not
    ``min``/``max`` (merging two accumulators can fail: a number after strings)."""
    return shape.kind != "session" and not {"min", "max"} & set(aggregations._funcs)


def group_frame(events: list[Any], key_of: Callable[[Any], str],
                aggregations: Aggregations) -> tuple[dict[str, tuple[int, list[Any]]], int]:
    """Processing time (a frame's events share their time): per key, how many events and
    their accumulators, over the events up to the first that fails (how many were taken
    is returned with them; that one fails in ``process``, the same way). When every
    aggregation is a plain ``count`` no value is read at all."""
    counts: dict[str, int] = {}
    taken = 0
    if all(get is None for _, _, get, _ in aggregations._readers):
        for event in events:
            try:
                key = key_of(event)
            except Exception:
                break
            counts[key] = counts.get(key, 0) + 1
            taken += 1
        width = len(aggregations._funcs)
        return {key: (n, [n] * width) for key, n in counts.items()}, taken
    values_of, accumulate = aggregations.values, aggregations.accumulate
    groups: dict[str, tuple[int, list[Any]]] = {}
    for event in events:
        try:
            key = key_of(event)
            group = groups.get(key)
            acc = accumulate(None if group is None else group[1], values_of(event))
        except Exception:
            break
        groups[key] = (1 if group is None else group[0] + 1, acc)
        taken += 1
    return groups, taken


class KeyedWindows:
    """Open windows per key, as JSON-ready data (see the module doc); each window keeps
    the accumulators of :class:`Aggregations` over the values of its events."""

    def __init__(self, shape: Shape, aggregations: Aggregations) -> None:
        self.shape = shape
        self._accumulate = aggregations.accumulate
        self._merge = aggregations.merge
        #: key -> {start: {"end": e, "n": events, "acc": [...]}} (sessions: start = first)
        self.open: dict[str, dict[str, dict[str, Any]]] = {}
        #: no open window ends before this (a lower bound: a close below it scans nothing)
        self._earliest = float("inf")
        #: (see _placed) t, watermark, tumbling: (k, low, high): the window k holds low..high
        self._placed_for: tuple[float, float, tuple[int, float, float]] = (
            math.nan, math.nan, (0, math.nan, math.nan))
        self._placed_last: list[tuple[str, float]] = []

    def load(self, windows: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Take in checkpointed open windows."""
        self.open.update(windows)
        self._earliest = float("-inf")  # unknown: the next close looks

    def held(self) -> int:
        return sum(w["n"] for wins in self.open.values() for w in wins.values())

    def add(self, key: str, t: float, values: list[Any], watermark: float) -> bool:
        """Put an event (its aggregation values) in its windows; False when it is late
        (every window it belongs to is closed). An event that fails (a ``min`` of a
        number after strings) changes nothing."""
        if self.shape.kind == "session":
            return self._add_session(key, t, values, watermark)
        placed = self._placed(t, watermark)
        if not placed:
            return False
        wins = self.open.get(key)
        if len(placed) == 1:  # tumbling: one window (the hot path)
            name, end = placed[0]
            slot = None if wins is None else wins.get(name)
            if slot is None:
                acc = self._accumulate(None, values)
                if wins is None:
                    wins = self.open[key] = {}
                wins[name] = {"end": end, "n": 1, "acc": acc}
            else:
                slot["acc"] = self._accumulate(slot["acc"], values)
                slot["n"] += 1
        else:
            slots = [None if wins is None else wins.get(name) for name, _ in placed]
            accs = [self._accumulate(slot and slot["acc"], values) for slot in slots]
            if wins is None:
                wins = self.open[key] = {}
            for (name, end), slot, acc in zip(placed, slots, accs, strict=True):
                if slot is None:
                    wins[name] = {"end": end, "n": 1, "acc": acc}
                else:
                    slot["acc"] = acc
                    slot["n"] += 1
        if placed[0][1] < self._earliest:
            self._earliest = placed[0][1]
        return True

    def add_group(self, key: str, t: float, n: int, acc: list[Any], watermark: float) -> bool:
        """Put ``n`` events of ``key`` at ``t``, accumulated together in ``acc`` (see
        :func:`group_frame`), in their windows, as ``n`` calls of :meth:`add` would."""
        placed = self._placed(t, watermark)
        if not placed:
            return False
        wins = self.open.get(key)
        if wins is None:
            wins = self.open[key] = {}
        for name, end in placed:
            slot = wins.get(name)
            if slot is None:
                wins[name] = {"end": end, "n": n, "acc": list(acc)}
            else:
                slot["acc"] = self._merge(slot["acc"], acc)
                slot["n"] += n
        if placed[0][1] < self._earliest:
            self._earliest = placed[0][1]
        return True

    def _placed(self, t: float, watermark: float) -> list[tuple[str, float]]:
        """Tumbling and sliding: the open windows an event at ``t`` belongs to, as (start
        as named in :attr:`open`, end), earliest first. The last answer is kept: the
        events of a frame at processing time share their time, and a tumbling window
        takes the following events (in time order) while they fall in it."""
        last = self._placed_for
        if t == last[0] and watermark == last[1]:
            return self._placed_last
        shape = self.shape
        if shape.kind == "tumbling" and self._placed_last:
            k, low, high = last[2]
            if (low <= t < high and watermark < self._placed_last[0][1]
                    and math.floor(t / shape.size) == k):  # (as Shape.starts finds it)
                self._placed_for = (t, watermark, last[2])
                return self._placed_last
        size = shape.size
        k = math.floor(t / size)
        self._placed_for = (t, watermark, (k, k * size, k * size + size))
        self._placed_last = [(repr(s), s + size) for s in shape.starts(t)
                             if s + size > watermark]
        return self._placed_last

    def due(self, watermark: float) -> bool:
        """Would :meth:`close` at ``watermark`` close anything? (False: surely not.)"""
        return watermark >= self._earliest

    def _add_session(self, key: str, t: float, values: list[Any], watermark: float) -> bool:
        gap = self.shape.gap
        if t + gap <= watermark:
            return False
        wins = self.open.get(key) or {}
        touching = sorted((float(s), w) for s, w in wins.items()
                          if float(s) - gap <= t < w["end"])
        slot = {"end": t + gap, "n": 1, "acc": self._accumulate(None, values)}
        start = t
        for s, w in touching:  # merged in time order: first/last stay right
            if s <= t:
                slot["acc"] = self._merge(w["acc"], slot["acc"])
            else:
                slot["acc"] = self._merge(slot["acc"], w["acc"])
            slot["n"] += w["n"]
            slot["end"] = max(slot["end"], w["end"])
            start = min(start, s)
        wins = self.open.setdefault(key, wins)  # (nothing changed before: a merge may fail)
        for s, _ in touching:
            del wins[repr(s)]
        wins[repr(start)] = slot
        self._earliest = min(self._earliest, slot["end"])
        return True

    def close(self, watermark: float) -> list[tuple[str, float, dict[str, Any]]]:
        """Remove and return the windows whose end the watermark reached, in end order:
        (key, start, window). Looks at the open windows only when one may be due."""
        closed: list[tuple[str, float, dict[str, Any]]] = []
        if watermark < self._earliest:
            return closed
        for key in list(self.open):
            wins = self.open[key]
            for start in [s for s, w in wins.items() if w["end"] <= watermark]:
                closed.append((key, float(start), wins.pop(start)))
            if not wins:
                del self.open[key]
        self._earliest = min((w["end"] for wins in self.open.values() for w in wins.values()),
                             default=float("inf"))
        closed.sort(key=lambda item: (item[2]["end"], item[1]))
        return closed

    def latest_end(self) -> float | None:
        ends = [w["end"] for wins in self.open.values() for w in wins.values()]
        return max(ends) if ends else None
