"""The ``mqtt`` source: subscribes with a persistent session and acks each message to
the broker once its event is stored (see the ``mqtt`` module's docstring for the whole
story); :class:`_Confirmation` says when that is. Config: ``mqtt.MqttSourceConfig``.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

import msgspec

from componentmanager.component import Component, Context
from componentmanager.components.connectors.mqtt_client import _Broker

if TYPE_CHECKING:
    from componentmanager.components.connectors.mqtt import MqttSourceConfig

#: How often the source looks whether its emitted events are stored (to ack them).
ACK_POLL_S = 0.005
PREVIEW_BYTES = 1024


class _Confirmation:
    """When may a message be acked: once what it became is stored (at-least-once), or
    (exactly-once) once the source's checkpoint is written past it.

    Exactly-once numbers a source's events on from its checkpoint's count after a crash;
    so an event stored but not in the written checkpoint must come again, in the same
    place: such a message is left unacked, the broker sends it again after a restart (the
    unacked ones first, in their order: MQTT requires it) and it gets the same id (the
    readers skip the repeat). An ack sent but not received at a crash makes the broker
    send that message again as well: it takes the next id, the ids after it shift, and
    as many events repeat (the kill -9 test saw 0 in 4 runs, 13 in 1). Telling those
    apart needs the messages' packet ids and DUP flag kept with the position (aiomqtt's
    Message has no DUP flag): not done. A QoS 0 message is never sent again: the source waits until
    the checkpoint holds it before taking the next one.

    The component API has no public call for this: it reads the in-process runner's
    counters (those its SourceCheckpoint uses for ``ctx.advance``). ``usable`` is False
    elsewhere (at-most-once: nothing is confirmed; messages are acked when emitted)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        publisher = getattr(ctx, "_publisher", None)
        self._stored = getattr(publisher, "stored_events", None)
        self.usable = self._stored is not None and isinstance(getattr(ctx, "_emitted", None),
                                                              int)
        checkpoint = getattr(ctx, "_checkpoint", None)
        self._checkpoint = checkpoint
        self.exact = (self.usable and bool(getattr(ctx, "exactly_once", False))
                      and hasattr(checkpoint, "flush") and hasattr(checkpoint, "_written"))

    def emitted(self) -> int:
        return int(self.ctx._emitted)  # type: ignore[attr-defined]

    def stored(self) -> int:
        assert self._stored is not None
        return int(self._stored())

    def _written(self) -> int | None:
        written = getattr(self._checkpoint, "_written", None)
        position = written[0] if isinstance(written, tuple) else None
        return position if isinstance(position, int) else None

    async def covered(self, emitted: int, position: int) -> int | None:
        """How far (an emitted count, or exactly-once a position) is confirmed, when it
        covers (emitted, position); else None."""
        stored = self.stored()
        if stored < emitted:
            return None
        if not self.exact:
            return stored
        written = self._written()
        if written is None or written < position:
            await self._checkpoint.flush()  # type: ignore[union-attr]
            written = self._written()
        return written if written is not None and written >= position else None


# ---------------------------------------------------------------------------- source


class MqttSource(Component):
    """Subscribes with a persistent session; acks each message once its event is stored."""

    position_fields = ("url", "topic", "client_id")  # the broker's session and filter

    def __init__(self, config: MqttSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: MqttSourceConfig = config
        self._broker: _Broker | None = None
        self.received = 0  # messages taken in this run
        self._base = 0  # the position this run started from (messages of earlier runs)

    async def start(self) -> None:
        self._broker = _Broker(self.config, self.ctx)  # a missing ${VAR} fails here

    def event_of(self, topic: str, payload: bytes) -> Any:
        event: Any = None
        if payload[:1] in (b"{", b" ", b"\t", b"\r", b"\n"):
            try:
                event = msgspec.json.decode(payload)
            except msgspec.DecodeError:
                event = None
        if not isinstance(event, dict):
            event = {"payload": payload.decode("utf-8", "replace")}
        if self.config.topic_field:
            event[self.config.topic_field] = topic
        return event

    async def run(self) -> None:
        import aiomqtt

        broker = self._broker
        assert broker is not None
        resumed = await self.ctx.resume_position()
        self._base = resumed if isinstance(resumed, int) else 0
        v5 = self.config.protocol == "5"
        kw: dict[str, Any] = {}
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry
            kw = {"clean_start": False, "properties": props}
        else:
            kw = {"clean_session": False}
        sub_qos = min(self.config.qos, 1)
        while True:
            try:
                client = broker.client(**kw)
                client._client.manual_ack_set(True)  # before connecting: a resumed
                # session's queued messages arrive at once
                async with client:
                    await client.subscribe(self.config.topic, qos=sub_qos)
                    broker.connected()
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                await asyncio.sleep(broker.failed(exc))

    async def _consume(self, client: Any) -> None:
        """Emit each message; ack it (in order) once it is confirmed (see
        :class:`_Confirmation`)."""
        confirm = _Confirmation(self.ctx)
        paho = client._client
        #: (events emitted up to it, its position, mid, qos); mid None: QoS 0 (no ack)
        unacked: collections.deque[tuple[int, int, int | None, int]] = collections.deque()
        wake = asyncio.Event()
        max_bytes = getattr(self.ctx, "max_event_bytes", None)

        async def acker() -> None:
            while True:
                if not unacked:
                    wake.clear()
                    await wake.wait()
                emitted, position, _, _ = unacked[0]
                upto = await confirm.covered(emitted, position)
                if upto is None:
                    await asyncio.sleep(ACK_POLL_S)
                    continue
                while unacked and unacked[0][1 if confirm.exact else 0] <= upto:
                    _, _, mid, qos = unacked.popleft()
                    if mid is not None:
                        paho.ack(mid, qos)

        task = asyncio.create_task(acker()) if confirm.usable else None
        try:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else (
                    str(message.payload).encode())
                topic = message.topic.value
                if max_bytes is not None and len(payload) + len(topic) + 64 > max_bytes:
                    await self.ctx.reject(payload[:PREVIEW_BYTES], (
                        f"an mqtt message of {len(payload):,} bytes on {topic} is larger "
                        f"than the server allows ({max_bytes:,} bytes, its max_payload)"))
                else:
                    await self.ctx.emit("out", self.event_of(topic, payload))
                self.received += 1
                position = self._base + self.received
                self.ctx.advance(position)  # (exactly-once numbers events on from it)
                if task is None:  # at-most-once: nothing confirms storage
                    if message.qos:
                        paho.ack(message.mid, message.qos)
                    continue
                if message.qos == 0 and not confirm.exact:
                    continue
                unacked.append((confirm.emitted(), position,
                                message.mid if message.qos else None, message.qos))
                wake.set()
                while message.qos == 0 and unacked and not task.done():
                    await asyncio.sleep(ACK_POLL_S)  # exactly-once: held by the checkpoint
                if task.done():
                    task.result()
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
