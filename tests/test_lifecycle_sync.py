"""FlowEngine keeping the KV in sync with a flow, against a real nats-server.

Re-apply rewrites only changed nodes, interrupted actions converge, flows never touch
each other's keys, unplaceable replicas get a pending status and stale status keys go;
the effective state is observed from what replicas report.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowengine import FlowEngine, ObservedState
from flowstore.models import FlowState
from tests.lifecycle_context import (
    FLOW,
    add_agent,
    configs,
    kv_dump,
    report,
    spec,
)

pytestmark = pytest.mark.usefixtures("lifecycle_types")




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
    assert flow.revision == 1  # deploy and start are not revisions; nothing new was written
    assert (created, changes.spec_changed, changes.written) == (False, False, [])
    assert changes.unchanged == ["demo.gen", "demo.keep", "demo.out"]
    assert await kv_dump(nc, "flowctl_config") == before

    flow, created, changes = await engine.apply("demo", spec(FLOW.replace("x > 1", "x > 2")))
    assert (flow.state, flow.revision, flow.deployed_revision) == (FlowState.RUNNING, 2, 2)
    assert (changes.added, changes.updated, changes.removed) == ([], ["demo.keep"], [])
    assert changes.unchanged == ["demo.gen", "demo.out"]
    after = await kv_dump(nc, "flowctl_config")
    for key in ("demo.gen", "demo.out"):
        assert after[key] == before[key]  # same value, same KV revision
    assert after["demo.keep"][1] > before["demo.keep"][1]
    assert after["demo.keep"][0] == {**before["demo.keep"][0], "flow_revision": 2,
                                     "config": {"where": "x > 2", "limit": 0}}

    # Replacing the sink changes what reads keep's output; the source (at-least-once: it
    # waits for nobody, so it has no downstream list) is not restarted.
    renamed = FLOW.replace("{id: out, type: lt-sink", "{id: log, type: lt-sink")
    flow, created, changes = await engine.apply("demo", spec(renamed))
    assert (changes.added, changes.updated, changes.removed) == (
        ["demo.log"], ["demo.keep"], ["demo.out"])
    after = await kv_dump(nc, "flowctl_config")
    assert sorted(after) == ["demo.gen", "demo.keep", "demo.log"]
    assert after["demo.gen"][0]["downstream"] == {}
    assert after["demo.keep"][0]["assignments"] == ["agent-1", "agent-1"]
    assert after["demo.log"][0]["enabled"] is True  # matches the running state


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
    assert state.reasons == [
        "demo.keep.1: unknown: agent agent-dead silent (its heartbeat record is gone)"]

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
    assert changes.updated == ["demo.keep"]  # not gen: at-least-once, it waits for nobody
    assert changes.status_removed == ["demo.keep.1"]
    assert (await configs(nc))["demo.keep"]["assignments"] == ["agent-1"]
    result = await engine.start("demo")  # out changes (enabled) and is placed: not pending
    assert result.changes.status_removed == ["demo.out.0"]
    assert await kv_dump(nc, "flowctl_status") == {}


async def test_live_agents_skip_stale_heartbeats(engine: FlowEngine, nc: Any) -> None:
    await add_agent(nc, "old", stale=True)
    await add_agent(nc, "agent-0", zone="a")
    assert [a.name for a in await engine.live_agents()] == ["agent-0", "agent-1"]
