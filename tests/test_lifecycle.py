"""FlowEngine against a real nats-server: every transition, the exact KV it leaves behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.js.errors import NoKeysError
from pydantic import BaseModel, ConfigDict

from componentmanager import registry
from componentmanager.registry import ComponentType, Port, get_type
from flowengine import FlowEngine, ObservedState, ValidationFailed
from flowstore.errors import FlowNotFound, InvalidTransition, RevisionConflict
from flowstore.loader import parse_flow
from flowstore.models import AgentRecord, FlowSpec, FlowState, ReplicaStatus, utcnow
from flowstore.nats import NatsOptions, connect


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


@pytest.fixture(autouse=True)
def _test_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test types for one test only (the built-ins stay as they are)."""
    get_type("filter")  # load the built-ins first, so they never overwrite ours
    for ctype in TEST_TYPES:
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
    """Every live key of a bucket -> (its JSON value, its KV revision), read with nats-py."""
    kv = await nc.jetstream().key_value(bucket)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    out = {}
    for key in sorted(keys):
        entry = await kv.get(key)
        out[key] = (json.loads(entry.value), entry.revision)
    return out


async def configs(nc: Any) -> dict[str, dict[str, Any]]:
    return {k: v for k, (v, _) in (await kv_dump(nc, "flowctl_config")).items()}


async def add_agent(nc: Any, name: str, *, stale: bool = False, **labels: str) -> None:
    kv = await nc.jetstream().key_value("flowctl_agents")
    record = AgentRecord(name=name, host="h", pid=1, labels=labels, version="0",
                         started_at=utcnow(), instance=f"{name}-1",
                         heartbeat_at="2000-01-01T00:00:00.000Z" if stale else utcnow())
    await kv.put(name, record.to_json())


@pytest.fixture
async def engine(nc: Any) -> FlowEngine:
    engine = await FlowEngine.open(nc)
    await add_agent(nc, "agent-1")
    return engine


async def test_every_transition_and_the_exact_configs(engine: FlowEngine, nc: Any) -> None:
    flow, created, changes = await engine.apply("demo", spec())
    assert (created, flow.state, flow.revision) == (True, FlowState.NOT_DEPLOYED, 1)
    assert changes.validation is not None and changes.validation.status == "valid"
    assert await configs(nc) == {}

    deployed = await engine.deploy("demo")
    assert (deployed.previous, deployed.flow.state) == ("not_deployed", "deployed_stopped")
    assert deployed.flow.deployed_revision == 1
    assert deployed.changes.added == ["demo.gen", "demo.keep", "demo.out"]
    stored = await configs(nc)
    assert list(stored) == ["demo.gen", "demo.keep", "demo.out"]
    assert stored["demo.keep"] == {
        "flow": "demo", "node": "keep", "type": "lt-pass", "role": "processor",
        "kind": "inprocess",
        "config": {"where": "x > 1", "limit": 0},
        "inputs": {"in": ["flowctl.demo.gen.out"]},
        "outputs": {"out": "flowctl.demo.keep.out"},
        "queue": "flowctl.demo.keep", "replicas": 2, "assignments": ["agent-1", "agent-1"],
        "enabled": False, "delivery": "at-most-once", "flow_revision": 1,
        "downstream": {"out": 1},
    }
    assert stored["demo.gen"]["downstream"] == {"keep": 2, "out": 1}
    assert json.loads(json.dumps(deployed.to_dict()))["changes"]["added"] == [
        "demo.gen", "demo.keep", "demo.out"]
    assert stored["demo.out"]["outputs"] == {}

    started = await engine.start("demo")
    assert started.flow.state == FlowState.RUNNING
    assert started.changes.updated == ["demo.gen", "demo.keep", "demo.out"]
    after_start = await configs(nc)
    assert all(c["enabled"] for c in after_start.values())
    assert {k: {**v, "enabled": False} for k, v in after_start.items()} == stored

    stopped = await engine.stop("demo")
    assert stopped.flow.state == FlowState.DEPLOYED_STOPPED
    assert await configs(nc) == stored

    undeployed = await engine.undeploy("demo")
    assert undeployed.flow.state == FlowState.NOT_DEPLOYED
    assert undeployed.flow.deployed_revision is None
    assert undeployed.changes.removed == ["demo.gen", "demo.keep", "demo.out"]
    assert await configs(nc) == {}
    assert await kv_dump(nc, "flowctl_status") == {}

    deleted = await engine.delete("demo")
    assert deleted.action == "delete"
    with pytest.raises(FlowNotFound):
        await engine.flows.get("demo")
    history = [r.state.value for r in await engine.flows.history("demo")]
    assert history == ["not_deployed", "deployed_stopped", "running", "deployed_stopped",
                       "not_deployed"]


