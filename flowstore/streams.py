"""The JetStream streams of flows, defined once (the engine creates them at deploy; agents
and the SDK only bind to them, recreating one only if someone removed it).

* ``FLOWCTL_<flow>``: the buffer of an at-least-once flow. Its subjects are the flow's
  output subjects (``flowctl.<flow>.<node>.<port>``). Interest retention: an event is kept
  until every node input reading it has acked it, and each input's durable consumer
  exists from deploy on, so nothing is lost to a late consumer. ``max_bytes`` is the
  flow's ``spec.buffer``, with new messages refused when full: publishers wait and retry
  (backpressure), the stream never grows past it.
* ``FLOWCTL_DLQ``: dead letters of every flow (``flowctl.<flow>.<node>.dlq``), kept
  :data:`DLQ_MAX_AGE_S` or up to :data:`DLQ_MAX_BYTES` (oldest dropped first); it
  survives undeploy.
* ``FLOWCTL_LOGS``: component log lines and event failures of every flow
  (``flowctl.logs.<flow>.<node>.<replica>``), kept :data:`LOGS_MAX_AGE_S` or up to
  :data:`LOGS_MAX_BYTES` (oldest dropped first); ``flowctl logs`` reads it. Its subjects
  have five tokens, so they never overlap a flow's (four) or the dead letters'.
"""

from __future__ import annotations

import contextlib

from nats.aio.client import Client as NatsClient
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from flowstore.models import (
    PARTITION_CONSUMER,
    ComponentConfig,
    consumer_name,
    consumer_names,
    partition_count_of,
    stream_name,
)

DLQ_STREAM = "FLOWCTL_DLQ"
DLQ_SUBJECTS = ["flowctl.*.*.dlq"]
DLQ_MAX_AGE_S = 7 * 24 * 3600.0
DLQ_MAX_BYTES = 256 * 2**20

LOGS_STREAM = "FLOWCTL_LOGS"
LOGS_SUBJECTS = ["flowctl.logs.*.*.*"]
LOGS_MAX_AGE_S = 3 * 24 * 3600.0
LOGS_MAX_BYTES = 128 * 2**20

#: JetStream delivers an input until it is acked (a consumer's ``max_deliver`` would let
#: an unacked message go unseen: never counted, never dead-lettered). Instead the replica
#: that receives a message for the :data:`DEAD_AFTER_DELIVERIES`-th time dead-letters its
#: events unprocessed (counted in ``errors``; its replica crashed on it or could not
#: store its outputs each time) and acks it once the dead letters are stored.
DEFAULT_MAX_DELIVER = -1
DEAD_AFTER_DELIVERIES = 10
DEFAULT_MAX_ACK_PENDING = 1000
#: Short, so that what a dead replica had in hand is delivered again soon after it died
#: (by the time its replacement runs, at a 1 s heartbeat); a live replica keeps what it
#: holds alive with progress acks meanwhile.
DEFAULT_ACK_WAIT_S = 2.0


def flow_stream_config(flow: str, subjects: list[str], max_bytes: int,
                       replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=stream_name(flow),
        subjects=sorted(subjects),
        retention=RetentionPolicy.INTEREST,
        discard=DiscardPolicy.NEW,
        max_bytes=max_bytes,
        num_replicas=replicas,
        description=f"flowctl at-least-once flow {flow}",
    )


def consumer_config(durable: str, subjects: list[str],
                    start: int | None = None) -> ConsumerConfig:
    """The durable pull consumer of one node input (see :func:`consumer_names`), from the
    first event the stream holds, or from stream sequence ``start``."""
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=DEFAULT_ACK_WAIT_S,
        max_deliver=DEFAULT_MAX_DELIVER,
        max_ack_pending=DEFAULT_MAX_ACK_PENDING,
        filter_subjects=subjects if len(subjects) > 1 else None,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
    )


def output_subjects(configs: list[ComponentConfig]) -> list[str]:
    """The flow's output subjects, and the partitions of each keyed reader of one
    (``<subject>.<reader>.>``: of any replica count, so a repartitioned reader's old
    partitions are still there to be handed over)."""
    plain = {s for cfg in configs for s in cfg.outputs.values()}
    split = {f"{cfg.outputs[port]}.{reader.node}.>" for cfg in configs
             for port, readers in cfg.keyed_outputs.items() if port in cfg.outputs
             for reader in readers}
    return sorted(plain | split)


