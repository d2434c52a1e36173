"""Ending an agent's tasks for sure.

On Python 3.11 a cancel that arrives just as the future a task waits on in
``asyncio.wait_for`` completes is swallowed (nats-py waits that way, for example in a KV
watcher's ``updates``): the task goes on as if never cancelled, and whoever awaits it
waits forever. :func:`cancel_and_wait` cancels again until the task ends, within a bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: How long to wait after each cancel before cancelling again, seconds.
RECANCEL_S = 0.2


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]],
                          bound: float) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` (again and again, see the module doc) until they end or ``bound``
    seconds pass; returns those still running."""
    left = {t for t in tasks if not t.done()}
    deadline = asyncio.get_running_loop().time() + bound
    while left:
        for task in left:
            task.cancel()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        _, left = await asyncio.wait(left, timeout=min(RECANCEL_S, remaining))
    return left


class TasksLeftBehind(Exception):
    """Tasks that did not end when cancelled (again and again) within the bound."""

    def __init__(self, tasks: set[asyncio.Task[Any]]) -> None:
        super().__init__(", ".join(sorted(t.get_name() for t in tasks)))
        self.tasks = tasks


async def end_tasks(tasks: Iterable[asyncio.Task[Any]], bound: float) -> None:
    """:func:`cancel_and_wait`; raises :class:`TasksLeftBehind` for those still running."""
    left = await cancel_and_wait(tasks, bound)
    if left:
        raise TasksLeftBehind(left)
