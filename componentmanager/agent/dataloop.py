"""The data plane's own room: a thread with its own event loop and NATS connection, where
every replica of the agent runs.

Why a thread: user code and data traffic must never stall or disconnect the agent's
control work (heartbeats, the leader lease, the config watch, status writes). Those run
on the agent's loop with the agent's connection; replicas run here. A component that
blocks this loop delays only other replicas' events (and is found and reported, see
:meth:`DataLoop.culprit`); a slow-consumer disconnect of this connection takes no
heartbeat with it. The control side talks to this loop only through :meth:`call` and
reads plain attributes (counters, states) that the GIL keeps consistent.

This object is the runners' :class:`~componentmanager.runners.base.ReplicaHost`: ``nc`` is
the data connection; ``changed`` hands a replica's status to the agent's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import nats.aio.client
import structlog

from componentmanager.dataplane.accounting import DropRouter, Throttle
from componentmanager.dataplane.taps import Taps
from componentmanager.runners.base import Replica
from componentmanager.runners.downstream import DownstreamStatuses
from componentmanager.runners.fusion import FusedPeers
from flowstore.models import logs_subject, utcnow
from flowstore.nats import NatsOptions, connect

log = structlog.get_logger("flowctl.dataloop")

#: The loop ticks this often; a tick later than this is lag.
TICK_S = 0.05
#: Log lines of components waiting to be published; beyond that they are counted and lost.
LOG_QUEUE = 10_000
#: How much nats-py's reader takes off the socket per turn of the loop. Its default
#: (32 KiB) lets a fast producer outrun a busy consumer's reader until the server cuts
#: the connection as a slow consumer, losing events nobody can count; with a few MiB per
#: turn the reader keeps up and overload is shed (and counted) in the input queues.
#: nats-py reads this module constant at connect and on every read.
READ_BUFFER = 4 * 2**20


class DataLoop:
    """Owns the data thread, its loop and connection. Start and close from the agent's loop."""

    def __init__(self, options: NatsOptions, agent_name: str, *, instance: str, log_dir: str,
                 allow_inline_code: bool, heartbeat_s: float,
                 on_changed: Callable[[Replica], None],
                 allow_commands: tuple[str, ...] = (),
                 allow_images: tuple[str, ...] = (),
                 orchestrator: str | None = None,
                 echo: Callable[[str, str], None] | None = None) -> None:
        self.nats_options = options
        self.agent_name = agent_name
        self.instance = instance  # labels the agent's containers (see runners.watchdog)
        self.log_dir = log_dir
        self.allow_inline_code = allow_inline_code
        self.allow_commands = allow_commands
        self.allow_images = allow_images
        self.orchestrator = orchestrator  # process | container: for nodes with both forms
        self.heartbeat_s = heartbeat_s
        self._on_changed = on_changed
        #: shows the output lines of programs and containers (`flowctl run`'s terminal)
        self.echo = echo
        self.drops = DropRouter()
        self.throttle = Throttle()
        self.fused = FusedPeers()  # replicas fed in memory (see runners.fusion)
        self.taps = Taps()  # in-memory ports `flowctl tap` watches (see dataplane.taps)
        #: the status watches of waiting sources (see runners.downstream), once connected
        self.downstream: DownstreamStatuses | None = None
        self.nc: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._beat = time.monotonic()
        self._max_lag = 0.0
        self.logs_lost = 0

    # -- ReplicaHost ---------------------------------------------------------------------
    def changed(self, replica: Replica) -> None:
        self._on_changed(replica)

    def log_line(self, replica: Replica, line: str, stream: str = "stdout",
                 event_id: str | None = None) -> None:
        """A component's log line (``stream``: stdout, stderr, error for an event that
        failed, agent for what the agent says about the replica): logged here (once per
        interval when repeated; a program's output shown by :attr:`echo` instead, when set)
        and published on ``flowctl.logs.<flow>.<node>.<replica>``, which FLOWCTL_LOGS keeps."""
        if self.echo is not None and stream in ("stdout", "stderr") \
                and replica.cfg.kind != "inprocess":
            self.echo(f"[{replica.cfg.node}.{replica.index}] {line}", stream)
        elif stream != "error" and self.throttle.admit(("log", replica.key, line)):
            log.info(line, replica=replica.key, stream=stream)
        self.publish_log(replica.cfg.flow, replica.cfg.node, replica.index, line, stream,
                         event_id)

    def publish_log(self, flow: str, node: str, index: int, line: str, stream: str,
                    event_id: str | None = None) -> None:
        if self.nc is None or self.nc.is_closed:
            self.logs_lost += 1
            return
        record: dict[str, Any] = {"ts": utcnow(), "flow": flow, "node": node,
                                  "replica": index, "agent": self.agent_name,
                                  "stream": stream, "line": line}
        if event_id is not None:
            record["event_id"] = event_id
        body = msgspec.json.encode(record)
        subject = logs_subject(flow, node, index)
        if threading.current_thread() is self._thread:
            self._queue_log(subject, body)
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(self._queue_log, subject, body)

    def _queue_log(self, subject: str, body: bytes) -> None:
        try:
            self._logs.put_nowait((subject, body))
        except asyncio.QueueFull:
            self.logs_lost += 1

    # -- lifecycle (called from the agent's loop) -----------------------------------------
    async def start(self) -> None:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name=f"flowctl-data-{self.agent_name}",
            daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        nats.aio.client.DEFAULT_BUFFER_SIZE = max(nats.aio.client.DEFAULT_BUFFER_SIZE,
                                                  READ_BUFFER)
        self._stop = asyncio.Event()
        self._logs: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=LOG_QUEUE)
        try:
            self.nc = await connect(self.nats_options, name=f"flowctl-data-{self.agent_name}",
                                    reconnect=True, error_cb=self._on_error,
                                    disconnected_cb=self._on_disconnect)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self.downstream = DownstreamStatuses(self.nc)
        with contextlib.suppress(Exception):  # (without it, taps of fused ports see nothing)
            await self.taps.listen(self.nc)
        ready.set_result(None)
        tasks = [asyncio.create_task(self._tick()), asyncio.create_task(self._logs_pump())]
        await self._stop.wait()
        await self.downstream.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.close(), 5)

    async def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the data loop; await its result from the agent's loop."""
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def close(self) -> None:
        """Close the data connection and end the thread (replicas are stopped before)."""
        if self.loop is None or self._stop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may be gone already
            self.loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, 10)

    # -- health ----------------------------------------------------------------------------
    async def _tick(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(TICK_S)
            late = time.monotonic() - self._beat - TICK_S
            self._max_lag = max(self._max_lag, late)
            for (kind, *what), held, example in self.throttle.due():
                said = f"{kind}: {held} more like it in the last {self.throttle.interval:g} s"
                if example is not None:  # the last one as it was, not its shape
                    what = [*what[:-1], example]
                log.warning(said, what=" ".join(map(str, what)))
                if kind == "event failed":  # (kind, replica key, the error)
                    flow, node, index = str(what[0]).rsplit(".", 2)
                    self.publish_log(flow, node, int(index), f"{said}: {what[1]}", "error")

    def stalled_for(self) -> float:
        """How long the data loop has not ticked (seconds beyond its tick)."""
        return max(0.0, time.monotonic() - self._beat - TICK_S)

    def take_max_lag(self) -> float:
        """The worst lag since the last call (including a stall in progress); resets."""
        lag, self._max_lag = max(self._max_lag, self.stalled_for()), 0.0
        return lag

    def culprit(self) -> Replica | None:
        """The replica whose code is on the data thread's stack right now (called from the
        agent's loop while the data loop is stalled: that replica is holding it)."""
        if self._thread is None or self._thread.ident is None:
            return None
        frame = sys._current_frames().get(self._thread.ident)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, Replica):
                return owner
            ctx = getattr(owner, "ctx", None)
            if isinstance(ctx, Replica):
                return ctx
            frame = frame.f_back
        return None

    # -- the connection's callbacks ----------------------------------------------------------
    async def _on_error(self, error: Exception) -> None:
        if self.drops.route(error):
            return
        what = f"{type(error).__name__}: {error}"
        if self.throttle.admit(("nats", what)):
            log.warning("data connection error", agent=self.agent_name, error=what)

    async def _on_disconnect(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.warning("data connection lost; reconnecting", agent=self.agent_name)

    async def _logs_pump(self) -> None:
        while True:
            subject, body = await self._logs.get()
            try:
                await self.nc.publish(subject, body)
            except Exception:
                self.logs_lost += 1
