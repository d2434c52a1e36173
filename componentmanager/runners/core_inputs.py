"""At-most-once inputs of an in-process replica: core queue subscriptions (mixin of
:class:`~componentmanager.runners.delivery.InputDelivery`).

A message is one event or a frame. When more than :data:`INPUT_PENDING_MSGS` messages or
:data:`INPUT_PENDING_BYTES` wait, the oldest are dropped, each counted with the number of
events it carried ("overload (input queue full)"), so memory stays bounded and the
connection's reader keeps up. What is still queued when the replica stops is dropped and
counted too.
"""

from __future__ import annotations

import asyncio
import contextlib
from time import perf_counter
from typing import Any

from nats.aio.msg import Msg

from componentmanager.dataplane import frame_count
from componentmanager.runners.taking import FrameTaking, Numbered

#: A core input's queue: past this, the oldest messages are dropped (counted).
INPUT_PENDING_MSGS = 8192
INPUT_PENDING_BYTES = 32 * 2**20


async def _turn() -> None:
    await asyncio.sleep(0)


class CoreInputs(FrameTaking):
    """Core subscriptions: take, shed the oldest when full, count what is lost."""

    # provided by the replica
    host: Any
    counters: Any
    component: Any
    _sub_ports: list[tuple[str, Any]]
    _outbox: Any
    _owns_for: Any
    _flush_held: Any
    _inflight: int = 0
    _since_yield: int = 0

    def input_queues(self) -> dict[str, int]:
        queued: dict[str, int] = {}
        for port, sub in list(self._sub_ports):
            queued[port] = queued.get(port, 0) + sub.pending_msgs
        return queued

    def _overflowed(self, count: int) -> None:
        self.counters.drop(count, "overload (input queue full)")

    def count_drops_of(self, sub: Any) -> None:
        """Context, for components that subscribe themselves (the ``nats`` source): what
        nats-py drops from ``sub``'s full queue is counted in ``dropped``."""
        self.host.drops.own(sub, self._overflowed)

    # -- at-most-once -----------------------------------------------------------------------
    def _core_handler(self, port: str, holder: list[Any]):  # type: ignore[no-untyped-def]
        async def on_msg(msg: Msg) -> None:
            comp = self.component
            if comp is None:  # stopped: never process or dead-letter another event
                self.counters.drop(frame_count(msg.headers), "replica stopped with events queued")
                return
            sub = holder[0] if holder else None
            if sub is not None and (sub.pending_msgs > INPUT_PENDING_MSGS
                                    or sub.pending_bytes > INPUT_PENDING_BYTES):
                self._overflowed(frame_count(msg.headers))  # shed the oldest, counted
                return
            if not self._meant_for_me(msg):
                return
            events = self._events_of(comp, msg)
            self._inflight += 1
            began, taken = perf_counter(), 0

            async def fail(index: int, event: Any, exc: Exception) -> None:
                await self._failed_event(port, msg, index, event, exc)

            try:
                async with self._outbox.handling():
                    taken, left = await self._take_events(
                        comp, port, msg.headers, Numbered(events), fail, _turn,
                        self._owns_for(msg))
                    if left:  # stopped mid-frame
                        self.counters.drop(left, "replica stopped")
                if sub is not None and not sub.pending_msgs:
                    await self._flush_if_idle(comp)
            finally:
                self._inflight -= 1
                self._took(port, msg, taken, perf_counter() - began)

        return on_msg

    async def _flush_if_idle(self, comp: Any) -> None:
        """The input ran dry: a component that flushes when idle (see
        :class:`~componentmanager.component.Component`) writes out what it holds."""
        if getattr(comp, "flush_when_idle", False) and comp.held():
            await self._flush_held(comp)

    async def _wait_inflight(self, timeout: float = 2.0) -> None:
        """Let a handler that is mid-frame see the stop and return (bounded)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._inflight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def _close_input(self, sub: Any, timeout: float = 2.0) -> None:
        """Close a core input: what is queued may finish for ``timeout`` seconds (upstream
        stops first, so little more arrives); what is still queued then is lost and
        counted in ``dropped``. Never raises, never takes longer. (nats-py's ``drain()``
        swallows its own cancellation, so a timeout around it does not bound it.)"""
        deadline = asyncio.get_running_loop().time() + timeout
        while sub.pending_msgs and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        queued = list(getattr(sub._pending_queue, "_queue", ()))  # events, not messages
        left = sum(frame_count(m.headers) for m in queued) if queued else sub.pending_msgs
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if left:
            self.counters.drop(left, "replica stopped with events queued")
        self.host.drops.release(sub)
