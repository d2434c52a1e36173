"""A tiny SDK: a Python program becomes a flowctl component in a dozen lines.

A processor or sink (the handler may also be ``async def``)::

    from componentmanager.sdk import run_component

    def handle(event, port):          # port: the input port the event arrived on
        event["total"] = event["price"] * event["qty"]
        return event                  # published on the "out" port

    run_component(handle)

What a handler returns: ``None`` publishes nothing; a value is one event on ``out``; a
``list`` is several events (to publish one event that *is* a JSON array, wrap it:
``[array]``); a ``(port, event)`` tuple, alone or inside the list, goes to the named
output port. An exception is printed to stderr (the first of a kind per 10 s, then a
count) and the event is dead-lettered to ``flowctl.<flow>.<node>.dlq`` with a
``Flowctl-Error`` header; the program goes on. With at-least-once the dead letter is
stored before its input is acked (else the input is delivered again), and an input
delivered too often (:func:`~componentmanager.dataplane.wire.undeliverable`) is
dead-lettered without calling the handler.

A source (returns when it is done; the program then exits 0)::

    async def produce(c: Component):
        for i in range(10):
            await c.emit({"n": i})    # or c.emit(event, port="other")

    run_component(source=produce)

The SDK reads the contract environment (:mod:`componentmanager.runners.env`), connects
with :meth:`flowstore.nats.NatsOptions.from_env`, subscribes to every input subject in
``FLOWCTL_QUEUE`` (core NATS: replicas share the work), publishes JSON bodies (msgspec)
with the one ``Flowctl`` metadata header (frames where ``FLOWCTL_FRAME_PORTS`` allows),
takes frames as well as single events, answers
``GET /health`` on ``FLOWCTL_HEALTH_PORT`` (200 once subscribed, else 503), registers
and heartbeats (:mod:`componentmanager.registration`), and on
SIGTERM/SIGINT drains (events in flight are handled and their outputs flushed) and exits
0. ``c.config`` is the node's ``config``. A source waits until the downstream replicas
report ``running`` before it calls ``produce`` (as in-process sources do).

Delivery follows the flow. at-most-once: core subscriptions in the queue group.
at-least-once: each input is pulled from its durable consumer (``FLOWCTL_CONSUMERS``),
outputs are published to the stream with acks (waiting while the stream is full), and
an input message is acked once the outputs it caused are stored; a program killed
mid-way gets its unacked inputs again (duplicates possible, nothing lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from componentmanager.dataplane import (
    HDR_META,
    HDR_REPLAY_TO,
    AckedPublisher,
    EventIds,
    Outbox,
    PublishFailed,
    Puller,
    dead_letter_headers,
    decode_frame,
    encode,
    event_as_received,
    frame_count,
    store_dead_letter,
)
from componentmanager.dataplane.accounting import Throttle, shape
from componentmanager.dataplane.wire import delivery_of, redelivery_delay, undeliverable
from componentmanager.registration import Registration
from flowstore.models import DEFAULT_OUTPUT_PORT, dlq_subject, status_key, stream_name
from flowstore.nats import STATUS_BUCKET, NatsOptions, connect, open_bucket

__all__ = [
    "HDR_META",
    "Component",
    "run",
    "run_component",
]

Handler = Callable[[Any, str], Any]
Source = Callable[["Component"], Awaitable[None]]

#: How long each step of closing (send, settle, wait for acks) may take.
CLOSE_STEP_S = 5.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Component:
    """One replica's view of flowctl: its identity, config, inputs, outputs and NATS."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        e = os.environ if environ is None else environ
        self.flow = e.get("FLOWCTL_FLOW", "")
        self.node = e.get("FLOWCTL_COMPONENT_ID", "")
        self.replica = int(e.get("FLOWCTL_REPLICA", "0") or 0)
        self.inputs: dict[str, list[str]] = json.loads(e.get("FLOWCTL_INPUTS") or "{}")
        self.outputs: dict[str, str] = json.loads(e.get("FLOWCTL_OUTPUTS") or "{}")
        self.queue = e.get("FLOWCTL_QUEUE") or None
        self.delivery = e.get("FLOWCTL_DELIVERY", "at-most-once")
        self.config: dict[str, Any] = json.loads(e.get("FLOWCTL_CONFIG") or "{}")
        self.downstream: dict[str, int] = json.loads(e.get("FLOWCTL_DOWNSTREAM") or "{}")
        self.stream = e.get("FLOWCTL_STREAM") or ""
        self.consumers: dict[str, str] = json.loads(e.get("FLOWCTL_CONSUMERS") or "{}")
        port = e.get("FLOWCTL_HEALTH_PORT")
        self.health_port = int(port) if port else None
        self.nats = NatsOptions.from_env(dict(e))
        self.nc: Any = None
        self.ready = False
        self.received = self.emitted = self.errors = 0
        frame_ports = json.loads(e.get("FLOWCTL_FRAME_PORTS") or "[]")
        self._outbox = Outbox(EventIds(self.node, self.replica, secrets.token_hex(3)),
                              self._send, {self.outputs[p] for p in frame_ports
                                           if p in self.outputs})
        self._flusher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._publisher: AckedPublisher | None = None
        self._pullers: list[Puller] = []
        self._unacked: list[Any] = []
        self._throttle = Throttle()
        self._failures = 0  # output failures so far (see on_msg)

    @property
    def service_id(self) -> str:
        return f"{self.flow}.{self.node}.{self.replica}"

    async def connect(self) -> None:
        self.nc = await connect(self.nats, name=f"flowctl-sdk {self.service_id}", reconnect=True)
        if self.delivery != "at-most-once":
            source_of = stream_name(self.flow) if not self.inputs else None
            self._publisher = await AckedPublisher(self.nc, source_of).open()
        self._flusher = asyncio.ensure_future(self._outbox.run_flusher())

    async def emit(self, event: Any, port: str = DEFAULT_OUTPUT_PORT) -> None:
        """Publish one event on an output port (``out`` by default); events coalesce into
        frames where the readers take them (``FLOWCTL_FRAME_PORTS``)."""
        subject = self.outputs.get(port)
        if subject is None:
            raise ValueError(f"{self.node} has no output port '{port}' (has {list(self.outputs)})")
        await self._outbox.put(subject, encode(event))
        self.emitted += 1

    async def _send(self, subject: str, body: bytes, headers: dict[str, str], count: int) -> None:
        if self._publisher is not None:
            await self._publisher.publish(subject, body, headers)
        else:
            await self.nc.publish(subject, body, headers=headers)

    async def subscribe(self, handler: Handler) -> None:
        """Subscribe to every input subject; each event goes to ``handler(event, port)``."""
        for port, subjects in self.inputs.items():
            if self._publisher is not None and port in self.consumers:
                puller = Puller(self.nc, self.stream, self.consumers[port],
                                self._on_msg(handler, port), self._settle)
                self._pullers.append(puller)
                await puller.start()
                continue
            for subject in subjects:
                cb = self._on_msg(handler, port)
                await self.nc.subscribe(subject, queue=self.queue or "", cb=cb)

    def _on_msg(self, handler: Handler, port: str) -> Callable[[Any], Awaitable[None]]:
        async def on_msg(msg: Any) -> None:
            target = msg.headers.get(HDR_REPLAY_TO) if msg.headers else None
            if target is not None and target != self.node:  # a replay meant for another node
                if self._publisher is not None:
                    self._unacked.append(msg)
                return
            events = decode_frame(msg.data, frame_count(msg.headers))
            delivered = (delivery_of(msg.reply) or (0, 0))[1]
            all_dead_letters_stored, failures_before = True, self._failures
            async with self._outbox.handling():  # one output frame per input message
                for index, event in enumerate(events):
                    all_dead_letters_stored &= await self._handle(
                        handler, port, msg, index, event, delivered)
            if self._publisher is None:
                return
            if all_dead_letters_stored and failures_before == self._failures:
                self._unacked.append(msg)
            else:  # a dead letter not stored, or outputs failed (maybe its own) while it
                # was handled: delivered again (later each time), never acked unkept
                with contextlib.suppress(Exception):
                    await msg.nak(delay=redelivery_delay(delivered))

        return on_msg

    async def _handle(self, handler: Handler, port: str, msg: Any, index: int, event: Any,
                      delivered: int) -> bool:
        """One event through the handler; False when it failed and its dead letter could
        not be stored."""
        self.received += 1
        try:
            if (why := undeliverable(delivered)) is not None:
                raise RuntimeError(why)
            result = handler(event, port)
            if inspect.isawaitable(result):
                result = await result
            await self._publish(result)
            return True
        except Exception as exc:
            self.errors += 1
            error = f"{type(exc).__name__}: {exc}"
            self._say(f"event on port {port} failed", error)
            return await self._dead_letter(
                event_as_received(msg.data, frame_count(msg.headers), index),
                dead_letter_headers(msg.headers, index, error))

    def _say(self, what: str, error: str) -> None:
        """Log a failure once per interval for its kind, with a count of the others."""
        for (said, _), held, example in self._throttle.due():
            _log(f"{self.service_id}: {said}: {held} more like it in the last 10 s: {example}")
        if self._throttle.admit((what, shape(error)), error):
            _log(f"{self.service_id}: {what}: {error}")

    async def _dead_letter(self, data: bytes, headers: dict[str, str]) -> bool:
        """Whether it was stored (at-least-once: confirmed by FLOWCTL_DLQ)."""
        try:
            await store_dead_letter(self.nc, dlq_subject(self.flow, self.node), data,
                                    headers, confirmed=self._publisher is not None)
            return True
        except Exception as exc:
            self._say("dead letter not stored", f"{type(exc).__name__}: {exc}")
            return False

    async def _settle(self) -> None:
        """at-least-once: ack the inputs handled so far once their outputs are stored."""
        if not self._unacked or self._publisher is None:
            return
        batch, self._unacked = self._unacked, []
        try:
            await self._outbox.flush()
            await self._publisher.wait()
        except PublishFailed as exc:
            _log(f"{self.service_id}: outputs not stored ({exc}); inputs redelivered")
            self._failures += 1  # inputs in hand now are delivered again too (on_msg)
            await self._nak_all(batch)
            return
        for msg in batch:
            with contextlib.suppress(Exception):
                await msg.ack()

    @staticmethod
    async def _nak_all(batch: list[Any]) -> None:
        for msg in batch:
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _publish(self, result: Any) -> None:
        if result is None:
            return
        for item in result if isinstance(result, list) else [result]:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                await self.emit(item[1], item[0])
            else:
                await self.emit(item)

    async def wait_for_downstream(self) -> None:
        """Until every downstream replica reports ``running`` (or a stop is requested)."""
        keys = [status_key(self.flow, n, r) for n, k in self.downstream.items() for r in range(k)]
        if not keys or self.delivery != "at-most-once":
            return
        kv = await open_bucket(self.nc, STATUS_BUCKET)
        while keys and not self._stop.is_set():
            waiting = []
            for key in keys:
                try:
                    entry = await kv.get(key)
                    if entry.value is not None and (b'"state":"running"' in entry.value
                                                    or b'"state":"degraded"' in entry.value):
                        continue
                except Exception:
                    pass
                waiting.append(key)
            keys = waiting
            if keys:
                await asyncio.sleep(0.2)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        """Drain: stop taking input, finish the events in flight, flush outputs, close."""
        for puller in self._pullers:
            await puller.stop()
        with contextlib.suppress(Exception):  # each step bounded: a stream that refuses
            async with asyncio.timeout(CLOSE_STEP_S):  # a source's events (retried until
                await self._outbox.flush()             # stored) must not hold the exit
        if self._flusher is not None:
            self._flusher.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_STEP_S):
                await self._settle()
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_STEP_S):
                    await self._publisher.wait()
            await self._publisher.close()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 10.0)

    async def serve_health(self) -> asyncio.AbstractServer | None:
        if not self.health_port:
            return None

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                request = await asyncio.wait_for(reader.readline(), 5.0)
                if b" /health" not in request:
                    status, body = "404 Not Found", b"not found\n"
                elif self.ready:
                    status, body = "200 OK", b"ok\n"
                else:
                    status, body = "503 Service Unavailable", b"not ready\n"
                head = f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                await writer.drain()
            writer.close()

        return await asyncio.start_server(answer, "0.0.0.0", self.health_port)


