"""The records flowctl keeps in NATS KV, and the normalized flow they are built from.

Every value in every bucket is one of these models serialized as one line of compact
JSON (see :func:`to_json`), so ``nats kv watch`` shows readable records. The flow *file*
format (YAML) lives in :mod:`flowstore.flowfile`; it is normalized into :class:`FlowSpec`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_serializer

# The fields of programs and containers live in flowstore.programs (re-exported here).
from flowstore.programs import ExternalFields, Kind, PortMapping, RestartPolicy  # noqa: F401

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=63)]

#: How a flow's events travel. ``at-least-once`` and ``exactly-once`` go through the flow's
#: JetStream stream, acked (``delivery != "at-most-once"`` means that); ``exactly-once``
#: also refuses, at validation, nodes that cannot take part in it (``flowengine.validate``).
Delivery = Literal["at-most-once", "at-least-once", "exactly-once"]

#: The default of ``spec.buffer``: what an at-least-once flow's stream may hold.
DEFAULT_BUFFER = 256 * 2**20
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


def parse_size(value: Any) -> int:
    """Bytes from ``268435456``, ``"256MiB"``, ``"64MB"`` or ``"1 GiB"``."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like 256MiB")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits):]
        if not digits or unit not in _UNITS:
            raise ValueError(f"{value!r} is not a size: write bytes or e.g. 64MiB, 1GB")
        n = int(float(digits) * _UNITS[unit])
    if n < 2**20:
        raise ValueError(f"{value!r} is too small: at least 1MiB")
    return n


ByteSize = Annotated[int, BeforeValidator(parse_size)]
Role = Literal["source", "processor", "sink"]


def start_rank(role: Role | None) -> int:
    """Where a node comes when replicas start: consumers before producers, so sinks (and
    nodes of no known role) 0, processors 1, sources 2. An at-most-once source waits
    until everything it feeds runs: started first, it would only wait longer."""
    return {"sink": 0, "processor": 1, "source": 2}.get(role or "", 0)

DEFAULT_OUTPUT_PORT = "out"
DEFAULT_INPUT_PORT = "in"


class FlowState(StrEnum):
    """The desired state of a flow, kept in its record. Never proof that anything runs."""

    NOT_DEPLOYED = "not_deployed"
    DEPLOYED_STOPPED = "deployed_stopped"
    RUNNING = "running"


class ReplicaState(StrEnum):
    """What an agent (or the placer, for ``pending``) observed about one replica."""

    PENDING = "pending"  # no eligible agent; the reason is in last_error
    STARTING = "starting"
    RUNNING = "running"
    #: running, but not keeping up: losing events or holding its agent's event loop; the
    #: reason is in ``reason``
    DEGRADED = "degraded"
    COMPLETED = "completed"  # a finite source emitted everything and ended cleanly
    STOPPED = "stopped"
    FAILED = "failed"


#: States of a replica that is up (work may be in progress).
ACTIVE_STATES = frozenset({ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.DEGRADED})


def utcnow() -> str:
    """An ISO-8601 UTC timestamp, the one format used in every record."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Record(BaseModel):
    """Base of every KV value: unknown fields are kept, so newer writers don't lose data."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str):  # type: ignore[no-untyped-def]
        return cls.model_validate_json(data)

    @classmethod
    def parse(cls, data: bytes | str | None):  # type: ignore[no-untyped-def]
        """(record, None), or (None, why not) for a value that is not such a record (junk
        someone put with `nats kv put`): readers skip it and say so, never fail on it."""
        try:
            return cls.model_validate_json(data or b""), None
        except ValueError as exc:
            return None, junk_reason(exc, data)


def junk_reason(exc: Exception, data: bytes | str | None) -> str:
    """A short reason a stored value is not a record (no library noise, no long dump)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0] if errors() else {}
        if first.get("type") == "json_invalid":
            return "not JSON"
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return f"{where}: {msg}" if where else msg
    return "not JSON" if not data else str(exc)[:80]


class Placement(BaseModel):
    """Where a node's replicas may run: one named agent, or agents carrying labels."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def matches(self, agent_name: str, agent_labels: dict[str, str]) -> bool:
        if self.agent is not None and self.agent != agent_name:
            return False
        return all(agent_labels.get(k) == v for k, v in self.labels.items())

    def describe(self) -> str:
        parts = []
        if self.agent:
            parts.append(f"agent={self.agent}")
        parts += [f"{k}={v}" for k, v in sorted(self.labels.items())]
        return ",".join(parts) or "any agent"


class Node(ExternalFields):
    """One component of a normalized flow."""

    model_config = ConfigDict(extra="forbid")

    id: Name
    type: str = Field(min_length=1)
    name: str | None = None
    role: Role | None = None  # the file section it came from; None for canvas exports
    config: dict[str, Any] = Field(default_factory=dict)
    replicas: int = Field(default=1, ge=1, le=1000)
    partition_by: str | None = None
    placement: Placement | None = None
    fuse: bool = True