async def ensure_flow_stream(nc: NatsClient, flow: str, subjects: list[str], max_bytes: int,
                             replicas: int = 1) -> None:
    """Create the flow's stream, or bring its subjects and byte limit up to date."""
    js = nc.jetstream()
    wanted = flow_stream_config(flow, subjects, max_bytes, replicas)
    try:
        info = await js.stream_info(wanted.name)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            return
        except BadRequestError:
            info = await js.stream_info(wanted.name)  # created concurrently
    current = info.config
    if sorted(current.subjects or []) != wanted.subjects or current.max_bytes != max_bytes:
        current.subjects, current.max_bytes = wanted.subjects, max_bytes
        await js.update_stream(current)


async def ensure_consumer(nc: NatsClient, flow: str, durable: str, subjects: list[str],
                          start: int | None = None,
                          known: ConsumerInfo | None = None) -> ConsumerInfo:
    """A durable consumer of one node input: created when missing (from ``start``), kept
    as it is when it reads the same subjects, replaced when its subjects changed; its
    info as it is now. ``known``: its info, when the caller has it."""
    js = nc.jetstream()
    if known is None:
        with contextlib.suppress(NotFoundError):
            known = await js.consumer_info(stream_name(flow), durable)
    if known is not None:
        if reads_as_wanted(_subjects(known.config), subjects):
            if ((known.config.max_deliver or -1) > 0  # made by an older version:
                    or known.config.ack_wait != DEFAULT_ACK_WAIT_S):  # brought up to date
                known.config.max_deliver = DEFAULT_MAX_DELIVER
                known.config.ack_wait = DEFAULT_ACK_WAIT_S
                return await js.add_consumer(stream_name(flow), known.config)
            return known
        await js.delete_consumer(stream_name(flow), durable)
    try:
        return await js.add_consumer(stream_name(flow),
                                     consumer_config(durable, subjects, start))
    except BadRequestError:  # created concurrently (a replica, the engine)
        return await js.consumer_info(stream_name(flow), durable)


def _subjects(config: ConsumerConfig) -> list[str]:
    return sorted(config.filter_subjects or ([config.filter_subject]
                                             if config.filter_subject else []))


async def ensure_flow_streams(nc: NatsClient, flow: str, configs: list[ComponentConfig],
                              max_bytes: int, replicas: int = 1) -> None:
    """Everything an at-least-once flow needs before its first event: the stream and a
    durable consumer per node input (and the shared dead-letter stream)."""
    await ensure_dlq_stream(nc, replicas)
    await ensure_flow_stream(nc, flow, output_subjects(configs), max_bytes, replicas)
    existing = await _durables(nc, flow)
    wanted = {name: (cfg.node, port, subjects)
              for cfg in configs for name, port, subjects in consumer_names(cfg)}
    for name, (node, port, subjects) in wanted.items():
        start = None
        if name not in existing:
            start = handover_start(existing, node, port)
            subjects = subjects + handover_subjects(existing, node, port, subjects)
        await ensure_consumer(nc, flow, name, subjects, start, existing.get(name))
    for name in set(existing) - set(wanted):  # after the new ones: no event is let go
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_consumer(stream_name(flow), name)


def handover_start(existing: dict[str, ConsumerInfo], node: str, port: str) -> int | None:
    """Where the new consumers of an input that is partitioned anew (other replica count,
    ``partition_by`` set or removed) start: after the lowest ack floor of its old ones,
    so no event one of them had not acked is skipped (what some had acked is delivered
    again: repeats, never losses). None: the input is new, from the first event kept."""
    base = consumer_name(node, port)
    floors = [int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
              for name, info in existing.items()
              if name == base or (name.startswith(base)
                                  and PARTITION_CONSUMER.fullmatch(name[len(base):]))]
    return min(floors) + 1 if floors else None


def handover_subjects(existing: dict[str, ConsumerInfo], node: str, port: str,
                      subjects: list[str]) -> list[str]:
    """What the new consumer of a repartitioned input reads beside its own partition:
    every other partition count its old consumers read (``<subject>.<reader>.<n>.*``),
    where events may still wait; its replica takes its own keys of those (they go
    quiet once the producers send to the new partitions)."""
    base = consumer_name(node, port)
    olds = [s for name, info in existing.items()
            if name == base or (name.startswith(base)
                                and PARTITION_CONSUMER.fullmatch(name[len(base):]))
            for s in _subjects(info.config)]
    return sorted({old for old in (earlier_partitions(s, subjects) for s in olds) if old})


