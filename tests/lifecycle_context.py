"""The harness of the FlowEngine tests: test component types, a demo flow, KV readers.

:data:`TEST_TYPES` are registered for one test at a time (:func:`register_test_types`,
used by an autouse fixture of each test module); :data:`FLOW` is a three-node flow over
them (``keep`` has two replicas). :func:`kv_dump` / :func:`configs` read buckets (with
:func:`~flowstore.store.read_all`), :func:`add_agent` and :func:`report` write what an
agent would. Shared by ``tests/test_lifecycle*.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from componentmanager import registry
from componentmanager.registry import ComponentType, Port, get_type
from flowengine import FlowEngine
from flowstore.loader import parse_flow
from flowstore.models import AgentRecord, FlowSpec, ReplicaStatus, utcnow
from flowstore.store import read_all


class PassConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    where: str
    limit: int = 0


TEST_TYPES = (
    ComponentType("lt-gen", "source", "test source", outputs=(Port("out"),)),
    ComponentType("lt-pass", "processor", "test processor", PassConfig,
                  inputs=(Port("in", required=True),), outputs=(Port("out"),)),
    ComponentType("lt-sink", "sink", "test sink", inputs=(Port("in", required=True),)),
)


def register_test_types(
    monkeypatch: pytest.MonkeyPatch, types: tuple[ComponentType, ...] | None = None
) -> None:
    """Register test types (default: TEST_TYPES) for one test only (the built-ins stay)."""
    get_type("filter")  # load the built-ins first, so they never overwrite ours
    for ctype in types if types is not None else TEST_TYPES:
        monkeypatch.setitem(registry._TYPES, (ctype.role, ctype.name), ctype)


FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: demo}
spec:
  sources:
    - {id: gen, type: lt-gen}
  processors:
    - {id: keep, type: lt-pass, replicas: 2, config: {where: "x > 1"}, inputs: [gen]}
  sinks:
    - {id: out, type: lt-sink, inputs: [keep]}
"""


def spec(text: str = FLOW) -> FlowSpec:
    return parse_flow(text).spec


async def kv_dump(nc: Any, bucket: str) -> dict[str, tuple[dict[str, Any], int]]:
    """Every live key of a bucket -> (its JSON value, its KV revision).

    Read with :func:`flowstore.store.read_all`: nats-py's ``kv.keys()`` now and then
    reports no keys while they are still in flight.
    """
    kv = await nc.jetstream().key_value(bucket)
    entries = await read_all(kv)
    return {k: (json.loads(entries[k].value or b"null"), entries[k].revision)
            for k in sorted(entries)}


async def configs(nc: Any) -> dict[str, dict[str, Any]]:
    return {k: v for k, (v, _) in (await kv_dump(nc, "flowctl_config")).items()}


async def add_agent(nc: Any, name: str, *, stale: bool = False, **labels: str) -> None:
    kv = await nc.jetstream().key_value("flowctl_agents")
    record = AgentRecord(name=name, host="h", pid=1, labels=labels, version="0",
                         started_at=utcnow(), instance=f"{name}-1",
                         heartbeat_at="2000-01-01T00:00:00.000Z" if stale else utcnow())
    await kv.put(name, record.to_json())


async def open_engine(nc: Any) -> FlowEngine:
    """A FlowEngine on ``nc`` with one live agent, ``agent-1``."""
    engine = await FlowEngine.open(nc)
    await add_agent(nc, "agent-1")
    return engine


async def report(nc: Any, node: str, replica: int, state: str, agent: str = "agent-1",
                 error: str | None = None) -> None:
    """Write a replica status the way an agent does."""
    kv = await nc.jetstream().key_value("flowctl_status")
    record = ReplicaStatus(flow="demo", node=node, replica=replica, state=state, agent=agent,
                           last_error=error)
    await kv.put(record.key, record.to_json())
