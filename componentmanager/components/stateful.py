"""Built-in stateful processors: ``window`` and ``join`` (pure cores in :mod:`.windowing`).

Both keep per-key state that survives restarts and failover: the runner checkpoints
``snapshot()`` with the input positions (:mod:`componentmanager.runners.state`) and a
node with several replicas is partitioned by its ``key``, so one key's events always
meet in one replica. ``flush()`` is their clock: it closes what is due.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from componentmanager.component import Component, Context, EventError, EventTooLarge
from componentmanager.components.expressions import ExpressionStr, compile_expression
from componentmanager.components.windowing import (
    Aggregations,
    KeyedWindows,
    Seconds,
    Shape,
    event_seconds,
    group_frame,
    groupable,
    iso,
    parse_aggregation,
)
from componentmanager.dataplane import encode
from componentmanager.dataplane.partition import key_text
from componentmanager.registry import ComponentType, Port, register

#: The clock tick of a window or join: at most this long between checks.
TICK_S = 0.25
#: What the dead letter of a window result too large to send keeps of it.
PREVIEW_BYTES = 1024
NO_KEY = "null"
#: What each kind of window needs of size, slide and gap.
_NEEDS = {"tumbling": ("size",), "sliding": ("size", "slide"), "session": ("gap",)}

# ------------------------------------------------------------------------------- window


class WindowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["tumbling", "sliding", "session"] = Field(
        default="tumbling", description="tumbling (size), sliding (size, slide) or "
        "session (gap).")
    size: Seconds | None = Field(default=None, gt=0, validate_default=True,
                                 description="Window length: 10, 10s, 500ms, 5m, 1h "
                                 "(tumbling and sliding).")
    slide: Seconds | None = Field(default=None, gt=0, validate_default=True,
                                  description="Sliding: a new window starts every slide "
                                  "(at most size).")
    gap: Seconds | None = Field(default=None, gt=0, validate_default=True,
                                description="Session: a key's window closes after this "
                                "long without an event of it.")
    key: ExpressionStr | None = Field(default=None, description="Group by this expression "
                                      "(one window per key); null: one window for all.")
    time: ExpressionStr | None = Field(
        default=None, description="Event time: an expression giving epoch seconds or an "
        "ISO-8601 string (e.g. ts); null: processing time (when the event arrives).")
    lateness: Seconds = Field(default=0.0, ge=0, description="Event time: how far behind "
                              "the latest event time an event may arrive and still count.")
    idle_timeout: Seconds | None = Field(
        default=None, gt=0, description="Event time: after this long without any event, "
        "every open window closes (default: its size or gap plus lateness, at least 1s).")
    aggregate: dict[str, str] = Field(
        default_factory=lambda: {"count": "count"},
        description="output field -> count | sum(expr) | min(expr) | max(expr) | "
        "avg(expr) | first(expr) | last(expr) | collect(expr).")

    @field_validator("aggregate")
    @classmethod
    def _aggregations(cls, aggregate: dict[str, str]) -> dict[str, str]:
        if not aggregate:
            raise ValueError("aggregate is empty: name at least one, e.g. {count: count}")
        problems = []  # every one at once, not one per run of validate
        for name, text in aggregate.items():
            if name in ("key", "start", "end"):
                problems.append(f"field {name!r} is taken by the window's own fields "
                                "(key, start, end)")
                continue
            try:
                _, arg = parse_aggregation(str(text))
                if arg is not None:
                    compile_expression(arg)
            except ValueError as exc:  # ExpressionError is one
                problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return aggregate

    @field_validator("size", "slide", "gap", mode="after")
    @classmethod
    def _fits_kind(cls, value: float | None, info: ValidationInfo) -> float | None:
        """Each of size, slide, gap: needed by the window's kind, or not applying to it
        (checked per field, so every problem is said at once, at its own field)."""
        kind = info.data.get("kind")
        if kind is None:  # the kind itself is wrong: it says so
            return value
        if info.field_name in _NEEDS[kind] and value is None:
            raise ValueError(f"a {kind} window needs {info.field_name}")
        if info.field_name not in _NEEDS[kind] and value is not None:
            raise ValueError(f"{info.field_name} does not apply to a {kind} window")
        return value

    @field_validator("lateness", "idle_timeout", mode="after")
    @classmethod
    def _event_time_only(cls, value: float | None, info: ValidationInfo) -> float | None:
        # (time absent from info.data: it failed on its own, and says so)
        if value and "time" in info.data and info.data["time"] is None:
            raise ValueError(f"{info.field_name} applies to event time: set time (or "
                             f"remove {info.field_name})")
        return value

    @model_validator(mode="after")
    def _slide(self) -> WindowConfig:
        if self.kind == "sliding" and self.slide and self.size and self.slide > self.size:
            raise ValueError("slide is longer than size: events between windows would be "
                             "missed (use a tumbling window, or slide <= size)")
        return self

    def span(self) -> float:
        return float(self.size or self.gap or 1.0)


def _getter(text: str | None) -> Any:
    return None if text is None else compile_expression(text).evaluate


class Window(Component):
    """Aggregates events per key per window; emits one event per closed window on
    ``out``, late events on ``late``."""

    stateful = True

    def __init__(self, config: WindowConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: WindowConfig = config
        self.flush_interval = min(TICK_S, config.span() / 4)  # type: ignore[misc]
        self._key = _getter(config.key)
        self._time = _getter(config.time)
        fields = {}
        for name, text in config.aggregate.items():
            func, arg = parse_aggregation(text)
            fields[name] = (func, _getter(arg))
        self.aggregations = Aggregations(fields)
        shape = Shape(config.kind, float(config.size or 0), float(config.slide or 0),
                      float(config.gap or 0))
        self.windows = KeyedWindows(shape, self.aggregations)
        self._grouped = groupable(shape, self.aggregations)
        self._max_time = float("-inf")  # event time: the latest seen
        self._closed_through = float("-inf")  # event time: idle closing moved it here
        self._last_arrival = time.monotonic()
        self._idle = config.idle_timeout or max(1.0, config.span() + config.lateness)

    def held(self) -> int:
        """Events in open windows (an event in several sliding windows counts in each)."""
        return self.windows.held()

    def watermark(self) -> float:
        if self._time is None:
            return time.time()
        return max(self._max_time - self.config.lateness, self._closed_through)

    def _key_text(self, event: Any) -> str:
        return NO_KEY if self._key is None else key_text(self._key(event))

    async def process(self, port: str, event: Any) -> None:
        key = self._key_text(event)
        try:
            t = time.time() if self._time is None else event_seconds(self._time(event))
        except ValueError as exc:
            raise EventError(str(exc)) from None
        values = self.aggregations.values(event)
        self._last_arrival = time.monotonic()
        # (processing time: the event's own time is the clock, so it is never late)
        if not self.windows.add(key, t, values, t if self._time is None else self.watermark()):
            await self.ctx.emit("late", event)
            return
        if self._time is not None and t > self._max_time:
            self._max_time = t
            await self._close(self.watermark())

    async def process_batch(self, port: str, events: list[Any]) -> int:
        """A frame's events as :meth:`process` takes them, up to the first that needs
        ``process`` itself (the runner then hands it there and offers the rest again):
        one that fails, one that is late (emitted on ``late``), and with event time one
        that moves the watermark past a window's end (its closing emits there). Processing
        time: the frame's events arrived together, at one time."""
        keyed, timed, windows = self._key, self._time, self.windows
        if timed is None and self._grouped:  # one window update per key, not per event
            groups, taken = group_frame(events, self._key_text, self.aggregations)
            t = time.time()
            for key, (n, acc) in groups.items():
                windows.add_group(key, t, n, acc, t)  # (processing time: never late)
            if taken:
                self._last_arrival = time.monotonic()
            return taken
        values_of, lateness = self.aggregations.values, self.config.lateness
        t = watermark = time.time()
        taken = 0
        for event in events:
            try:
                key = NO_KEY if keyed is None else key_text(keyed(event))
                if timed is not None:
                    t = event_seconds(timed(event))
                values = values_of(event)
            except Exception:
                break  # it fails in process, the same way
            if timed is not None:
                watermark = self._max_time - lateness  # (as watermark() gives it)
                if watermark < self._closed_through:
                    watermark = self._closed_through
                if t > self._max_time and windows.due(
                        max(t - lateness, self._closed_through)):
                    break  # process closes what its time makes due
            try:
                if not windows.add(key, t, values, watermark):
                    break  # late: process emits it on port late
            except Exception:
                break  # (nothing changed) it fails in process, the same way
            if timed is not None and t > self._max_time:
                self._max_time = t
            taken += 1
        if taken:
            self._last_arrival = time.monotonic()
        return taken

    async def flush(self) -> None:
        """The tick: close the windows whose end the watermark (or idleness) reached."""
        quiet = getattr(self.ctx, "inputs_quiet", None)  # a stalled input is not idle
        if (self._time is not None and time.monotonic() - self._last_arrival >= self._idle
                and (quiet is None or quiet())):
            latest = self.windows.latest_end()
            if latest is not None:
                self._closed_through = max(self._closed_through, latest)
        await self._close(self.watermark())

    async def _close(self, watermark: float) -> None:
        for key, start, window in self.windows.close(watermark):
            out: dict[str, Any] = {} if self._key is None else {"key": json.loads(key)}
            out.update(start=iso(start), end=iso(window["end"]))
            out.update(self.aggregations.results(window["acc"]))
            try:
                await self.ctx.emit("out", out)
            except EventTooLarge as exc:  # counted and dead-lettered (a preview), never
                await self.ctx.reject(encode(out)[:PREVIEW_BYTES], str(exc))  # silent

    def snapshot(self) -> dict[str, Any]:
        return {"keys": self.windows.open, "max_time": self._max_time,
                "closed_through": self._closed_through}

    def restore(self, parts: list[dict[str, Any]]) -> None:
        for part in parts:
            self.windows.load(part.get("keys") or {})
            self._max_time = max(self._max_time, float(part.get("max_time", "-inf")))
            self._closed_through = max(self._closed_through,
                                       float(part.get("closed_through", "-inf")))


