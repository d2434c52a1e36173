"""Built-in processors: ``filter``, ``transform``, ``route`` and ``batch`` (``python`` is
:mod:`.python_processor`).

Each takes events on the required input port ``in`` (events arriving on any other
input port are processed the same way: a node with several inputs merges them). An
exception raised from ``process`` means "this event failed": the runtime counts it in
``errors`` and dead-letters it with the reason (an expression that reads a field the
event does not have fails the event; it is never a silent drop). Events a processor
discards on purpose are counted with ``ctx.count_filtered()``.
"""

from __future__ import annotations

import collections
import itertools
import operator
import re
from collections.abc import Callable
from typing import Any, Literal, NoReturn

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from componentmanager.component import Component, Context, EventTooLarge, reject_each
from componentmanager.components.expressions import Expression, ExpressionStr, compile_expression
from componentmanager.registry import ComponentType, Port, register

IN = (Port("in", required=True, description="the events to process"),)
OUT = (Port("out", description="the processed events"),)
PORT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
RESERVED_PORTS = frozenset({"dlq"})  # flowctl.<flow>.<node>.dlq is the dead-letter subject


def _require_object(kind: str, event: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise TypeError(f"{kind} needs a JSON object event, got {type(event).__name__}")
    return event


def _not_an_object(event: Any) -> NoReturn:
    """In a frame path: an event that is not a plain dict goes the one-by-one way (which
    takes a dict subclass and says why anything else fails)."""
    raise TypeError(f"not a plain JSON object: {type(event).__name__}")


def _plain_objects(events: list[Any]) -> None:
    """In a frame path: every event a plain dict, or TypeError (see _not_an_object)."""
    if not set(map(type, events)) <= _DICT:
        _not_an_object(next(e for e in events if type(e) is not dict))


_DICT = frozenset({dict})


# ------------------------------------------------------------------------------- filter


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    where: ExpressionStr = Field(
        description="Keep events for which this expression is true, e.g. 'level == \"error\"'."
    )


class Filter(Component):
    """Passes an event on ``out`` when ``where`` is truthy; counts it filtered otherwise.
    A condition that cannot be evaluated on an event fails that event."""

    def __init__(self, config: FilterConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._where = compile_expression(config.where)

    async def process(self, port: str, event: Any) -> None:
        if self._where.evaluate(event):
            await self.ctx.emit("out", event)
        else:
            self.ctx.count_filtered()

    async def process_batch(self, port: str, events: list[Any]) -> bool:
        where = self._where.evaluate
        try:
            kept = [event for event in events if where(event)]  # pure: nothing done yet
        except Exception:
            return False  # one of them fails: each goes its own way
        if kept and not await self.ctx.emit_batch("out", kept):
            return False
        if len(kept) < len(events):
            self.ctx.count_filtered(len(events) - len(kept))
        return True


# ---------------------------------------------------------------------------- transform


def _path(field: str) -> list[str]:
    return field.split(".")


def _set_path(event: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``event[k1][k2]...``, copying nested dicts on the way (never mutating input)."""
    target = event
    for key in keys[:-1]:
        child = target.get(key)
        child = dict(child) if isinstance(child, dict) else {}
        target[key] = child
        target = child
    target[keys[-1]] = value


def _pop_path(event: dict[str, Any], keys: list[str]) -> Any:
    """Remove and return ``event[k1][k2]...`` (None when absent), copying nested dicts."""
    target = event
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            return None
        target[key] = child = dict(child)
        target = child
    return target.pop(keys[-1], None)


class TransformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set: dict[str, ExpressionStr] = Field(
        default_factory=dict,
        description="field -> expression. Every expression sees the input event. A dotted "
        "field (a.b) sets a nested key, creating objects as needed.",
    )
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="old field -> new field, applied after set (dotted paths allowed); "
        "absent fields are skipped.",
    )
    drop: list[str] = Field(
        default_factory=list, description="Fields to remove, applied last (dotted paths allowed)."
    )


class Transform(Component):
    """Computes new fields, renames and drops fields; emits a new event on ``out``."""

    #: what it emits is its own (new events, or events it owned changed in place):
    #: nothing else holds them, so a node fed by it in memory owns them in turn
    emits_owned = True

    def __init__(self, config: TransformConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._set = [(_path(f), compile_expression(e)) for f, e in config.set.items()]
        self._rename = [(_path(a), _path(b)) for a, b in config.rename.items()]
        self._drop = [_path(f) for f in config.drop]
        self.apply_frame = self._apply_each
        self.apply_owned_frame = self._apply_each
        if not self._rename and not self._drop and all(len(k) == 1 for k, _ in self._set):
            self.apply = self._top_level_setter()  # type: ignore[method-assign]
            if len(self._set) == 1:
                self.apply_frame = self._frame_setter()
                ((field,), expr) = self._set[0]
                self.apply_owned_frame = (self.apply_frame if expr.may_read(field)
                                          else self._in_place_setter())

    def _in_place_setter(self) -> Callable[[list[Any]], list[Any]]:
        """``apply_owned_frame``: the field set in the events themselves (no copies).
        Every value first (a failing one and nothing is changed: the frame is taken
        again one by one); then set. Only for an expression that does not read the field
        it sets, so an event taken again (an event that is not an object further on, a
        failed emit) gets the same result; one that fails was never changed."""
        ((field,), expr) = self._set[0]
        values_of = expr.frame

        def set_in_place(events: list[Any]) -> list[Any]:
            # (no type check: events owned are decoded JSON or a transform's dicts, and
            # setting a field of anything but an object raises, before or after some
            # were set: taken again one by one, they get the same values)
            values = values_of(events)
            collections.deque(map(operator.setitem, events, itertools.repeat(field),
                                  values), maxlen=0)  # (each set, in C)
            return events

        return set_in_place

    def _apply_each(self, events: list[Any]) -> list[Any]:
        apply = self.apply
        return [apply(event) for event in events]

    def _frame_setter(self) -> Callable[[list[Any]], list[Any]]:
        """``apply_frame`` for a transform that sets one top-level field: a frame's new
        events in one comprehension (any exception, e.g. an event that is not an object,
        and the frame is taken again one by one through ``apply``, which says why)."""
        ((field,), expr) = self._set[0]
        values_of = expr.frame

        def set_copies(events: list[Any]) -> list[Any]:
            _plain_objects(events)
            return [{**event, field: value}
                    for event, value in zip(events, values_of(events), strict=True)]

        return set_copies

    def _top_level_setter(self) -> Callable[[Any], dict[str, Any]]:
        """``apply`` for the common transform that only sets top-level fields: the same
        result with a fraction of the per-event work (it runs once per event per stage)."""
        fields = [keys[0] for keys, _ in self._set]
        evaluators = [expr.evaluate for _, expr in self._set]
        if len(fields) == 1:
            field, evaluate = fields[0], evaluators[0]

            def set_one(event: Any) -> dict[str, Any]:
                if type(event) is not dict:
                    event = _require_object("transform", event)
                value = evaluate(event)
                out = dict(event)
                out[field] = value
                return out

            return set_one

        def set_many(event: Any) -> dict[str, Any]:
            if type(event) is not dict:
                event = _require_object("transform", event)
            values = [evaluate(event) for evaluate in evaluators]  # all see the input
            out = dict(event)
            out.update(zip(fields, values, strict=True))
            return out

        return set_many

    def apply(self, event: Any) -> dict[str, Any]:
        event = _require_object("transform", event)
        values = [(keys, expr.evaluate(event)) for keys, expr in self._set]
        out = dict(event)
        for keys, value in values:
            if len(keys) == 1:
                out[keys[0]] = value  # a top-level field: the common case
            else:
                _set_path(out, keys, value)
        for old, new in self._rename:
            parent: Any = out
            for key in old[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and old[-1] in parent:
                _set_path(out, new, _pop_path(out, old))
        for keys in self._drop:
            _pop_path(out, keys)
        return out

    async def process(self, port: str, event: Any) -> None:
        await self.ctx.emit("out", self.apply(event))

    async def process_batch(self, port: str, events: list[Any]) -> bool:
        try:
            if getattr(self.ctx, "batch_owned", False):  # events nothing else holds
                outs = self.apply_owned_frame(events)  # (any exception: none changed)
            else:
                outs = self.apply_frame(events)  # pure: nothing done yet
        except Exception:
            return False  # one of them fails: each goes its own way
        return await self.ctx.emit_batch("out", outs)


# -------------------------------------------------------------------------------- route


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: dict[str, ExpressionStr] = Field(
        min_length=1,
        description="output port -> expression; an event goes to the ports whose expression "
        "is true (checked in the order written).",
    )
    default: str | None = Field(
        default=None,
        description="Port for events no route matches; without one they are filtered "
        "(counted in filtered).",
    )
    mode: Literal["all", "first"] = Field(
        default="all", description="all: every matching port; first: only the first match."
    )

    @field_validator("routes")
    @classmethod
    def _route_names(cls, routes: dict[str, str]) -> dict[str, str]:
        for name in routes:
            _check_port(name)
        return routes

    @field_validator("default")
    @classmethod
    def _default_name(cls, name: str | None) -> str | None:
        return None if name is None else _check_port(name)


def _check_port(name: str) -> str:
    if not re.match(PORT_PATTERN, name):
        raise ValueError(f"invalid port name {name!r}: use letters, digits, '_' and '-'")
    if name in RESERVED_PORTS:
        raise ValueError(f"port name {name!r} is reserved")
    return name


def route_outputs(config: dict[str, Any]) -> list[str]:
    """The output ports of a ``route`` node: its route names, then ``default``."""
    routes = config.get("routes") if isinstance(config, dict) else None
    names = [str(n) for n in routes] if isinstance(routes, dict) else []
    default = config.get("default") if isinstance(config, dict) else None
    if isinstance(default, str) and default not in names:
        names.append(default)
    return names


class Route(Component):
    """Sends each event to the output ports whose expression holds."""

    def __init__(self, config: RouteConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: RouteConfig = config
        self._routes: list[tuple[str, Expression]] = [
            (port, compile_expression(text)) for port, text in config.routes.items()
        ]
        self._first = config.mode == "first"

    def ports_for(self, event: Any) -> list[str]:
        ports = []
        for port, expr in self._routes:
            if expr.evaluate(event):
                ports.append(port)
                if self._first:
                    break
        if not ports and self.config.default is not None:
            ports.append(self.config.default)
        return ports

    async def process(self, port: str, event: Any) -> None:
        ports = self.ports_for(event)
        if not ports:
            self.ctx.count_filtered()
        for out in ports:
            await self.ctx.emit(out, event)


# -------------------------------------------------------------------------------- batch


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=100, ge=1, description="Emit a batch when it holds this many events.")
    interval: float | None = Field(
        default=None,
        gt=0,
        description="Also emit the pending events every this many seconds (a time window); "
        "null = only full batches (plus what is left when the node stops).",
    )


class Batch(Component):
    """Groups events into ``{"events": [...], "count": n}`` on ``out``.

    A batch larger than the server takes is split in halves until each part fits (so
    ``size`` is a maximum); an event too large on its own, or a batch that cannot be
    emitted at all, fails: each event in it is counted in ``errors`` and dead-lettered.
    """

    def __init__(self, config: BatchConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: BatchConfig = config
        self.flush_interval = config.interval  # type: ignore[misc]  # per instance
        self._events: list[Any] = []

    async def process(self, port: str, event: Any) -> None:
        self._events.append(event)
        if len(self._events) >= self.config.size:
            await self._emit()

    async def flush(self) -> None:
        if self._events:
            await self._emit()

    def held(self) -> int:
        return len(self._events)

    async def _emit(self) -> None:
        events, self._events = self._events, []  # swap before awaiting: process may interleave
        await self._emit_part(events)

    async def _emit_part(self, events: list[Any]) -> None:
        try:
            await self.ctx.emit("out", {"events": events, "count": len(events)})
        except EventTooLarge as exc:
            if len(events) == 1:
                await reject_each(self.ctx, [msgspec.json.encode(events[0])], str(exc))
                return
            half = len(events) // 2
            await self._emit_part(events[:half])
            await self._emit_part(events[half:])
        except Exception as exc:
            reason = f"batch of {len(events)} not emitted: {type(exc).__name__}: {exc}"
            await reject_each(self.ctx, [msgspec.json.encode(e) for e in events], reason)


_MOD = "componentmanager.components.processors"

register(ComponentType(
    name="filter", role="processor", config_model=FilterConfig, inputs=IN, outputs=OUT,
    description="Keep the events for which an expression is true.",
    impl=f"{_MOD}:Filter", extra={"fusable": True},
    docs="where: an expression over event fields (see expressions). An event it cannot be "
         "evaluated on (a missing field, wrong types) fails: errors, dead-lettered with the "
         "reason. Optional fields: has(x) and x > 3, get(x, 0) > 3.",
))
register(ComponentType(
    name="transform", role="processor", config_model=TransformConfig, inputs=IN, outputs=OUT,
    description="Set, rename and drop event fields.",
    impl=f"{_MOD}:Transform", extra={"fusable": True},
    docs="Order: set (every expression sees the input event), then rename, then drop. "
         "Field names may be dotted paths into nested objects. Emits a new event.",
))
register(ComponentType(
    name="route", role="processor", config_model=RouteConfig, inputs=IN,
    description="Send events to named output ports by expression.",
    impl=f"{_MOD}:Route", dynamic_outputs=True, extra={"outputs_from_config": route_outputs,
                                                 "fusable": True},
    docs="The output ports are the keys of routes (plus default). mode all sends to every "
         "matching port, first to the first match; unmatched events go to default or are "
         "filtered (counted).",
))
register(ComponentType(
    name="batch", role="processor", config_model=BatchConfig, inputs=IN, outputs=OUT,
    description="Group events into batches by count and/or time.",
    impl=f"{_MOD}:Batch",
    docs='Emits {"events": [...], "count": n} when size events are pending, every interval '
         "seconds if set, and once more when the node stops.",
))