async def run(
    handler: Handler | None = None,
    *,
    source: Source | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run a component until SIGTERM/SIGINT (or, for a source, until it returns)."""
    comp = Component(environ)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, comp.request_stop)
    try:
        await comp.connect()
    except Exception as exc:
        _log(f"{comp.service_id}: {exc}")
        return 1
    health = None
    beats = Registration(comp.nc, os.environ if environ is None else environ)
    beats.start()  # register, then heartbeat (the agent restarts a hung program)
    try:
        health = await comp.serve_health()
        if handler is not None:
            await comp.subscribe(handler)
        comp.ready = True
        ready_subject = os.environ.get("FLOWCTL_READY_SUBJECT")
        if ready_subject:  # tell the agent: subscribed, events may come
            await comp.nc.publish(ready_subject, b"")
            await comp.nc.flush()
        _log(f"{comp.service_id}: ready (inputs {comp.inputs}, outputs {comp.outputs})")
        if source is None:
            await comp.wait_stopped()
        else:
            await comp.wait_for_downstream()
            produce = asyncio.ensure_future(source(comp))
            stopping = asyncio.ensure_future(comp.wait_stopped())
            await asyncio.wait({produce, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not produce.done():
                produce.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await produce  # a source's exception propagates: exit code 1
        return 0
    except Exception as exc:
        _log(f"{comp.service_id}: {type(exc).__name__}: {exc}")
        return 1
    finally:
        comp.ready = False
        await beats.stop()
        if health is not None:
            health.close()
        await comp.close()


def run_component(handler: Handler | None = None, *, source: Source | None = None) -> None:
    """Run ``handler`` (processor/sink) or ``source`` as this program; exits the process."""
    if (handler is None) == (source is None):
        raise TypeError("run_component needs exactly one of handler or source=")
    sys.exit(asyncio.run(run(handler, source=source)))
