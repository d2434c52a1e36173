"""The names flowctl gives things on NATS, defined once: KV keys, subjects, queue groups,
the flow stream and its durable consumers, the headers of data messages. Pure.

Re-exported by :mod:`flowstore.models` (where they lived first).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowstore.models import ComponentConfig

#: The one metadata header of a data message: ``<first event id> <count> <unix time>``
#: (see componentmanager.dataplane.wire).
HDR_META = "Flowctl"
#: A dead letter's reason.
HDR_ERROR = "Flowctl-Error"
#: A dead letter re-injected by ``flowctl dlq replay`` into an input subject that other
#: nodes read too carries the node it is meant for; the others let it pass.
HDR_REPLAY_TO = "Flowctl-Replay-To"
#: The id of the dead-lettered event a replayed message carries again.
HDR_REPLAY_OF = "Flowctl-Replay-Of"
#: An event a producer could not compute its keyed reader's key for (why), sent alone to
#: partition 0, whose replica fails it (see componentmanager.dataplane.partition).
HDR_NO_KEY = "Flowctl-No-Key"
#: On a partition's message: the number of the last event its producer sent to the same
#: partition before it (the numbers between went to other partitions).
HDR_AFTER = "Flowctl-After"


def config_key(flow: str, node: str) -> str:
    return f"{flow}.{node}"


def status_key(flow: str, node: str, replica: int) -> str:
    return f"{flow}.{node}.{replica}"


def data_subject(flow: str, node: str, port: str) -> str:
    return f"flowctl.{flow}.{node}.{port}"


def partition_subjects(subject: str, reader: str, partitions: int) -> str:
    """The subjects a producer sends a keyed reader's events on, split by partition:
    ``<output subject>.<reader>.<partitions>.<i>``, given with ``*`` for ``i`` (read
    as it is, it matches every partition). A reader repartitioned to another count
    reads other subjects; what waits on the old ones is handed over (see
    :func:`flowstore.streams.handover_subjects`)."""
    return f"{subject}.{reader}.{partitions}.*"


def is_partitioned(subject: str) -> bool:
    """Is ``subject`` a keyed reader's input split by partition (see above)?"""
    return subject.endswith(".*")


def partition_count_of(subject: str) -> tuple[str, str] | None:
    """(``<output subject>.<reader>``, the partition count) of a partition subject
    (seven tokens: names have no dots), None for any other."""
    tokens = subject.split(".")
    return (".".join(tokens[:5]), tokens[5]) if len(tokens) == 7 else None


def own_subject(subject: str, replica: int) -> str:
    """What replica ``replica`` reads of an input subject: its own partition of a
    partitioned one, else the subject itself."""
    return f"{subject[:-1]}{replica}" if is_partitioned(subject) else subject


def dlq_subject(flow: str, node: str) -> str:
    return f"flowctl.{flow}.{node}.dlq"


def tap_subject(flow: str, node: str, port: str) -> str:
    """Where a node copies the events of a port it passes on in memory (fused) while
    ``flowctl tap`` watches it (outside ``flowctl.``: no flow's stream keeps them)."""
    return f"_flowctl.tap.{flow}.{node}.{port}"


def tapping_subject(flow: str, node: str, port: str) -> str:
    """What ``flowctl tap`` publishes every few seconds while it watches such a port
    (``*`` for any when the agent listens)."""
    return f"_flowctl.tapping.{flow}.{node}.{port}"


def tapping_of(subject: str) -> str | None:
    """The :func:`tapping_subject` that keeps a :func:`tap_subject` copied; None for any
    other subject."""
    parts = subject.split(".")
    if len(parts) == 5 and subject.startswith("_flowctl.tap."):
        return tapping_subject(parts[2], parts[3], parts[4])
    return None


def logs_subject(flow: str, node: str, replica: int | str) -> str:
    """Where a replica's log lines go (``*`` for any node or replica when reading)."""
    return f"flowctl.logs.{flow}.{node}.{replica}"


def queue_group(flow: str, node: str) -> str:
    return f"flowctl.{flow}.{node}"


def stream_name(flow: str) -> str:
    """The JetStream stream of an at-least-once flow, over ``flowctl.<flow>.>``."""
    return f"FLOWCTL_{flow}"


def consumer_name(node: str, port: str) -> str:
    """The durable consumer of one node input, shared by the node's replicas."""
    return f"{node}-{port}".replace(".", "_")


#: A partitioned node's consumers: ``<node>-<port>-p<i>of<n>``, one per replica; the count
#: is in the name, so a node repartitioned to another count gets new consumers.
PARTITION_CONSUMER = re.compile(r"-p\d+of\d+$")


def input_consumer(cfg: ComponentConfig, port: str, replica: int) -> str:
    """The durable consumer replica ``replica`` of a node reads input ``port`` through:
    the node's shared one, or its replica's own (``partition_by``, and every node of an
    exactly-once flow: a replica's commit holds its place in its own consumer)."""
    name = consumer_name(cfg.node, port)
    return f"{name}-p{replica}of{cfg.replicas}" if own_consumers(cfg) else name


def own_consumers(cfg: ComponentConfig) -> bool:
    """Does each replica of the node read its inputs through a consumer of its own?"""
    return bool(cfg.partition_by) or cfg.delivery == "exactly-once"


def consumer_names(cfg: ComponentConfig) -> list[tuple[str, str, list[str]]]:
    """Every durable consumer a node's inputs need: (name, port, subjects)."""
    replicas = range(cfg.replicas) if own_consumers(cfg) else range(1)
    return [(input_consumer(cfg, port, r), port, [own_subject(s, r) for s in subjects])
            for port, subjects in cfg.inputs.items() if subjects for r in replicas]
