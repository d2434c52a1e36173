"""FlowEngine against a real nats-server: every transition, the exact KV it leaves behind.

Also: refused transitions write nothing, concurrent actions, rollback, and validation
as the gate of apply. How configs and status keys are kept in sync, and the observed
state, are ``test_lifecycle_sync.py``; two actions racing ``test_lifecycle_races.py``; the
stop order and the flow's stream ``test_lifecycle_stop.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowengine import FlowEngine, ValidationFailed
from flowstore.errors import FlowNotFound, InvalidTransition, RevisionConflict
from flowstore.models import FlowState
from flowstore.nats import NatsOptions, connect
from tests.lifecycle_context import (
    FLOW,
    configs,
    kv_dump,
    spec,
)

pytestmark = pytest.mark.usefixtures("lifecycle_types")




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
        "outputs": {"out": "flowctl.demo.keep.out"}, "frame_ports": ["out"],
        "queue": "flowctl.demo.keep", "replicas": 2, "stateful": False,
        "assignments": ["agent-1", "agent-1"],
        "enabled": False, "delivery": "at-least-once", "flow_revision": 1,
        "downstream": {},  # only sources wait for their downstream
    }
    assert stored["demo.gen"]["downstream"] == {}  # at-least-once: nothing waits
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
    # History counts spec changes: state changes never made a new revision.
    history = [(r.revision, r.state.value) for r in await engine.flows.history("demo")]
    assert history == [(1, "not_deployed")]


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


async def test_rollback_applies_an_old_spec_as_a_new_revision(engine: FlowEngine) -> None:
    await engine.apply("demo", spec())
    await engine.apply("demo", spec(FLOW.replace("x > 1", "x > 5")))
    flow, created, changes = await engine.rollback("demo", 1)
    assert (flow.revision, created, changes.spec_changed) == (3, False, True)
    assert flow.spec == spec()
    assert [r.revision for r in await engine.flows.history("demo")] == [1, 2, 3]


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
