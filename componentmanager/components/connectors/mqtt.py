"""MQTT (3.1.1 and 5) source and sink, over aiomqtt (paho-mqtt underneath).

``mqtt`` source: subscribes to ``topic`` (wildcards ``+`` and ``#``, shared subscriptions
``$share/<group>/...``) on ``url`` (``mqtt://host:port``, ``mqtts://`` with TLS). A payload
that is a JSON object becomes the event; anything else ``{"payload": "<text>"}``; the MQTT
topic goes in the field ``topic`` (``topic_field``).

What the broker hands over is acknowledged only once it is stored in the flow's stream:
the client acks by hand (paho's manual ack, ``PUBACK`` in the order received) when the
runtime's publisher says every event emitted up to that message is stored; with
``delivery: exactly-once`` only once the source's checkpoint is written past it too (see
:class:`_Confirmation`: acking on storage alone there loses events after a crash, the
ids of stored events being given to new ones). At-most-once acks on emit.

A QoS 2 subscription is made at QoS 1: in QoS 2 the receiver answers ``PUBREC`` on
receipt (paho does, it cannot be delayed) and the broker then never sends the payload
again, so a crash before the event is stored would lose it; at QoS 1 the ``PUBACK``
waits for the stream. The client keeps a persistent session (MQTT 3.1.1
``clean_session: false``; MQTT 5 ``clean_start: false`` with ``session_expiry``) under a
fixed client id per replica, so what is published while the source is down (a crash, a
move, a restart) is queued by the broker and delivered when it comes back; an event
stored but not yet acked at a crash is delivered again (at-least-once: a repeat, never a
loss; exactly-once: under the id it had, skipped, except after an ack that was on its
way at the crash: the broker sends that message again too and the ids after it shift,
so a few events may repeat; never a loss). The broker keeps at most its
``max_queued_messages`` (mosquitto: 1,000 by default) per offline session: raise it for
long outages.

``mqtt`` sink: publishes each event as JSON to ``topic``, a template whose ``{...}`` parts
are expressions of the event (``devices/{device}/out``, ``{{``/``}}`` for literal braces),
at ``qos`` (a QoS 1/2 publish returns once the broker acknowledged it), ``retain``
optional. MQTT has no de-duplication by id: the sink cannot take part in an exactly-once
flow (``exactly_once`` None: ``validate`` refuses it); at-least-once it may publish an
event again after a crash.

Both: ``username``/``password`` only as ``${VAR}`` (expanded from the agent's environment
when the replica starts: never in the flow, KV, logs or errors), or ``password_file``; a
broker unreachable at start or going away means retrying with a growing pause (up to
:data:`RETRY_MAX_S`), logged once per :data:`SAY_EVERY_S` and shown as the replica's
status reason (``waiting: mqtt broker at host:port ...``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import ssl
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from componentmanager.component import Component, Context, EventError
from componentmanager.components.expressions import Expression, compile_expression
from componentmanager.registry import ComponentType, Port, register

#: Pauses between connection attempts grow up to this.
RETRY_MAX_S = 10.0
RETRY_FIRST_S = 0.5
#: A broker that stays unreachable is said (log line) at most this often.
SAY_EVERY_S = 30.0
#: How often the source looks whether its emitted events are stored (to ack them).
ACK_POLL_S = 0.005
PREVIEW_BYTES = 1024

_SECRET = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


# ---------------------------------------------------------------------------- config


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"url {value!r}: use mqtt://host:port or mqtts://host:port (TLS)")
    if "@" in parts.netloc:
        raise ValueError("url: no credentials in the url (they would be stored in the flow "
                         "and shown); use username: ${VAR} and password: ${VAR}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url {value!r}: {exc}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or port == 0:
        raise ValueError(f"url {value!r}: expected mqtt://host[:port] with nothing after it")
    return value


def _check_secret(value: str | None) -> str | None:
    if value is not None and not _SECRET.match(value):
        raise ValueError("give it as ${VAR}, a variable of the agent's environment (it is "
                         "never stored in the flow, KV, logs or errors)")
    return value


def _check_filter(topic: str) -> str:
    """An MQTT topic filter: ``+`` a whole level, ``#`` the whole last level."""
    levels = topic.split("/")
    if levels[0] == "$share":
        if len(levels) < 3 or not levels[1] or any(c in levels[1] for c in "+#"):
            raise ValueError(f"topic {topic!r}: a shared subscription is $share/<group>/<filter>")
        levels = levels[2:]
    if not topic or "\x00" in topic:
        raise ValueError("topic: empty or holds a NUL")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise ValueError(f"topic {topic!r}: + and # must each be a whole level")
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"topic {topic!r}: # must be the last level")
    return topic


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # no secret echoed

    url: str = Field(description="mqtt://host[:port] (1883 by default) or mqtts://host[:port] "
                     "(TLS, 8883 by default).")
    qos: Literal[0, 1, 2] = Field(default=1, description="MQTT quality of service 0, 1 or 2.")
    client_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Client id; replica n > 0 adds -n. Default flowctl-<flow>-<node>-<replica>.")
    username: str | None = Field(default=None, description="${VAR} only: from the agent's "
                                 "environment.")
    password: str | None = Field(default=None, description="${VAR} only: from the agent's "
                                 "environment.")
    password_file: str | None = Field(
        default=None, min_length=1,
        description="A file on the agent holding the password (instead of password; "
        "read at start, a final newline dropped).")
    ca_file: str | None = Field(default=None, description="mqtts: a CA bundle (PEM) to trust "
                                "instead of the system's.")
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="MQTT version.")
    keepalive: int = Field(default=30, ge=5, le=3600, description="Seconds between pings.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("username", "password")
    @classmethod
    def _secrets(cls, value: str | None) -> str | None:
        return _check_secret(value)

    @model_validator(mode="after")
    def _one_password(self) -> _Common:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self


class MqttSourceConfig(_Common):
    topic: str = Field(description="Topic filter to subscribe to; + and # wildcards, "
                       "$share/<group>/<filter> to split messages between subscribers.")
    topic_field: str | None = Field(
        default="topic", min_length=1,
        description="The event field that gets the message's topic (null: none).")
    session_expiry: int = Field(
        default=7 * 86400, ge=0,
        description="MQTT 5: seconds the broker keeps the session (and queues messages) "
        "while the source is away. MQTT 3.1.1 sessions last as long as the broker keeps them.")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _check_filter(value)


def parse_template(text: str) -> list[str | Expression]:
    """``a/{expr}/b`` as literal parts and compiled expressions (``{{``, ``}}``: braces)."""
    parts: list[str | Expression] = []
    literal, i = "", 0
    while i < len(text):
        c = text[i]
        if c in "{}" and text[i:i + 2] in ("{{", "}}"):
            literal += c
            i += 2
            continue
        if c == "}":
            raise ValueError(f"topic {text!r}: a lone }} (write }}}} for a literal one)")
        if c == "{":
            end = text.find("}", i)
            if end < 0:
                raise ValueError(f"topic {text!r}: a {{ without its }}")
            source = text[i + 1:end].strip()
            if not source:
                raise ValueError(f"topic {text!r}: an empty {{}}")
            try:
                expr = compile_expression(source)
            except Exception as exc:
                raise ValueError(f"topic {text!r}: {{{source}}}: {exc}") from None
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(expr)
            i = end + 1
            continue
        literal += c
        i += 1
    if literal:
        parts.append(literal)
    return parts


class MqttSinkConfig(_Common):
    topic: str = Field(description="Topic to publish to: a template, {...} parts are "
                       "expressions of the event (devices/{device}/out); no wildcards.")
    retain: bool = Field(default=False, description="Publish with the retain flag.")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        parts = parse_template(value)
        if any(isinstance(p, str) and ("+" in p or "#" in p) for p in parts) or not value:
            raise ValueError(f"topic {value!r}: no wildcards (+, #) in a topic to publish to")
        return value


# --------------------------------------------------------------------------- shared


def _client_id(config: _Common, ctx: Context) -> str:
    if config.client_id:
        return config.client_id if not ctx.replica else f"{config.client_id}-{ctx.replica}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"flowctl-{ctx.flow}-{ctx.node}-{ctx.replica}")


def _secret(value: str | None, what: str) -> str | None:
    """A ``${VAR}`` from the agent's environment (an error names the variable only)."""
    if value is None:
        return None
    name = value[2:-1]
    if name not in os.environ:
        raise RuntimeError(f"mqtt {what}: undefined variable ${{{name}}} "
                           "(not set in the agent's environment)")
    return os.environ[name]


class _Broker:
    """Connection settings and the 'waiting' reporting of one mqtt node."""

    def __init__(self, config: _Common, ctx: Context) -> None:
        parts = urlsplit(config.url)
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname or ""
        self.port = parts.port or (8883 if self.tls else 1883)
        self.where = f"{self.host}:{self.port}"
        self.config, self.ctx = config, ctx
        self.client_id = _client_id(config, ctx)
        self.username = _secret(config.username, "username")
        self.password = _secret(config.password, "password")
        if config.password_file is not None:
            try:
                with open(config.password_file, encoding="utf-8") as fh:
                    self.password = fh.read().removesuffix("\n").removesuffix("\r")
            except OSError as exc:
                raise RuntimeError(f"mqtt password_file {config.password_file}: cannot read "
                                   f"it ({exc.strerror or type(exc).__name__})") from None
        self._failing_since: float | None = None
        self._said_at = 0.0
        self._attempts = 0
        self.delay = RETRY_FIRST_S

    def client(self, **kw: Any) -> Any:
        import aiomqtt  # the dependency loads only where an mqtt node runs

        tls = None
        if self.tls:
            tls = ssl.create_default_context(cafile=self.config.ca_file)
        protocol = (aiomqtt.ProtocolVersion.V5 if self.config.protocol == "5"
                    else aiomqtt.ProtocolVersion.V311)
        return aiomqtt.Client(
            self.host, self.port, identifier=self.client_id, username=self.username,
            password=self.password, protocol=protocol, keepalive=self.config.keepalive,
            tls_context=tls, timeout=10, **kw)

    def _set_note(self, note: str | None) -> None:
        if hasattr(self.ctx, "note"):  # the replica's status reason (in-process runner)
            with contextlib.suppress(Exception):
                self.ctx.note = note  # type: ignore[misc]

    def failed(self, exc: BaseException) -> float:
        """A connection attempt or connection failed: say so (once per SAY_EVERY_S) and
        return the pause before the next attempt."""
        now = time.monotonic()
        self._attempts += 1
        why = str(exc) or type(exc).__name__
        for secret in (self.username, self.password):  # never echoed, whatever the lib says
            if secret:
                why = why.replace(secret, "***")
        note = f"waiting: mqtt broker at {self.where}: {why}; retrying"
        self._set_note(note)
        if self._failing_since is None or now - self._said_at >= SAY_EVERY_S:
            since = "" if self._failing_since is None else (
                f" (for {now - self._failing_since:.0f} s, {self._attempts} attempts)")
            self.ctx.log(note + since)
            self._said_at = now
        if self._failing_since is None:
            self._failing_since = now
        delay = self.delay
        self.delay = min(self.delay * 2, RETRY_MAX_S)
        return delay

    def connected(self) -> None:
        if self._failing_since is not None:
            self.ctx.log(f"connected to the mqtt broker at {self.where} after "
                         f"{time.monotonic() - self._failing_since:.1f} s")
            self._set_note(None)
        self._failing_since, self._attempts, self.delay = None, 0, RETRY_FIRST_S


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


# ------------------------------------------------------------------------------ sink


class MqttSink(Component):
    """Publishes each event as JSON to its templated topic; waits for the broker's ack
    (QoS 1/2); a lost broker means waiting and retrying (the flow slows, nothing drops)."""

    exactly_once = None  # MQTT cannot drop a repeat: no exactly-once (validate refuses)

    def __init__(self, config: MqttSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: MqttSinkConfig = config
        self._parts = parse_template(config.topic)
        self._broker: _Broker | None = None
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._connecting = asyncio.Lock()

    async def start(self) -> None:
        self._broker = _Broker(self.config, self.ctx)

    def topic_of(self, event: Any) -> str:
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.evaluate(event)
            if value is None:
                raise EventError(f"mqtt sink: topic {self.config.topic!r}: "
                                 f"{{{part.text}}} is null for this event")
            out.append(("true" if value else "false") if isinstance(value, bool) else str(value))
        topic = "".join(out)
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise EventError(f"mqtt sink: {topic!r} (from {self.config.topic!r}) is not a "
                             "topic to publish to (empty, or holds + # or NUL)")
        return topic

    async def _connected(self) -> Any:
        import aiomqtt

        async with self._connecting:
            broker = self._broker
            assert broker is not None
            while self._client is None:
                stack = contextlib.AsyncExitStack()
                try:
                    client = broker.client(clean_session=True) if self.config.protocol != "5" \
                        else broker.client()
                    client.pending_calls_threshold = 1 << 16  # a batch is published at once
                    await stack.enter_async_context(client)
                except aiomqtt.MqttError as exc:
                    await stack.aclose()
                    await asyncio.sleep(broker.failed(exc))
                    continue
                broker.connected()
                self._client, self._stack = client, stack
            return self._client

    async def _drop(self, client: Any) -> None:
        if self._client is client:
            stack, self._client, self._stack = self._stack, None, None
            if stack is not None:
                with contextlib.suppress(Exception):
                    await stack.aclose()

    async def _publish(self, topic: str, body: bytes) -> None:
        import aiomqtt

        assert self._broker is not None
        while True:
            client = await self._connected()
            try:
                await self._publish_on(client, topic, body)
                return
            except aiomqtt.MqttError as exc:  # gone: reconnect and publish it again
                await self._drop(client)
                await asyncio.sleep(self._broker.failed(exc))

    async def _publish_on(self, client: Any, topic: str, body: bytes) -> None:
        """One publish, acked by the broker (QoS 1/2); a lost connection fails it at once
        (aiomqtt would wait for the ack until its timeout)."""
        import aiomqtt

        publish = asyncio.ensure_future(client.publish(
            topic, body, qos=self.config.qos, retain=self.config.retain, timeout=30))
        gone = client._disconnected  # set (with the reason) when the connection ends
        await asyncio.wait({publish, gone}, return_when=asyncio.FIRST_COMPLETED)
        if publish.done():
            publish.result()
            return
        publish.cancel()
        await asyncio.gather(publish, return_exceptions=True)
        reason = gone.exception() if not gone.cancelled() else None
        raise aiomqtt.MqttError(f"connection lost ({reason or 'closed'})")

    async def process(self, port: str, event: Any) -> None:
        await self._publish(self.topic_of(event), msgspec.json.encode(event))
        self.ctx.wrote()

    async def process_batch(self, port: str, events: list[Any]) -> bool:
        try:
            items = [(self.topic_of(e), msgspec.json.encode(e)) for e in events]
        except Exception:
            return False  # process() says which one fails
        await asyncio.gather(*(self._publish(t, b) for t, b in items))  # pipelined
        self.ctx.wrote(len(items))
        return True

    async def stop(self) -> None:
        if self._client is not None:
            await self._drop(self._client)


# -------------------------------------------------------------------------- register

_MOD = "componentmanager.components.connectors.mqtt"
OUT = (Port("out", description="one event per MQTT message"),)
IN = (Port("in", required=True, description="the events to publish"),)

register(ComponentType(
    name="mqtt", role="source", config_model=MqttSourceConfig, outputs=OUT,
    description="Subscribe to an MQTT topic (3.1.1 or 5) and emit each message.",
    impl=f"{_MOD}:MqttSource",
    docs='A JSON object payload is the event, anything else {"payload": text}; the topic '
         "goes in the field topic. QoS 1/2 messages are acked to the broker only once "
         "stored in the flow's stream (QoS 2 subscribes at QoS 1 for that); a persistent "
         "session under a fixed client id per replica gets what was published while the "
         "source was away. username/password as ${VAR} only.",
))
register(ComponentType(
    name="mqtt", role="sink", exactly_once=None, config_model=MqttSinkConfig, inputs=IN,
    description="Publish each event as JSON to an MQTT topic (a template of event fields).",
    impl=f"{_MOD}:MqttSink",
    docs="topic: {...} parts are expressions of the event (devices/{device}/out). QoS 1/2 "
         "publishes wait for the broker's ack; a lost broker is retried (the flow waits). "
         "At-least-once at best: MQTT cannot drop a repeated publish, so exactly-once flows "
         "refuse this sink.",
))