async def _refused(engine: FlowEngine, nc: Any, call: Any, state: str) -> None:
    before_flow = (await engine.flows.get("demo")).kv_revision
    before = await kv_dump(nc, "flowctl_config")
    with pytest.raises(InvalidTransition) as err:
        await call
    assert err.value.state == state
    assert (await engine.flows.get("demo")).kv_revision == before_flow
    assert await kv_dump(nc, "flowctl_config") == before


async def test_invalid_transitions_write_nothing(engine: FlowEngine, nc: Any) -> None:
    await engine.apply("demo", spec())
    for call in (engine.start("demo"), engine.stop("demo"), engine.undeploy("demo")):
        await _refused(engine, nc, call, "not_deployed")
    await engine.deploy("demo")
    for call in (engine.deploy("demo"), engine.stop("demo"), engine.delete("demo")):
        await _refused(engine, nc, call, "deployed_stopped")
    await engine.start("demo")
    for call in (engine.deploy("demo"), engine.start("demo"), engine.undeploy("demo"),
                 engine.delete("demo")):
        await _refused(engine, nc, call, "running")


async def test_force_undeploy_and_force_delete_of_a_running_flow(
    engine: FlowEngine, nc: Any
) -> None:
    await engine.apply("demo", spec())
    await engine.deploy("demo")
    await engine.start("demo")
    result = await engine.undeploy("demo", force=True)
    assert (result.previous, result.flow.state) == ("running", "not_deployed")
    assert await configs(nc) == {}
    await engine.deploy("demo")
    await engine.start("demo")
    deleted = await engine.delete("demo", force=True)
    assert deleted.changes.removed == ["demo.gen", "demo.keep", "demo.out"]
    assert await configs(nc) == {}
    with pytest.raises(FlowNotFound):
        await engine.flows.get("demo")


async def test_two_flows_with_the_same_node_ids_do_not_collide(
    engine: FlowEngine, nc: Any
) -> None:
    for name in ("a", "a-b"):
        await engine.apply(name, spec())
        await engine.deploy(name)
    await engine.start("a-b")
    before = await kv_dump(nc, "flowctl_config")
    assert sorted(before) == ["a-b.gen", "a-b.keep", "a-b.out", "a.gen", "a.keep", "a.out"]
    assert before["a.out"][0]["inputs"] == {"in": ["flowctl.a.keep.out"]}
    assert before["a-b.out"][0]["inputs"] == {"in": ["flowctl.a-b.keep.out"]}
    assert [c.key for c in await engine.list_configs("a")] == ["a.gen", "a.keep", "a.out"]

    kv = await nc.jetstream().key_value("flowctl_config")
    await kv.put("a.stray", b'{"flow":"a","node":"stray","type":"lt-gen","queue":"q"}')
    result = await engine.undeploy("a")
    assert result.changes.removed == ["a.gen", "a.keep", "a.out", "a.stray"]
    after = await kv_dump(nc, "flowctl_config")
    assert after == {k: v for k, v in before.items() if k.startswith("a-b.")}
    assert (await engine.flows.get("a-b")).state == FlowState.RUNNING