class Connection(BaseModel):
    """An edge ``from: node.port -> to: node.port`` (output port to input port)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", serialize_by_alias=True)

    from_: str = Field(alias="from")
    to: str

    @staticmethod
    def split(endpoint: str) -> tuple[str, str]:
        node, _, port = endpoint.partition(".")
        return node, port

    @property
    def source(self) -> tuple[str, str]:
        return self.split(self.from_)

    @property
    def target(self) -> tuple[str, str]:
        return self.split(self.to)


class FlowSpec(BaseModel):
    """A flow normalized to nodes and explicit connections."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    delivery: Delivery = "at-least-once"
    buffer: ByteSize = DEFAULT_BUFFER
    nodes: list[Node] = Field(default_factory=list)
    connections: list[Connection] = Field(default_factory=list)

    def node(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    @field_serializer("nodes")
    def _compact_nodes(self, nodes: list[Node]) -> list[dict[str, Any]]:
        """Nodes are stored without their default fields: short, readable KV values."""
        return [n.model_dump(mode="json", exclude_defaults=True) for n in nodes]


class FlowRecord(Record):
    """Value in ``flowctl_flows``, key = flow name.

    ``revision`` counts the writes of this record (1 on create). ``kv_revision`` is the
    KV sequence of the value as read, used for compare-and-set; it is not stored.
    """

    name: Name
    spec: FlowSpec
    state: FlowState = FlowState.NOT_DEPLOYED
    revision: int = 1
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)
    deployed_revision: int | None = None  # the revision whose spec the configs reflect

    kv_revision: int = Field(default=0, exclude=True)


class KeyedReader(BaseModel):
    """A keyed node reading one output port, partitioned at the producer: the producer
    evaluates ``key`` (the reader's ``partition_by``) on each event and sends it to
    partition ``partition_of(key, partitions)`` of ``subjects`` (see
    :func:`flowstore.names.partition_subjects`)."""

    node: str
    key: str
    partitions: int
    subjects: str


class ComponentConfig(Record):
    """Value in ``flowctl_config``, key ``<flow>.<node>``: all an agent needs, self-contained.

    ``assignments[i]`` is the agent that runs replica ``i`` (None: pending placement).
    ``downstream`` maps every node reachable from this one to its replica count, so a
    source can wait until all of them report running before it emits.
    """

    flow: str
    node: str
    type: str
    role: Role | None = None
    kind: Kind = "inprocess"
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, list[str]] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    #: output ports whose every reader takes frames (several events per message)
    frame_ports: list[str] = Field(default_factory=list)
    #: per output port, the keyed readers this node partitions its events for (it
    #: sends each event to its partition's subject, frames split by partition)
    keyed_outputs: dict[str, list[KeyedReader]] = Field(default_factory=dict,
                                                        exclude_if=lambda v: not v)
    #: output ports whose own subject no reader reads (every reader is keyed: the
    #: events go only to the readers' partitions)
    partitioned_only: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)
    queue: str
    replicas: int = 1
    #: an expression: events with the same value go to the same replica, in order (each
    #: replica reads its inputs through its own consumer and takes its own keys)
    partition_by: str | None = None
    #: the component keeps state checkpointed in ``flowctl_checkpoints`` (window, join)
    stateful: bool = False
    placement: Placement | None = None
    assignments: list[str | None] = Field(default_factory=list)
    enabled: bool = False
    delivery: Delivery = "at-most-once"
    flow_revision: int = 0
    downstream: dict[str, int] = Field(default_factory=dict)
    #: ``depends_on``: node -> its replica count; this node starts once every replica of
    #: each is running (healthy), and stops before them (None: depends on nothing)
    depends_on: dict[str, int] | None = None
    #: the longest chain of ``depends_on`` below this node (None: 0): stops go deepest first
    dependency_depth: int | None = None
    external: ExternalFields | None = None
    #: a token ``apply --reset NODE`` renews (later writes carry it over): a new one
    #: starts the node's position (a stateful node's state) over
    reset: str | None = None
    #: the fused chain this node runs in (node ids in order; see flowengine.plan), None
    #: when it runs alone; the first node's replica takes the inputs and the others are
    #: fed from it in memory
    fused: list[str] | None = None
    #: the output port that feeds the next node of the chain in memory (not published)
    fused_port: str | None = None

    @property
    def key(self) -> str:
        return f"{self.flow}.{self.node}"

    @property
    def fused_next(self) -> str | None:
        """The node this one feeds in memory, or None."""
        chain = self.fused or []
        if self.fused_port is None or self.node not in chain:
            return None
        at = chain.index(self.node)
        return chain[at + 1] if at + 1 < len(chain) else None

    @property
    def fused_at(self) -> int:
        """This node's place in its fused chain (0: the head, or not fused)."""
        chain = self.fused or []
        return chain.index(self.node) if self.node in chain else 0

    @property
    def fused_head(self) -> str | None:
        """The chain's first node when this one is fed in memory by it, else None."""
        return self.fused[0] if self.fused and self.fused[0] != self.node else None

    @cached_property
    def _fingerprint(self) -> str:
        return self.model_dump_json(exclude={"enabled", "assignments", "flow_revision"})

    def desired_fingerprint(self) -> str:
        """What, if changed, requires a running replica to restart (not enabled/assignments).
        Computed once per parsed record (agents compare it on every reconcile)."""
        return self._fingerprint


