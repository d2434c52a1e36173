"""flowstore: the persistence layer. Records kept in NATS KV, the flow file loader, the
FlowStore with compare-and-set, and the NATS connection options shared by every package.

The names below are imported on first use (:func:`flowstore.lazy.lazy_package`), so
importing one error type does not load the flow file loader or nats-py.
"""

from flowstore.lazy import lazy_package

lazy_package(__name__, {
    "errors": ["FlowctlError", "FlowExists", "FlowNotFound", "InvalidTransition",
               "RevisionConflict", "RevisionNotFound"],
    "located": ["FlowFileError", "Problem", "SourceMap"],
    "loader": ["LoadedFlow", "load_flow", "parse_flow"],
    "models": ["AgentRecord", "ComponentConfig", "Connection", "Counters", "FlowRecord",
               "FlowSpec", "FlowState", "Node", "Placement", "ReplicaState",
               "ReplicaStatus"],
    "nats": ["NatsOptions", "NatsUnavailable", "connect", "open_bucket"],
    "store": ["FlowStore", "read_all"],
})