async def test_reapply_of_a_deployed_flow_touches_only_changed_nodes(
    engine: FlowEngine, nc: Any
) -> None:
    await engine.apply("demo", spec())
    await engine.deploy("demo")
    await engine.start("demo")
    before = await kv_dump(nc, "flowctl_config")

    flow, created, changes = await engine.apply("demo", spec())
    assert flow.revision == 3  # nothing new was written
    assert (created, changes.spec_changed, changes.written) == (False, False, [])
    assert changes.unchanged == ["demo.gen", "demo.keep", "demo.out"]
    assert await kv_dump(nc, "flowctl_config") == before

    flow, created, changes = await engine.apply("demo", spec(FLOW.replace("x > 1", "x > 2")))
    assert (flow.state, flow.revision, flow.deployed_revision) == (FlowState.RUNNING, 4, 4)
    assert (changes.added, changes.updated, changes.removed) == ([], ["demo.keep"], [])
    assert changes.unchanged == ["demo.gen", "demo.out"]
    after = await kv_dump(nc, "flowctl_config")
    for key in ("demo.gen", "demo.out"):
        assert after[key] == before[key]  # same value, same KV revision
    assert after["demo.keep"][1] > before["demo.keep"][1]
    assert after["demo.keep"][0] == {**before["demo.keep"][0], "flow_revision": 4,
                                     "config": {"where": "x > 2", "limit": 0}}

    # Replacing the sink changes the upstream nodes too: their downstream lists it.
    renamed = FLOW.replace("{id: out, type: lt-sink", "{id: log, type: lt-sink")
    flow, created, changes = await engine.apply("demo", spec(renamed))
    assert (changes.added, changes.updated, changes.removed) == (
        ["demo.log"], ["demo.gen", "demo.keep"], ["demo.out"])
    after = await kv_dump(nc, "flowctl_config")
    assert sorted(after) == ["demo.gen", "demo.keep", "demo.log"]
    assert after["demo.gen"][0]["downstream"] == {"keep": 2, "log": 1}
    assert after["demo.keep"][0]["assignments"] == ["agent-1", "agent-1"]
    assert after["demo.log"][0]["enabled"] is True  # matches the running state


async def test_concurrent_start_exactly_one_wins(engine: FlowEngine, nats_opts: NatsOptions,
                                                 nc: Any) -> None:
    await engine.apply("demo", spec())
    await engine.deploy("demo")
    other_nc = await connect(nats_opts)
    try:
        other = await FlowEngine.open(other_nc)
        results = await asyncio.gather(engine.start("demo"), other.start("demo"),
                                       return_exceptions=True)
    finally:
        await other_nc.close()
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1 and len(losses) == 1
    assert isinstance(losses[0], RevisionConflict | InvalidTransition)
    assert (await engine.flows.get("demo")).state == FlowState.RUNNING
    assert all(c["enabled"] for c in (await configs(nc)).values())


