"""How an in-process replica stops: mixin of
:class:`~componentmanager.runners.inprocess.InProcessReplica`.

Inputs close first (nothing fires after that), what was processed is settled, the
component is flushed and stopped, its last outputs sent and (at-least-once) waited for,
bounded. What could not be finished is said once; at-most-once it is counted in
``dropped``, at-least-once the inputs behind it are delivered again. Whether the run's
effects were all kept decides how its unacked inputs are treated when they come back
(:meth:`~componentmanager.runners.acks.InputAcks._settle_at_teardown`). A replica whose
long-running task ends while it runs is failed (:meth:`ReplicaTeardown._until_a_task_dies`)
and so stopped this way and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

log = structlog.get_logger("flowctl.replica")

#: How long a stopping replica waits for its last outputs to be stored.
PUBLISHER_WAIT_S = 5.0
#: How long one step of a stop (settle, the component's flush, its stop) may take.
STEP_WAIT_S = 8.0


class ReplicaTeardown:
    """The stop sequence (see the module doc)."""

    # provided by the replica
    nc: Any
    key: str
    counters: Any
    last_error: str | None
    component: Any
    held_at_stop: int
    _acked: bool
    _state: Any
    _outbox: Any
    _tasks: list[asyncio.Task[None]]
    _publisher: Any
    _checkpoint: Any
    _stored_mark: Any
    _stopping: bool
    _pullers: list[Any]

    async def _teardown(self) -> None:
        """Close the inputs (nothing fires after this), settle, flush and stop the
        component, send what it emitted last; each step bounded, and the replica's tasks
        and publisher are ended even when the stop itself is cancelled."""
        kept = False
        try:
            kept = await self._finish_component()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            stored = await self._close_publisher()
        if self._acked or self._state is not None:
            self._settle_at_teardown(kept and stored and not self._outbox.pending)

    async def _finish_component(self) -> bool:
        """Whether what was processed is written and sent."""
        await self._close_inputs()
        if self._state is not None:
            self._state.sealed = True  # its last record: a rescale waits for it
        if (self._acked or self._state is not None) and self.nc.is_connected:
            with contextlib.suppress(Exception):  # flush what is held, then ack its
                async with asyncio.timeout(STEP_WAIT_S):  # inputs (stateful:
                    await self._settle(force=True)          # checkpoint first)
        kept = True
        if self.component is not None:
            comp, self.component = self.component, None
            if self._state is not None:  # still held, in the checkpoint: status says so
                self.held_at_stop = comp.held()
            await self._wait_inflight()
            # A stateful component's open windows stay in its checkpoint: no last flush.
            hooks = (comp.stop,) if self._state is not None else (comp.flush, comp.stop)
            for hook in hooks:
                try:
                    async with asyncio.timeout(STEP_WAIT_S):
                        await hook()
                except Exception as exc:  # (a timeout too)
                    kept = False
                    why = str(exc) or f"no end after {STEP_WAIT_S:g} s"
                    self._lost_at_stop(comp.held(), f"{hook.__name__} failed at stop: {why}")
        try:
            async with asyncio.timeout(PUBLISHER_WAIT_S):
                await self._outbox.flush()
        except Exception as exc:
            kept = False
            why = str(exc) or f"not sent within {PUBLISHER_WAIT_S:g} s"
            self._lost_at_stop(self._outbox.pending, f"last outputs not sent: {why}")
        return kept

    def _lost_at_stop(self, events: int, why: str) -> None:
        """Said once; at-most-once the events are gone (counted), at-least-once their
        inputs are delivered again (nothing to count)."""
        self.last_error = why
        log.warning("replica stop incomplete", replica=self.key, error=why)
        if events and not self._acked and self._state is None:
            self.counters.drop(events, why)

    async def _close_publisher(self) -> bool:
        """Wait (bounded) until this run's outputs are stored, write a source's checkpoint
        and close the publisher: whether everything it published is stored."""
        publisher, self._publisher = self._publisher, None
        if publisher is None:
            return True
        if self.nc.is_connected:
            with contextlib.suppress(Exception):  # (a source's publisher never gives up)
                async with asyncio.timeout(PUBLISHER_WAIT_S):
                    await publisher.wait()
            if self._checkpoint is not None:  # a stopped source resumes exactly here; a
                await self._checkpoint.flush()  # completion not yet written is written
        if self._checkpoint is not None:  # a restart here resumes after what is stored
            self._stored_mark = self._checkpoint.stored_mark()
        await publisher.close()
        return not publisher.outstanding and not publisher.given_up

    async def _close_inputs(self) -> None:
        self._sub_ports.clear()
        for sub in self._subs:
            await self._close_input(sub)
        self._subs.clear()
        for puller in self._pullers:
            await puller.stop()  # a message in progress finishes; the rest is redelivered
        self._pullers.clear()
        await self._let_held_back_go()

    async def _until_a_task_dies(self, main: asyncio.Task[None] | None = None) -> None:
        """Watch the replica's long-running tasks (output flusher, flush loop, input pulls):
        return when ``main`` ends; raise when one of them ends while the replica runs, so
        it is reported failed and restarted, never left `running` over a dead task."""
        while not self._stopping:
            tasks = [*self._tasks, *(p.task for p in self._pullers if p.task is not None)]
            watched = [t for t in (main, *tasks) if t is not None]
            if not watched:
                return
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if main is not None and main in done:
                return
            if self._stopping:
                return
            dead = next(iter(done))
            error = None if dead.cancelled() else dead.exception()
            raise RuntimeError(f"internal task {dead.get_name()!r} ended"
                               + (f": {type(error).__name__}: {error}" if error else ""))
