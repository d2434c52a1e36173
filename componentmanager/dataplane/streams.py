"""JetStream plumbing of at-least-once flows: the flow's stream, the node inputs' durable
consumers and :class:`AckedPublisher`.

* at-most-once: core NATS publish; inputs are queue subscriptions (``flowctl.<flow>.<node>``)
  so replicas share the work (the runners do that directly).
* at-least-once: one stream per flow over ``flowctl.<flow>.>`` (limits retention, kept a
  day, so a late consumer loses nothing; the engine deletes it on undeploy/delete); a
  durable pull consumer per node input shared by the replicas; outputs are published
  with pipelined JetStream acks (:class:`AckedPublisher`) and inputs are acked only after
  their outputs are stored (and, for buffering components, flushed).
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from flowstore.models import consumer_name, stream_name

STREAM_MAX_AGE_S = 24 * 3600.0
DEFAULT_MAX_DELIVER = 5
DEFAULT_MAX_ACK_PENDING = 1000
DEFAULT_ACK_WAIT_S = 10.0


async def ensure_stream(nc: NatsClient, flow: str, replicas: int = 1) -> None:
    """Create the flow's stream if it does not exist (idempotent, safe under races)."""
    js = nc.jetstream()
    name = stream_name(flow)
    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    config = StreamConfig(
        name=name,
        subjects=[f"flowctl.{flow}.>"],
        retention=RetentionPolicy.LIMITS,
        max_age=STREAM_MAX_AGE_S,
        num_replicas=replicas,
        description=f"flowctl at-least-once flow {flow}",
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.stream_info(name)  # created concurrently by another replica


async def ensure_consumer(
    nc: NatsClient,
    flow: str,
    node: str,
    port: str,
    subjects: list[str],
    *,
    max_deliver: int = DEFAULT_MAX_DELIVER,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
    ack_wait: float = DEFAULT_ACK_WAIT_S,
) -> str:
    """The durable pull consumer of one node input; its settings follow the config."""
    js = nc.jetstream()
    durable = consumer_name(node, port)
    config = ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
        filter_subjects=subjects if len(subjects) > 1 else None,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
    )
    try:
        await js.add_consumer(stream_name(flow), config)
    except BadRequestError:
        # Exists with other settings (the flow changed): replace it.
        await js.delete_consumer(stream_name(flow), durable)
        await js.add_consumer(stream_name(flow), config)
    return durable


class PublishFailed(Exception):
    pass


class AckedPublisher:
    """Publish to JetStream without a round trip per message.

    Messages go out with a reply subject; one subscription counts the PubAcks. ``wait()``
    returns when every message published so far is stored, or raises
    :class:`PublishFailed`. After a timeout the publisher moves to a new generation (a
    new reply subject): late acks of the abandoned messages are ignored, never counted
    against newer ones.
    """

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self._base = nc.new_inbox()
        self._generation = 0
        self.reply = f"{self._base}.0"
        self.outstanding = 0
        self.error: str | None = None
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._sub: Any = None

    async def open(self) -> AckedPublisher:
        self._sub = await self.nc.subscribe(f"{self._base}.*", cb=self._on_ack)
        return self

    async def _on_ack(self, msg: Msg) -> None:
        if msg.subject != self.reply:
            return  # an ack of an abandoned generation
        if b'"error"' in msg.data or not msg.data:
            self.error = msg.data.decode("utf-8", "replace") or "no responders (no stream?)"
        self.outstanding -= 1
        if self.outstanding <= 0:
            self._all_acked.set()

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        self.outstanding += 1
        self._all_acked.clear()
        await self.nc.publish(subject, body, reply=self.reply, headers=headers)

    def _abandon(self) -> None:
        self._generation += 1
        self.reply = f"{self._base}.{self._generation}"
        self.outstanding = 0
        self.error = None
        self._all_acked.set()

    async def wait(self, timeout: float = 10.0) -> None:
        if self.outstanding > 0:
            await self.nc.flush()
            try:
                await asyncio.wait_for(self._all_acked.wait(), timeout)
            except TimeoutError:
                self._abandon()
                raise PublishFailed("timed out waiting for JetStream acks") from None
        if self.error is not None:
            error, self.error = self.error, None
            raise PublishFailed(error)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