async def test_an_interrupted_deploy_converges_when_run_again(
    engine: FlowEngine, nc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.apply("demo", spec())
    kv = await nc.jetstream().key_value("flowctl_config")
    await kv.put("demo.old", b'{"flow":"demo","node":"old","type":"lt-sink","queue":"q"}')
    await kv.put("demo.keep", b'{"flow":"demo","node":"keep","type":"lt-pass","queue":"q"}')

    async def crash(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("killed before the state was written")

    real_update = engine.flows.update
    monkeypatch.setattr(engine.flows, "update", crash)
    with pytest.raises(RuntimeError):
        await engine.deploy("demo")
    assert (await engine.flows.get("demo")).state == FlowState.NOT_DEPLOYED
    assert sorted(await configs(nc)) == ["demo.gen", "demo.keep", "demo.out"]

    await kv.put("demo.old", b'{"flow":"demo","node":"old","type":"lt-sink","queue":"q"}')
    monkeypatch.setattr(engine.flows, "update", real_update)
    result = await engine.deploy("demo")
    assert result.flow.state == FlowState.DEPLOYED_STOPPED
    assert result.changes.removed == ["demo.old"]
    assert result.changes.unchanged == ["demo.gen", "demo.keep", "demo.out"]
    stored = await configs(nc)
    assert sorted(stored) == ["demo.gen", "demo.keep", "demo.out"]
    assert stored["demo.keep"]["config"] == {"where": "x > 1", "limit": 0}


async def test_deleting_a_never_deployed_flow_removes_leftover_configs(
    engine: FlowEngine, nc: Any
) -> None:
    await engine.apply("demo", spec())
    kv = await nc.jetstream().key_value("flowctl_config")
    await kv.put("demo.gen", b'{"flow":"demo","node":"gen","type":"lt-gen","queue":"q"}')
    result = await engine.delete("demo")
    assert result.changes.removed == ["demo.gen"]
    assert await configs(nc) == {}


async def test_unplaceable_replicas_get_a_pending_status(engine: FlowEngine, nc: Any) -> None:
    await add_agent(nc, "agent-2", team="web")
    await add_agent(nc, "agent-9", stale=True, team="data")  # not live: ignored
    text = FLOW.replace("{id: out, type: lt-sink,",
                        "{id: out, type: lt-sink, replicas: 2, placement: {labels: {team: data}},")
    await engine.apply("demo", spec(text))
    result = await engine.deploy("demo")
    reason = "no live agent matches placement team=data"
    assert result.changes.pending == {"demo.out.0": reason, "demo.out.1": reason}
    assert result.changes.validation is not None
    assert result.changes.validation.codes() == ["unsatisfiable_placement"]
    stored = await configs(nc)
    assert stored["demo.out"]["assignments"] == [None, None]
    # gen took agent-1 first (key order), so keep's first replica goes to the idle agent-2.
    assert stored["demo.gen"]["assignments"] == ["agent-1"]
    assert stored["demo.keep"]["assignments"] == ["agent-2", "agent-1"]
    status = await kv_dump(nc, "flowctl_status")
    assert sorted(status) == ["demo.out.0", "demo.out.1"]
    value = status["demo.out.0"][0]
    assert (value["state"], value["last_error"], value["replica"]) == ("pending", reason, 0)
    state = await engine.effective_state("demo")
    assert state.observed == ObservedState.STOPPED

    await engine.start("demo")
    assert (await engine.effective_state("demo")).observed == ObservedState.PENDING
    await engine.undeploy("demo", force=True)
    assert await kv_dump(nc, "flowctl_status") == {}


async def test_validation_errors_refuse_apply_and_write_nothing(
    engine: FlowEngine, nc: Any
) -> None:
    with pytest.raises(ValidationFailed) as err:
        await engine.apply("demo", spec(FLOW.replace("type: lt-pass", "type: lt-pas")))
    assert err.value.result.codes() == ["unknown_type"]
    assert "lt-pas" in str(err.value)
    with pytest.raises(FlowNotFound):
        await engine.flows.get("demo")
    with pytest.raises(ValidationFailed):
        await engine.apply("logs", spec())


async def report(nc: Any, node: str, replica: int, state: str, agent: str = "agent-1",
                 error: str | None = None) -> None:
    """Write a replica status the way an agent does."""
    kv = await nc.jetstream().key_value("flowctl_status")
    record = ReplicaStatus(flow="demo", node=node, replica=replica, state=state, agent=agent,
                           last_error=error)
    await kv.put(record.key, record.to_json())


async def test_effective_state_is_observed_from_replica_status(
    engine: FlowEngine, nc: Any
) -> None:
    await engine.apply("demo", spec())
    assert (await engine.effective_state("demo")).observed == ObservedState.NOT_DEPLOYED
    await engine.deploy("demo")
    assert (await engine.effective_state("demo")).observed == ObservedState.STOPPED
    await engine.start("demo")
    state = await engine.effective_state("demo")
    assert (state.desired, state.observed, state.replicas) == ("running", "starting", 4)
    assert state.counts == {"missing": 4}

    for node, replica in (("gen", 0), ("keep", 0), ("keep", 1), ("out", 0)):
        await report(nc, node, replica, "running")
    assert (await engine.effective_state("demo")).observed == ObservedState.RUNNING
    await report(nc, "gen", 0, "completed")  # a finite source that finished is fine
    assert (await engine.effective_state("demo")).observed == ObservedState.RUNNING

    await report(nc, "keep", 1, "failed", error="boom")
    state = await engine.effective_state("demo")
    assert state.observed == ObservedState.DEGRADED
    assert state.reasons == ["demo.keep.1: failed: boom"]
    assert state.counts == {"completed": 1, "failed": 1, "running": 2}

    await report(nc, "keep", 1, "running", agent="agent-dead")
    state = await engine.effective_state("demo")
    assert state.reasons == ["demo.keep.1: lost: agent 'agent-dead' is not live"]

    for node, replica in (("keep", 0), ("out", 0)):
        await report(nc, node, replica, "failed")
    await report(nc, "gen", 0, "failed")
    assert (await engine.effective_state("demo")).observed == ObservedState.FAILED

    await engine.stop("demo")
    await report(nc, "out", 0, "running")
    state = await engine.effective_state("demo")
    assert (state.desired, state.observed) == ("deployed_stopped", "stopping")
    await report(nc, "out", 0, "stopped")
    assert (await engine.effective_state("demo")).observed == ObservedState.STOPPED
    assert [s.key for s in await engine.list_status("demo")] == [
        "demo.gen.0", "demo.keep.0", "demo.keep.1", "demo.out.0"]

    result = await engine.undeploy("demo")
    assert result.changes.status_removed == ["demo.gen.0", "demo.keep.0", "demo.keep.1",
                                             "demo.out.0"]
    assert await kv_dump(nc, "flowctl_status") == {}


async def test_fewer_replicas_drop_their_status_and_placed_replicas_lose_pending(
    engine: FlowEngine, nc: Any
) -> None:
    await engine.apply("demo", spec())
    await engine.deploy("demo")
    await report(nc, "keep", 1, "stopped")
    await report(nc, "out", 0, "pending", agent="", error="no live agent")
    _, _, changes = await engine.apply("demo", spec(FLOW.replace("replicas: 2", "replicas: 1")))
    assert changes.updated == ["demo.gen", "demo.keep"]  # gen: its downstream changed
    assert changes.status_removed == ["demo.keep.1"]
    assert (await configs(nc))["demo.keep"]["assignments"] == ["agent-1"]
    result = await engine.start("demo")  # out changes (enabled) and is placed: not pending
    assert result.changes.status_removed == ["demo.out.0"]
    assert await kv_dump(nc, "flowctl_status") == {}


async def test_rollback_applies_an_old_spec_as_a_new_revision(engine: FlowEngine) -> None:
    await engine.apply("demo", spec())
    await engine.apply("demo", spec(FLOW.replace("x > 1", "x > 5")))
    flow, created, changes = await engine.rollback("demo", 1)
    assert (flow.revision, created, changes.spec_changed) == (3, False, True)
    assert flow.spec == spec()
    assert [r.revision for r in await engine.flows.history("demo")] == [1, 2, 3]


async def test_live_agents_skip_stale_heartbeats(engine: FlowEngine, nc: Any) -> None:
    await add_agent(nc, "old", stale=True)
    await add_agent(nc, "agent-0", zone="a")
    assert [a.name for a in await engine.live_agents()] == ["agent-0", "agent-1"]


BROKEN = {
    "unknown_type": ("type: lt-pass", "type: lt-pas"),
    "invalid_config": ('config: {where: "x > 1"}', "config: {limit: x}"),
    "unknown_node": ("inputs: [gen]", "inputs: [nope]"),
    "unknown_port": ("inputs: [gen]", "inputs: [gen.other]"),
    "wrong_port_direction": ("inputs: [keep]", "inputs: [keep.in]"),
    "missing_required_input": ("inputs: [keep]", "inputs: []"),
    "source_with_inputs": ("{id: gen, type: lt-gen}", "{id: gen, type: lt-gen, inputs: [keep]}"),
    "sink_with_outputs": ("inputs: [keep]}", "inputs: [keep]}\n    - {id: o2, type: lt-sink, "
                          "inputs: [out]}"),
    "role_mismatch": ("{id: out, type: lt-sink", "{id: out, type: lt-pass"),
    "cycle": ("inputs: [gen]", "inputs: [gen, keep]"),
    "duplicate_id": ("{id: out,", "{id: keep,"),
    "reserved_name": ("inputs: [gen]", "inputs: [gen.dlq]"),
}


@pytest.mark.parametrize("code", sorted(BROKEN))
async def test_each_validation_error_refuses_apply(engine: FlowEngine, nc: Any,
                                                   code: str) -> None:
    old, new = BROKEN[code]
    assert old in FLOW
    with pytest.raises(ValidationFailed) as err:
        await engine.apply("demo", spec(FLOW.replace(old, new, 1)))
    assert code in err.value.result.codes()
    assert await kv_dump(nc, "flowctl_flows") == {}


WARNED = {
    "unused_output": ("inputs: [keep]", "inputs: [gen]"),
    "disconnected_node": ("{id: gen, type: lt-gen}",
                          "{id: gen, type: lt-gen}\n    - {id: x, type: lt-gen}"),
    "duplicate_connection": ("inputs: [gen]", "inputs: [gen, gen]"),
    "unsatisfiable_placement": ("{id: out, type: lt-sink,",
                                "{id: out, type: lt-sink, placement: {agent: nobody},"),
}


@pytest.mark.parametrize("code", sorted(WARNED))
async def test_each_validation_warning_is_reported_but_does_not_block(
    engine: FlowEngine, code: str
) -> None:
    old, new = WARNED[code]
    assert old in FLOW
    text = FLOW.replace(old, new, 1)
    _, created, changes = await engine.apply("demo", spec(text))
    assert created and changes.validation is not None
    if code != "unsatisfiable_placement":  # apply checks no agents
        assert code in changes.validation.codes()
    result = (await engine.deploy("demo")).changes.validation
    assert result is not None and result.status == "warnings"
    assert code in result.codes()