def earlier_partitions(old: str, subjects: list[str]) -> str | None:
    """``old`` (a subject a consumer read) as a handover subject of a consumer reading
    ``subjects``: all partitions of another count of the same reader, else None."""
    found = partition_count_of(old)
    if found is None:
        return None
    for subject in subjects:
        now = partition_count_of(subject)
        if now is not None and now[0] == found[0] and now[1] != found[1]:
            return f"{found[0]}.{found[1]}.*"
    return None


def reads_as_wanted(found: list[str], wanted: list[str]) -> bool:
    """Does a consumer reading ``found`` read ``wanted``: the same subjects, or those
    and partitions of another count it was handed over (see :func:`handover_subjects`)."""
    own, extra = set(wanted), set(found) - set(wanted)
    return own <= set(found) and all(earlier_partitions(s, wanted) == s for s in extra)


async def _durables(nc: NatsClient, flow: str) -> dict[str, ConsumerInfo]:
    """The flow stream's durable consumers (ephemeral ones, ``flowctl tap`` or ``nats``,
    are not ours). One no node input reads any more (a removed node, a repartitioned
    input) is deleted: with interest retention the stream would keep every event for it."""
    return {str(c.name): c for c in await _consumers(nc, flow) if c.config.durable_name}


async def _consumers(nc: NatsClient, flow: str) -> list[ConsumerInfo]:
    """Every consumer of the flow's stream; raises NotFoundError when it has none."""
    js = nc.jetstream()
    found: list[ConsumerInfo] = []
    while True:  # the server answers at most 256 consumers per request
        page = await js.consumers_info(stream_name(flow), offset=len(found))
        found += page
        if len(page) < 256:
            return found


async def ensure_dlq_stream(nc: NatsClient, replicas: int = 1) -> bool:
    """Create the dead-letter stream if missing. False when the server refuses it (a
    stream of flowctl 0.1 still covers ``flowctl.<flow>.>``): dead letters are then
    published but not kept."""
    return await _ensure_kept(nc, StreamConfig(
        name=DLQ_STREAM, subjects=DLQ_SUBJECTS, retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD, max_age=DLQ_MAX_AGE_S, max_bytes=DLQ_MAX_BYTES,
        num_replicas=replicas, description="flowctl dead letters of every flow",
    ))


async def ensure_logs_stream(nc: NatsClient, replicas: int = 1) -> bool:
    """Create the stream that keeps component logs if missing (False when refused)."""
    return await _ensure_kept(nc, StreamConfig(
        name=LOGS_STREAM, subjects=LOGS_SUBJECTS, retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD, max_age=LOGS_MAX_AGE_S, max_bytes=LOGS_MAX_BYTES,
        num_replicas=replicas, description="flowctl component logs of every flow",
    ))


async def _ensure_kept(nc: NatsClient, config: StreamConfig) -> bool:
    js = nc.jetstream()
    try:
        await js.stream_info(str(config.name))
        return True
    except NotFoundError:
        pass
    try:
        await js.add_stream(config)
    except BadRequestError:
        try:
            await js.stream_info(str(config.name))  # created concurrently
        except NotFoundError:
            return False
    return True


async def input_backlog(nc: NatsClient, flow: str) -> dict[str, int]:
    """Per durable consumer of the flow's stream (``<node>-<port>``): the messages not yet
    acked (waiting, delivered but unacked, or being redelivered). Empty when the flow has
    no stream (at-most-once)."""
    try:
        consumers = await _consumers(nc, flow)
    except NotFoundError:
        return {}
    return {str(c.name): int(c.num_pending or 0) + int(c.num_ack_pending or 0)
            for c in consumers}


async def dead_letter_counts(nc: NatsClient, flow: str) -> dict[str, int]:
    """Dead letters of the flow kept in :data:`DLQ_STREAM`, per node."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(DLQ_STREAM, subjects_filter=f"flowctl.{flow}.*.dlq")
    except NotFoundError:
        return {}
    subjects = info.state.subjects or {}
    return {subject.split(".")[2]: int(n) for subject, n in subjects.items()}
