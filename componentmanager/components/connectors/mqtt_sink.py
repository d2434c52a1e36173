"""The ``mqtt`` sink: publishes each event as JSON to a topic template whose ``{...}``
parts are expressions of the event (:func:`parse_template`), waiting for the broker's ack
at QoS 1/2 and reconnecting (then publishing again) when the broker goes away.
At-least-once at best. Config: ``mqtt.MqttSinkConfig``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import msgspec

from componentmanager.component import Component, Context, EventError
from componentmanager.components.connectors.mqtt_client import _Broker
from componentmanager.components.expressions import Expression, compile_expression

if TYPE_CHECKING:
    from componentmanager.components.connectors.mqtt import MqttSinkConfig


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
