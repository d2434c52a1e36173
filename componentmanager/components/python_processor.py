"""The ``python`` processor: calls a user function per event.

A synchronous function has a worker thread of its own (one call at a time, so order is
kept per replica). Its first call runs there, timed: a first call is where functions load
models, open connections and warm caches, and it must not hold the agent's event loop.
When that call was quick, the next calls run inline (no thread hop per event) until one
takes longer than :data:`BLOCKING_CALL_S`; from then on every call runs on the worker
thread. An ``async`` function runs on the event loop, always: it must not block (the
replica is reported degraded with what to do: :meth:`Python.blocking_advice`).

The module is imported from ``config.python_path`` first (``flowctl apply`` and ``run``
default it to the flow file's directory), then the agent's ``--python-path`` and
``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from componentmanager.component import Component, Context
from componentmanager.components.processors import IN, OUT
from componentmanager.registry import ComponentType, register


class PythonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    function: str | None = Field(
        default=None,
        description='"module:function" to import at start; it takes an event and returns an '
        "event, a list of events, or None (or []) to drop it: counted in filtered (may be async).",
    )
    code: str | None = Field(
        default=None,
        description="Inline Python source defining process(event) with the same contract "
        "(only where the agent allows inline code).",
    )
    module_hash: str | None = Field(
        default=None,
        description="Set by `flowctl apply`, `run` and `dev`: a hash of the module's file, so "
        "a changed module restarts the node (and is imported afresh).",
        json_schema_extra={"internal": True},
    )
    python_path: list[str] = Field(
        default_factory=list,
        description="Directories to import the module from, before the agent's "
        "--python-path; `flowctl apply` and `run` default it to the flow file's directory.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PythonConfig:
        if (self.function is None) == (self.code is None):
            raise ValueError("set exactly one of 'function' or 'code'")
        return self

    @field_validator("function")
    @classmethod
    def _module_and_name(cls, function: str | None) -> str | None:
        if function is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", function):
            raise ValueError(f"function {function!r} must be module:function, e.g. "
                             "enrich:enrich (enrich.py next to the flow file)")
        return function

    @field_validator("code")
    @classmethod
    def _compiles(cls, code: str | None) -> str | None:
        if code is not None:
            try:
                compile(code, "<python processor>", "exec")  # parses only; runs nothing
            except SyntaxError as exc:
                raise ValueError(f"code does not compile: {exc.msg} (line {exc.lineno})") from None
        return code


#: The module_hash each module was imported with (a new hash means: reload it).
_IMPORTED_AS: dict[str, str] = {}

#: A sync python function whose call takes longer than this moves to a worker thread.
BLOCKING_CALL_S = 0.002


#: Where a sync function's next call runs: ``trial`` (its first: on the worker thread,
#: timed), ``inline`` (on the event loop, timed), ``worker`` (on the worker thread).
Placement = Literal["trial", "inline", "worker"]

ASYNC_ADVICE = ("an async python function must not block the loop: run blocking calls "
                "with `await asyncio.to_thread(...)`, or make the function sync (a sync "
                "function runs on a worker thread), or give the node more replicas")


class Python(Component):
    """Calls a user function per event: a module function or inline ``process(event)``."""

    def __init__(self, config: PythonConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: PythonConfig = config
        self._fn: Any = None
        self._is_async = False
        self._next: Placement = "trial"
        self._worker: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        cfg = self.config
        if cfg.function is not None:
            module_name, _, attr = cfg.function.partition(":")
            for directory in reversed(cfg.python_path):
                if directory not in sys.path:
                    sys.path.insert(0, directory)
            try:
                module = importlib.import_module(module_name)
                if cfg.module_hash and _IMPORTED_AS.get(module_name, cfg.module_hash) \
                        != cfg.module_hash:
                    module = importlib.reload(module)  # the file changed since
                _IMPORTED_AS[module_name] = cfg.module_hash or ""
            except ImportError as exc:
                raise ImportError(f"python processor: cannot import {module_name}: {exc}") from exc
            fn = getattr(module, attr, None)
            where = cfg.function
        else:
            if not getattr(self.ctx, "allow_inline_code", False):
                raise PermissionError(
                    "python processor: inline 'code' is disabled on this agent; use "
                    "'function: module:function' or start the agent with inline code allowed"
                )
            where = f"<{self.ctx.flow}.{self.ctx.node}>"
            namespace: dict[str, Any] = {"__name__": f"flowctl_inline_{self.ctx.node}"}
            exec(compile(cfg.code or "", where, "exec"), namespace)
            fn = namespace.get("process")
        if not callable(fn):
            raise TypeError(f"python processor: {where} does not define a callable process")
        self._fn = fn
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__)  # (an object with an async __call__)
        if not self._is_async:
            self._worker = ThreadPoolExecutor(
                1, thread_name_prefix=f"flowctl-{self.ctx.flow}.{self.ctx.node}")

    def blocking_advice(self) -> str | None:
        """What to do when this replica holds the event loop: only an async function can
        (see the module docstring); None: the general advice."""
        return ASYNC_ADVICE if self._is_async else None

    async def _call(self, event: Any) -> Any:
        """The function's result for ``event``, called where :attr:`_next` says; a sync
        call that took longer than :data:`BLOCKING_CALL_S` sends the next ones to the
        worker thread."""
        if self._is_async or self._worker is None:
            return self._fn(event)
        if self._next == "worker":
            return await asyncio.get_running_loop().run_in_executor(self._worker, self._fn,
                                                                    event)
        if self._next == "trial":
            result, took = await asyncio.get_running_loop().run_in_executor(
                self._worker, _timed, self._fn, event)
        else:
            result, took = _timed(self._fn, event)
        if took <= BLOCKING_CALL_S:
            self._next = "inline"
            return result
        self._next = "worker"
        self.ctx.log(f"the function blocks ({took * 1000:.1f} ms for one call); it runs on "
                     "a worker thread")
        return result

    async def process(self, port: str, event: Any) -> None:
        result = await self._call(event)
        if inspect.isawaitable(result):
            result = await result
        if result is None or (isinstance(result, list) and not result):
            self.ctx.count_filtered()  # None and [] both drop the event on purpose
            return
        for item in result if isinstance(result, list) else [result]:
            await self.ctx.emit("out", item)

    async def stop(self) -> None:
        if self._worker is not None:  # a call in progress finishes; nothing new starts
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None


def _timed(fn: Any, event: Any) -> tuple[Any, float]:
    """``fn(event)`` and the seconds it took."""
    t0 = time.perf_counter()
    result = fn(event)
    return result, time.perf_counter() - t0


_MOD = "componentmanager.components.python_processor"

register(ComponentType(
    name="python", role="processor", config_model=PythonConfig, inputs=IN, outputs=OUT,
    description="Process events with a Python function.",
    impl=f"{_MOD}:Python",
    docs="function: module:function, or code: inline source defining process(event). "
         "Return an event, a list of events, or None to filter it out. A sync function's "
         "first call, and every call once one blocked (over 2 ms), runs on a worker thread, "
         "one call at a time (order kept); add replicas for parallelism. An async function "
         "runs on the agent's loop and must not block (await asyncio.to_thread(...)). "
         "Inline code needs an agent that allows it.",
))
