"""In-process replicas: a registered component type run inside the agent's event loop.

The runner wires the component to the data plane (see :mod:`componentmanager.dataplane`):
core queue subscriptions or JetStream pull consumers for inputs, plain or acked publishes
for outputs. A processing error is counted, logged with context (identical failures once
per interval, with a count) and dead-lettered to ``flowctl.<flow>.<node>.dlq``; the
component keeps running. A source waits until every replica downstream reports running
before it emits (at-most-once only: a stream keeps events for late consumers). A failing
source or start is retried with backoff.

Accounting (at-most-once): a core input's pending queue is bounded
(:data:`INPUT_PENDING_MSGS`, :data:`INPUT_PENDING_BYTES`); what overflows it, what NATS
refuses to take from ``emit``, and what is still queued when the replica stops are
counted in ``dropped``. Input handling yields to the loop every :data:`YIELD_EVERY`
events, so the connection's reader keeps up (overflow is dropped here, counted, instead
of the server cutting the connection) and one busy input cannot starve the others. Once
stopped, a replica never processes or dead-letters another event.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from componentmanager.component import Component, EventError
from componentmanager.dataplane import (
    DEFAULT_ACK_WAIT_S,
    DEFAULT_MAX_DELIVER,
    HDR_ERROR,
    AckedPublisher,
    EventIds,
    PublishFailed,
    decode,
    encode,
    ensure_consumer,
    ensure_stream,
)
from componentmanager.dataplane.accounting import shape
from componentmanager.registry import get_type
from componentmanager.runners.base import Replica, ReplicaHost
from flowstore.models import ComponentConfig, ReplicaState, dlq_subject, status_key, stream_name
from flowstore.nats import STATUS_BUCKET, open_bucket

log = structlog.get_logger("flowctl.replica")

FETCH_BATCH = 256
#: At most this many published events may wait for their JetStream ack (backpressure).
ACK_WINDOW = 1024
#: Inputs held unacked by a buffering component before it is flushed (keep below the
#: consumer's max_ack_pending) and how long they may wait (below its ack_wait).
HOLD_MAX = 500
HOLD_AGE_S = DEFAULT_ACK_WAIT_S / 2
RESTART_BACKOFF_S = (0.5, 30.0)
#: A core input's pending queue; what overflows it is dropped (counted). Bounds memory.
INPUT_PENDING_MSGS = 8192
INPUT_PENDING_BYTES = 16 * 2**20
#: Input handling gives the loop a turn after this many events.
YIELD_EVERY = 8


class InProcessReplica(Replica):
    """One replica of a registered component type, run as asyncio tasks."""

    def __init__(self, cfg: ComponentConfig, index: int, host: ReplicaHost) -> None:
        super().__init__(cfg, index, host)
        self.flow, self.node, self.replica = cfg.flow, cfg.node, index
        self.nc = host.nc
        self.allow_inline_code = host.allow_inline_code
        self.component: Component | None = None
        self._ids = EventIds(cfg.node, index, secrets.token_hex(3))
        self._acked = cfg.delivery == "at-least-once"
        self._publisher: AckedPublisher | None = None
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._pull_tasks: list[asyncio.Task[None]] = []
        self._unacked: list[Msg] = []  # processed inputs not acked yet (see _settle)
        self._unacked_since: float | None = None
        self._settling = asyncio.Lock()
        self._stopping = False
        self._since_yield = 0
        self._supervisor: asyncio.Task[None] | None = None

    # -- the Context a component sees -------------------------------------------------
    async def emit(self, port: str, event: Any) -> None:
        subject = self.cfg.outputs.get(port)
        if subject is None:
            raise ValueError(f"{self.node} has no output port '{port}'")
        body = encode(event)
        headers = self._ids.headers()
        if self._publisher is not None:
            if self._publisher.outstanding >= ACK_WINDOW:
                await self._publisher.wait()
            await self._publisher.publish(subject, body, headers)
        else:
            try:
                await self.nc.publish(subject, body, headers=headers)
            except Exception as exc:  # at-most-once: NATS refused it; lost, counted
                self.counters.drop(1, f"publish refused ({type(exc).__name__})")
                return
        c = self.counters
        c.out += 1
        c.out_ports[port] = c.out_ports.get(port, 0) + 1

    def log(self, message: str, **fields: Any) -> None:
        self.host.log_line(self, message + "".join(f" {k}={v}" for k, v in fields.items()))

    def count_filtered(self, count: int = 1) -> None:
        self.counters.filtered += count

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._supervisor = asyncio.create_task(self._supervise(), name=f"replica {self.key}")

    async def _supervise(self) -> None:
        delay = RESTART_BACKOFF_S[0]
        while not self._stopping:
            try:
                await self._run_once()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._teardown()
                self.counters.errors += 1
                self.set_state(ReplicaState.FAILED, f"{type(exc).__name__}: {exc}")
                log.warning("replica failed", replica=self.key, error=str(exc))
                policy = self.cfg.external.restart_policy if self.cfg.external else "on-failure"
                if policy == "never" or self._stopping:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_S[1])
                self.restarts += 1
                self.set_state(ReplicaState.STARTING)

    async def _run_once(self) -> None:
        """Start the component and open its inputs; for a source, run it to the end."""
        ctype = get_type(self.cfg.type, self.cfg.role)
        if ctype is None:
            raise RuntimeError(f"unknown component type '{self.cfg.type}' on this agent")
        config = ctype.config_model.model_validate(self.cfg.config)
        self.component = ctype.load_class()(config, self)
        if self._acked:
            await ensure_stream(self.nc, self.flow, self.host.nats_options.kv_replicas)
            self._publisher = await AckedPublisher(self.nc).open()
        await self.component.start()
        await self._open_inputs()
        interval = getattr(self.component, "flush_interval", None)
        if interval:
            self._tasks.append(asyncio.create_task(self._flush_loop(interval)))
        if ctype.role != "source":
            self.set_state(ReplicaState.RUNNING)
            return
        if not self._acked:
            await self._wait_for_downstream()
        self.set_state(ReplicaState.RUNNING)
        await self.component.run()
        if self._publisher is not None:
            await self._publisher.wait()
        await self.nc.flush()
        self.set_state(ReplicaState.COMPLETED)

    async def _wait_for_downstream(self) -> None:
        keys = [
            status_key(self.flow, node, r)
            for node, count in self.cfg.downstream.items()
            for r in range(count)
        ]
        if not keys:
            return
        kv = await open_bucket(self.nc, STATUS_BUCKET)
        waiting: list[str] = keys
        while waiting and not self._stopping:
            still = []
            for key in waiting:
                try:
                    entry = await kv.get(key)
                    ok = entry.value is not None and (b'"state":"running"' in entry.value
                                                      or b'"state":"degraded"' in entry.value)
                except Exception:
                    ok = False
                if not ok:
                    still.append(key)
            if still:
                self.set_state(ReplicaState.STARTING, f"waiting for downstream: {', '.join(still)}")
            waiting = still
            if waiting:
                await asyncio.sleep(0.1)
        self.last_error = None

    async def _open_inputs(self) -> None:
        for port, subjects in self.cfg.inputs.items():
            if not subjects:
                continue
            if self._acked:
                durable = await ensure_consumer(self.nc, self.flow, self.node, port, subjects)
                psub = await self.nc.jetstream().pull_subscribe_bind(
                    durable=durable, stream=stream_name(self.flow)
                )
                self._subs.append(psub)
                self._pull_tasks.append(asyncio.create_task(self._pull_loop(port, psub)))
            else:
                for subject in subjects:
                    sub = await self.nc.subscribe(
                        subject, queue=self.cfg.queue, cb=self._core_handler(port),
                        pending_msgs_limit=INPUT_PENDING_MSGS,
                        pending_bytes_limit=INPUT_PENDING_BYTES,
                    )
                    self.host.drops.own(sub, self._overflowed)
                    self._subs.append(sub)

    def _overflowed(self, count: int) -> None:
        self.counters.drop(count, "overload (input queue full)")

    def _core_handler(self, port: str):  # type: ignore[no-untyped-def]
        async def on_msg(msg: Msg) -> None:
            comp = self.component
            if comp is None:  # stopped: never process or dead-letter another event
                self.counters.drop(1, "replica stopped with events queued")
                return
            self.counters.in_ += 1
            try:
                await comp.process(port, decode(msg.data))
            except Exception as exc:
                await self._failed_event(port, msg, exc)
            await self._take_turns()

        return on_msg

    async def _take_turns(self) -> None:
        """Give the loop a turn every YIELD_EVERY events (the reader, other inputs)."""
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await asyncio.sleep(0)

    async def _pull_loop(self, port: str, psub: Any) -> None:
        assert self._publisher is not None and self.component is not None
        while not self._stopping:
            try:
                msgs = await psub.fetch(FETCH_BATCH, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                continue
            except Exception as exc:  # connection trouble: back off, keep going
                if self._stopping:
                    return
                log.warning("fetch failed", replica=self.key, error=str(exc))
                await asyncio.sleep(0.5)
                continue
            done: list[Msg] = []
            for msg in msgs:
                comp = self.component
                if comp is None:  # stopped mid-batch: the rest is redelivered (never acked)
                    break
                self.counters.in_ += 1
                try:
                    await comp.process(port, decode(msg.data))
                    done.append(msg)
                except Exception as exc:
                    await self._failed_event(port, msg, exc)
                await self._take_turns()
            async with self._settling:
                self._unacked.extend(done)
                if not self._unacked_since and self._unacked:
                    self._unacked_since = asyncio.get_running_loop().time()
            await self._settle()

    async def _settle(self, force: bool = False) -> None:
        """Ack processed inputs once their outputs are stored and nothing of them is held.

        A component holding inputs (``held()``) keeps them unacked until it emits or
        flushes; when too many (HOLD_MAX) or too old (HOLD_AGE_S) wait, it is flushed.
        If the outputs cannot be stored, the inputs are nak'ed for redelivery.
        """
        comp, publisher = self.component, self._publisher
        if comp is None or publisher is None:
            return
        async with self._settling:
            if not self._unacked:
                return
            age = asyncio.get_running_loop().time() - (self._unacked_since or 0.0)
            if comp.held() and (force or len(self._unacked) >= HOLD_MAX or age >= HOLD_AGE_S):
                try:
                    await comp.flush()
                except Exception as exc:
                    self.counters.errors += 1
                    self.last_error = f"flush: {exc}"
            try:
                await publisher.wait()
            except PublishFailed as exc:
                log.warning("outputs not stored; redelivery", replica=self.key, error=str(exc))
                batch, self._unacked, self._unacked_since = self._unacked, [], None
                for msg in batch:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
                return
            if comp.held():
                return  # still buffered: acked after a later emit or flush
            batch, self._unacked, self._unacked_since = self._unacked, [], None
            for msg in batch:
                with contextlib.suppress(Exception):
                    await msg.ack()

    async def _failed_event(self, port: str, msg: Msg, exc: Exception) -> None:
        """Count, log with context, dead-letter where the delivery allows, go on."""
        error = str(exc) if isinstance(exc, EventError) else f"{type(exc).__name__}: {exc}"
        self._count_error(f"event on port {port}: {error}")
        if self._acked:
            meta = msg.metadata
            if meta.num_delivered < DEFAULT_MAX_DELIVER:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=min(0.2 * meta.num_delivered, 2.0))
                return
        await self._dead_letter(msg.data, dict(msg.headers or {}), error, msg)

    async def reject(self, data: bytes, reason: str) -> None:
        self._count_error(reason)
        await self._dead_letter(data, {}, reason)

    def _count_error(self, error: str) -> None:
        self.counters.errors += 1
        self.last_error = error
        if self.host.throttle.admit(("event failed", self.key, shape(error))):
            log.warning("event failed", replica=self.key, error=error)

    async def _dead_letter(self, data: bytes, headers: dict[str, str], error: str,
                           msg: Msg | None = None) -> None:
        """Publish ``data`` to the node's dead-letter subject with the reason; with
        at-least-once it is stored before ``msg`` is acked (never mixed with a batch)."""
        headers[HDR_ERROR] = error[:1000]
        subject = dlq_subject(self.flow, self.node)
        try:
            if self._acked:
                await self.nc.jetstream().publish(subject, data, headers=headers)
                if msg is not None:
                    await msg.ack()
            else:
                await self.nc.publish(subject, data, headers=headers)
        except Exception as dlq_exc:
            if self.host.throttle.admit(("dead-letter failed", self.key, str(dlq_exc))):
                log.warning("dead-letter failed", replica=self.key, error=str(dlq_exc))

    async def _flush_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.component.flush()  # type: ignore[union-attr]
            except Exception as exc:
                self.counters.errors += 1
                self.last_error = f"flush: {exc}"
            if self._acked:
                await self._settle()

    async def _teardown(self) -> None:
        """Drain inputs (nothing fires after this), flush and stop the component."""
        if self._pull_tasks:
            # Let a batch in progress finish and be acked; the loops see _stopping.
            await asyncio.wait(self._pull_tasks, timeout=3.0)
        self._tasks += self._pull_tasks
        self._pull_tasks = []
        for sub in self._subs:
            await self._close_input(sub)
        self._subs.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._acked and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self._settle(force=True)  # flush what is held, then ack its inputs
        if self.component is not None:
            comp, self.component = self.component, None
            for hook in (comp.flush, comp.stop):
                try:
                    await hook()
                except Exception as exc:
                    self.last_error = f"{hook.__name__}: {exc}"
        if self._publisher is not None:
            if self.nc.is_connected:
                with contextlib.suppress(Exception):
                    await self._publisher.wait()
            await self._publisher.close()
            self._publisher = None

    async def stop(self) -> None:
        self._stopping = True
        # Stop taking core input first, so a component never sees an event after stop
        # (pull loops finish their batch and exit on _stopping).
        for sub in [s for s in self._subs if not hasattr(s, "fetch")]:
            await self._close_input(sub)
            self._subs.remove(sub)
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._teardown()
        if self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
        if self.state != ReplicaState.COMPLETED:
            self.set_state(ReplicaState.STOPPED)


    async def _close_input(self, sub: Any, timeout: float = 2.0) -> None:
        """Unsubscribe, letting already-delivered messages finish (bounded); what is still
        queued after that is lost: counted in ``dropped`` (core inputs). Never raises."""
        try:
            await asyncio.wait_for(sub.drain(), timeout)
        except Exception:
            left = 0 if hasattr(sub, "fetch") else sub.pending_msgs
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if left:
                self.counters.drop(left, "replica stopped with events queued")
        self.host.drops.release(sub)
