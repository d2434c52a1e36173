"""``custom`` sources, processors and sinks: Python written inline in the flow file.

Each takes ``code:`` and runs it in-process, only where the agent allows inline code
(``flowctl run`` and ``dev`` do unless ``--no-inline-code``; ``flowctl agent`` with
``--allow-inline-code``), with the delivery and accounting of the built-ins:

* source: ``events()``, a generator or async generator (or a function returning an
  iterable); every value it yields is an event on ``out``; returning ends the source. A
  value that is not JSON is counted in ``errors`` and dead-lettered, the source goes on;
  an exception fails the replica (its restart policy applies). It has no position: a
  restarted source starts ``events()`` again.
* processor: ``process(event)`` returns an event, a list of events, or None (or ``[]``)
  to drop it (counted in ``filtered``), as the ``python`` processor, whose class it is.
* sink: ``write(event)`` writes one event out (counted in ``out``); optional ``flush()``
  is called before the sink stops, optional ``close()`` at its end. An exception in
  ``write`` fails that event: counted in ``errors`` and dead-lettered.

Any of these functions may be ``async``; a synchronous one that blocks (a call over
:data:`~.usercode.BLOCKING_CALL_S`) moves to a worker thread (:mod:`.usercode`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from componentmanager.component import Component, Context
from componentmanager.components.processors import IN, OUT
from componentmanager.components.python_processor import Python, PythonConfig
from componentmanager.components.usercode import (
    ASYNC_ADVICE,
    UserCalls,
    check_compiles,
    is_async,
    load_inline,
)
from componentmanager.registry import ComponentType, register

#: A source yields to the event loop at least this often (events).
YIELD_EVERY = 1000
#: How much of a value that is not JSON its dead letter keeps.
PREVIEW_CHARS = 1000
_END = object()


class _Code(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str

    @field_validator("code")
    @classmethod
    def _compiles(cls, code: str) -> str:
        return check_compiles(code, "custom code") or ""


class CustomSourceConfig(_Code):
    code: str = Field(description="Python defining events(): a generator or async "
                      "generator of events; returning ends the source.")


class CustomProcessorConfig(_Code):
    code: str = Field(description="Python defining process(event): returns an event, a "
                      "list of events, or None to drop it (counted in filtered).")


class CustomSinkConfig(_Code):
    code: str = Field(description="Python defining write(event), and optionally flush() "
                      "(called before the sink stops) and close() (at its end).")


async def _each(calls: UserCalls, produced: Any) -> AsyncIterator[Any]:
    """The values of what ``events()`` returned: an async iterable, or an iterable (its
    ``next`` run through ``calls``, so a blocking generator moves to a thread)."""
    if hasattr(produced, "__aiter__"):
        async for value in produced:
            yield value
        return
    if produced is None:
        return
    if not hasattr(produced, "__iter__"):
        raise TypeError(f"events() returned {type(produced).__name__}, not a generator")
    it: Iterator[Any] = iter(produced)
    while (value := await calls.call(next, it, _END)) is not _END:
        yield value


class CustomSource(Component):
    """Emits what the inline ``events()`` yields."""

    def __init__(self, config: CustomSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: CustomSourceConfig = config
        self._calls = UserCalls(ctx)
        self._events: Callable[[], Any] | None = None

    async def start(self) -> None:
        self._events = load_inline(self.ctx, self.config.code, "custom source",
                                   "events")["events"]

    def blocking_advice(self) -> str | None:
        events = self._events
        if events is not None and (inspect.isasyncgenfunction(events) or is_async(events)):
            return ASYNC_ADVICE
        return self._calls.advice()

    async def run(self) -> None:
        assert self._events is not None
        produced = self._events()
        if inspect.iscoroutine(produced):
            produced = await produced
        count = 0
        async for event in _each(self._calls, produced):
            try:
                await self.ctx.emit("out", event)
            except (TypeError, msgspec.EncodeError) as exc:
                await self.ctx.reject(repr(event)[:PREVIEW_CHARS].encode(),
                                      f"events() yielded a value that is not JSON: {exc}")
            count += 1
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def stop(self) -> None:
        self._calls.close()


class CustomProcessor(Python):
    """The ``python`` processor with inline ``process(event)``."""

    what = "custom processor"

    def __init__(self, config: CustomProcessorConfig, ctx: Context) -> None:
        super().__init__(PythonConfig(code=config.code), ctx)


class CustomSink(Component):
    """Hands each event to the inline ``write(event)``."""

    def __init__(self, config: CustomSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: CustomSinkConfig = config
        self._calls = UserCalls(ctx)
        self._fns: dict[str, Callable[..., Any]] = {}

    async def start(self) -> None:
        self._fns = load_inline(self.ctx, self.config.code, "custom sink", "write",
                                ("flush", "close"))
        self._calls.prepare(self._fns["write"])

    def blocking_advice(self) -> str | None:
        return self._calls.advice()

    async def process(self, port: str, event: Any) -> None:
        await self._calls.call(self._fns["write"], event)
        self.ctx.wrote()

    async def flush(self) -> None:
        if "flush" in self._fns:
            await self._calls.call(self._fns["flush"])

    async def stop(self) -> None:
        try:
            if "close" in self._fns:
                await self._calls.call(self._fns["close"])
        finally:
            self._calls.close()


_MOD = "componentmanager.components.custom"
_WHERE = "Inline code needs an agent that allows it (flowctl run and dev do)."

register(ComponentType(
    name="custom", role="source", config_model=CustomSourceConfig, outputs=OUT,
    description="Events from inline Python: events(), a generator.",
    impl=f"{_MOD}:CustomSource",
    docs="code: defines events(), a generator or async generator; each value it yields "
         "is an event, returning ends the source. A restarted source starts it again. "
         + _WHERE,
))
register(ComponentType(
    name="custom", role="processor", config_model=CustomProcessorConfig, inputs=IN,
    outputs=OUT, description="Process events with inline Python: process(event).",
    impl=f"{_MOD}:CustomProcessor",
    docs="code: defines process(event), returning an event, a list of events, or None "
         "to drop it (as the python processor). " + _WHERE,
))
register(ComponentType(
    name="custom", role="sink", config_model=CustomSinkConfig, inputs=IN,
    description="Write events with inline Python: write(event).",
    impl=f"{_MOD}:CustomSink",
    docs="code: defines write(event), and optionally flush() (called before the sink "
         "stops) and close() (at its end). An exception fails that event (dead-lettered). "
         + _WHERE,
))
