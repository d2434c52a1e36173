"""flowstore: the persistence layer. Records kept in NATS KV, the flow file loader, the
FlowStore with compare-and-set, and the NATS connection options shared by every package."""

from flowstore.errors import (
    FlowctlError,
    FlowExists,
    FlowNotFound,
    InvalidTransition,
    RevisionConflict,
    RevisionNotFound,
)
from flowstore.loader import FlowFileError, LoadedFlow, Problem, SourceMap, load_flow, parse_flow
from flowstore.models import (
    AgentRecord,
    ComponentConfig,
    Connection,
    Counters,
    FlowRecord,
    FlowSpec,
    FlowState,
    Node,
    Placement,
    ReplicaState,
    ReplicaStatus,
)
from flowstore.nats import NatsOptions, NatsUnavailable, connect, open_bucket
from flowstore.store import FlowStore, read_all

__all__ = [
    "AgentRecord",
    "ComponentConfig",
    "Connection",
    "Counters",
    "FlowExists",
    "FlowFileError",
    "FlowNotFound",
    "FlowRecord",
    "FlowSpec",
    "FlowState",
    "FlowStore",
    "FlowctlError",
    "InvalidTransition",
    "LoadedFlow",
    "NatsOptions",
    "NatsUnavailable",
    "Node",
    "Placement",
    "Problem",
    "ReplicaState",
    "ReplicaStatus",
    "RevisionConflict",
    "RevisionNotFound",
    "SourceMap",
    "connect",
    "load_flow",
    "open_bucket",
    "parse_flow",
    "read_all",
]