# --------------------------------------------------------------------------------- join


class JoinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: ExpressionStr = Field(description="Correlate events whose key expression is "
                               "equal (e.g. order_id).")
    within: Seconds = Field(default=10.0, gt=0, description="How long an event waits "
                            "for its partners from the other inputs.")
    timeout: Literal["emit", "drop"] = Field(
        default="emit", description="An event whose partners did not come within: emit "
        "it on port timeout, or drop it (counted in filtered).")


class Join(Component):
    """Emits ``{"key": k, "<input>": event, ...}`` once every input has an event of key
    ``k``; the inputs are named after the upstream nodes."""

    stateful = True

    def __init__(self, config: JoinConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: JoinConfig = config
        self.flush_interval = min(TICK_S, config.within / 4)  # type: ignore[misc]
        self._key = compile_expression(config.key).evaluate
        self.inputs = list(getattr(ctx, "input_ports", []) or [])
        #: key -> input -> [[arrival epoch seconds, event], ...] (oldest first)
        self.groups: dict[str, dict[str, list[list[Any]]]] = {}

    async def process(self, port: str, event: Any) -> None:
        key = key_text(self._key(event))
        group = self.groups.setdefault(key, {})
        group.setdefault(port, []).append([time.time(), event])
        if all(group.get(name) for name in self.inputs):
            combined: dict[str, Any] = {"key": json.loads(key)}
            for name in self.inputs:
                combined[name] = group[name].pop(0)[1]
            self._prune(key)
            await self.ctx.emit("out", combined)

    async def process_batch(self, port: str, events: list[Any]) -> int:
        """A frame's events as :meth:`process` takes them, up to the first that completes
        a pair or fails (the runner hands it to ``process``, which emits, and offers the
        rest again)."""
        keyed, groups, inputs = self._key, self.groups, self.inputs
        now, taken = time.time(), 0
        for event in events:
            try:
                key = key_text(keyed(event))
            except Exception:
                break  # it fails in process, the same way
            group = groups.get(key) or {}
            if all(group.get(name) for name in inputs if name != port):
                break  # it completes a pair: process emits it
            groups.setdefault(key, group).setdefault(port, []).append([now, event])
            taken += 1
        return taken

    def held(self) -> int:
        """Events waiting for their partners."""
        return sum(len(w) for group in self.groups.values() for w in group.values())

    def _prune(self, key: str) -> None:
        group = self.groups[key]
        for name in [n for n, waiting in group.items() if not waiting]:
            del group[name]
        if not group:
            del self.groups[key]

    async def flush(self) -> None:
        """The tick: events that waited ``within`` for their partners time out."""
        deadline = time.time() - self.config.within
        for key in list(self.groups):
            group = self.groups[key]
            for name, waiting in group.items():
                while waiting and waiting[0][0] <= deadline:
                    _, event = waiting.pop(0)
                    await self._timed_out(key, name, event, group)
            self._prune(key)

    async def _timed_out(self, key: str, name: str, event: Any,
                         group: dict[str, list[list[Any]]]) -> None:
        if self.config.timeout == "drop":
            self.ctx.count_filtered()
            return
        missing = [n for n in self.inputs if n != name and not group.get(n)]
        await self.ctx.emit("timeout", {"key": json.loads(key), "input": name,
                                        "event": event, "missing": missing})

    def snapshot(self) -> dict[str, Any]:
        return {"keys": self.groups}

    def restore(self, parts: list[dict[str, Any]]) -> None:
        for part in parts:
            self.groups.update(part.get("keys") or {})


_MOD = "componentmanager.components.stateful"


def _silent_join_outputs(config: dict[str, Any]) -> list[str]:
    """Ports that send nothing with this config (no unused-output warning for them)."""
    return ["timeout"] if config.get("timeout") == "drop" else []

register(ComponentType(
    name="window", role="processor", config_model=WindowConfig,
    inputs=(Port("in", required=True, description="the events to aggregate"),),
    outputs=(Port("out", description="one event per key per closed window"),
             Port("late", description="events that came after their windows closed")),
    description="Aggregate events per key over tumbling, sliding or session windows.",
    impl=f"{_MOD}:Window", extra={"stateful": True},
    docs='Emits {"key": k, "start": iso, "end": iso, <aggregate fields>} per closed '
         "window (key only when key is set). Event time (time: ts) closes a window when "
         "the latest event time less lateness passes its end (or after idle_timeout "
         "without events); processing time on the clock. State is checkpointed: a "
         "restarted or moved replica resumes its open windows. With replicas > 1 the node "
         "is partitioned by key.",
))
register(ComponentType(
    name="join", role="processor", config_model=JoinConfig,
    inputs=(Port("in", required=True,
                 description="two or more upstream nodes; each is an input named after it"),),
    outputs=(Port("out", description='{"key": k, "<input>": event, ...}'),
             Port("timeout", description="events whose partners did not come within")),
    description="Correlate events of two or more inputs by key within a time window.",
    impl=f"{_MOD}:Join", extra={"stateful": True, "inputs_by_upstream": True,
                                "silent_outputs": _silent_join_outputs},
    docs='inputs: [orders, payments] -> emits {"key": k, "orders": {...}, "payments": '
         '{...}} once both have an event with that key (oldest first). An event waiting '
         'longer than within goes to port timeout as {"key", "input", "event", "missing"} '
         "(or is dropped and counted in filtered with timeout: drop). State is "
         "checkpointed; with replicas > 1 the node is partitioned by key.",
))
