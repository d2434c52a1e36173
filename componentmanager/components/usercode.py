"""Running user Python inside a component: inline ``code:`` and calls that may block.

:func:`check_compiles` is the config check of every inline ``code:`` field (it parses,
runs nothing); :func:`load_inline` runs the code of a started component, only where the
agent allows inline code, and returns the functions it defines; :class:`UserCalls` calls
user functions without holding the agent's event loop. Used by the ``python`` processor
and the ``custom`` source, processor and sink.

A synchronous function has the component's worker thread (one call at a time, so order is
kept per replica). Its first call runs there, timed: a first call is where functions load
models, open connections and warm caches, and it must not hold the agent's event loop.
When that call was quick, the next calls run inline (no thread hop per event) until one
takes longer than :data:`BLOCKING_CALL_S`; from then on every call runs on the worker
thread. An ``async`` function runs on the event loop, always: it must not block (the
replica is reported degraded with what to do: :data:`ASYNC_ADVICE`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from componentmanager.component import Context

#: A sync user function whose call takes longer than this moves to the worker thread.
BLOCKING_CALL_S = 0.002

#: How a function's next call runs: ``async`` (awaited on the loop), ``trial`` (a sync
#: function's first: on the worker thread, timed), ``inline`` (on the loop, timed),
#: ``worker`` (on the worker thread).
Placement = Literal["async", "trial", "inline", "worker"]

ASYNC_ADVICE = ("an async python function must not block the loop: run blocking calls "
                "with `await asyncio.to_thread(...)`, or make the function sync (a sync "
                "function runs on a worker thread), or give the node more replicas")


def check_compiles(code: str | None, label: str) -> str | None:
    """``code`` when it compiles; a ValueError naming the line when it does not."""
    if code is not None:
        try:
            compile(code, f"<{label}>", "exec")  # parses only; runs nothing
        except SyntaxError as exc:
            raise ValueError(f"code does not compile: {exc.msg} (line {exc.lineno} of the code)"
                             ) from None
    return code


def load_inline(ctx: Context, code: str, what: str, required: str,
                optional: tuple[str, ...] = ()) -> dict[str, Callable[..., Any]]:
    """Run inline ``code`` and return its function ``required`` (and those of ``optional``
    it defines), keyed by name. ``what`` names the component in errors ("custom sink")."""
    if not getattr(ctx, "allow_inline_code", False):
        raise PermissionError(
            f"{what}: inline 'code' is disabled on this agent; start the agent with "
            "--allow-inline-code (flowctl run and dev allow it unless --no-inline-code)")
    where = f"<{ctx.flow}.{ctx.node}>"
    namespace: dict[str, Any] = {"__name__": f"flowctl_inline_{ctx.node}"}
    exec(compile(code, where, "exec"), namespace)
    found = {name: namespace[name] for name in (required, *optional)
             if callable(namespace.get(name))}
    if required not in found:
        raise TypeError(f"{what}: the code of {where} does not define a function "
                        f"{required}()")
    return found


def is_async(fn: Callable[..., Any]) -> bool:
    """An ``async def`` function (or an object with an async ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        type(fn).__call__)


def _timed(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    """``fn(*args)`` and the seconds it took."""
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


class UserCalls:
    """Calls the user functions of one component (see the module doc)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._worker: ThreadPoolExecutor | None = None
        self._next: dict[Callable[..., Any], Placement] = {}

    def advice(self) -> str | None:
        """What to do when the component holds the loop: only an async function can."""
        return ASYNC_ADVICE if "async" in self._next.values() else None

    def prepare(self, fn: Callable[..., Any]) -> None:
        """Know ``fn`` before its first call (so :meth:`advice` speaks of it at once)."""
        self._next.setdefault(fn, "async" if is_async(fn) else "trial")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, run where its placement says, awaited when it returns an
        awaitable; a sync call over :data:`BLOCKING_CALL_S` sends the next to the thread."""
        self.prepare(fn)
        placement = self._next[fn]
        if placement == "async":
            return await fn(*args)
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = ThreadPoolExecutor(
                1, thread_name_prefix=f"flowctl-{self.ctx.flow}.{self.ctx.node}")
        if placement == "worker":
            result = await loop.run_in_executor(self._worker, fn, *args)
        else:
            result, took = (await loop.run_in_executor(self._worker, _timed, fn, args)
                            if placement == "trial" else _timed(fn, args))
            if took <= BLOCKING_CALL_S:
                self._next[fn] = "inline"
            else:
                self._next[fn] = "worker"
                self.ctx.log(f"the function blocks ({took * 1000:.1f} ms for one call); it "
                             "runs on a worker thread")
        if inspect.isawaitable(result):
            result = await result
        return result

    def close(self) -> None:
        """A call in progress finishes; nothing new starts."""
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None