class Counters(BaseModel):
    """Per-replica event counters; ``out_ports`` splits ``out`` by output port.

    Every event a replica takes in ends in exactly one of: ``out`` (emitted; a processor
    may emit several per input), ``filtered`` (discarded on purpose: a filter said no, a
    function returned None, no route matched), ``errors`` (failed: dead-lettered with the
    reason) or ``dropped`` (lost: overload, a full buffer, a slow consumer, a publish that
    NATS refused, a replica stopped with events still queued). ``redelivered`` counts
    input messages delivered again after their ack was lost, acked again without being
    processed twice (not events taken in). A sink's ``out`` counts the events it wrote
    (printed, stored, sent). ``in_ports`` splits ``in`` by input port; ``replayed`` counts
    the events of ``in`` that were dead letters re-injected by ``flowctl dlq replay``.

    The counts belong to ``<flow>.<node>.<replica>``, not to one process: a replica
    restarted or moved to another agent continues from the last reported record (until
    the flow is undeployed, which deletes the records).
    """

    in_: int = Field(default=0, alias="in")
    out: int = 0
    filtered: int = 0
    errors: int = 0
    dropped: int = 0
    redelivered: int = 0
    replayed: int = 0
    in_ports: dict[str, int] = Field(default_factory=dict)
    out_ports: dict[str, int] = Field(default_factory=dict)

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class ReplicaStatus(Record):
    """Value in ``flowctl_status``, key ``<flow>.<node>.<replica>``."""

    flow: str
    node: str
    replica: int
    state: ReplicaState
    agent: str | None = None
    started_at: str | None = None
    updated_at: str = Field(default_factory=utcnow)
    restarts: int = 0
    last_error: str | None = None
    #: why the state is what it is, when that is not obvious (``degraded``: "dropping:
    #: overload, 12,345 lost in the last 10 s")
    reason: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    counters: Counters = Field(default_factory=Counters)
    #: events per second over the last few seconds (``in`` taken, ``out`` emitted or
    #: written); 0 once nothing moves
    rate: dict[str, float] = Field(default_factory=dict)
    #: per input port, messages (an event or a frame of events) waiting for this node:
    #: in the flow's stream for its consumer (at-least-once), or in this replica's
    #: queue (at-most-once)
    lag: dict[str, int] = Field(default_factory=dict)
    #: input events the component holds and has not emitted yet: events in open windows
    #: or waiting in a join (kept in its checkpoint), a batch being filled
    held: int = 0
    flow_revision: int | None = None

    @property
    def key(self) -> str:
        return status_key(self.flow, self.node, self.replica)


class AgentRecord(Record):
    """Value in ``flowctl_agents``, key = agent name, rewritten on every heartbeat."""

    name: Name
    host: str
    pid: int
    labels: dict[str, str] = Field(default_factory=dict)
    version: str
    started_at: str
    heartbeat_at: str = Field(default_factory=utcnow)
    heartbeat_s: float = 2.0
    instance: str  # random per process: tells a restarted agent from its previous life
    components: list[str] = Field(default_factory=list)
    cpu_percent: float = 0.0
    memory_mb: float = 0.0
    #: the longest stall of the agent's data-plane event loop in the last heartbeat
    #: interval (a component holding it), milliseconds
    loop_lag_ms: float = 0.0

    def age_s(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return (now - parse_time(self.heartbeat_at)).total_seconds()

    def is_live(self, now: datetime | None = None, missed: float = 3.0) -> bool:
        return self.age_s(now) < missed * self.heartbeat_s


# The names of things on NATS live in flowstore.names; importable from here too.
from flowstore.names import (  # noqa: E402, F401  (re-exported)
    HDR_AFTER,
    HDR_ERROR,
    HDR_META,
    HDR_NO_KEY,
    HDR_REPLAY_OF,
    HDR_REPLAY_TO,
    PARTITION_CONSUMER,
    config_key,
    consumer_name,
    consumer_names,
    data_subject,
    dlq_subject,
    input_consumer,
    is_partitioned,
    logs_subject,
    own_subject,
    partition_count_of,
    partition_subjects,
    queue_group,
    status_key,
    stream_name,
)

