"""How a flow stops and goes: stop in flow order, and undeploy/delete remove its stream.

``stop`` disables the sources first and each further wave of nodes only once the replicas
of the one before report stopped (bounded), so a batch's last partial batch still reaches
a sink on another agent; the pure :func:`stop_waves` gives the order. Undeploy and delete
delete the flow's at-least-once stream. Against a real nats-server; the end-to-end tests
with real ``flowctl agent`` processes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from flowengine import FlowEngine
from flowengine.stopping import stop_waves
from flowengine.translate import translate
from flowstore.models import FlowState, stream_name
from flowstore.nats import delete_flow_stream
from flowstore.streams import ensure_flow_stream
from tests.agents import all_in_state, flow_yaml, live_agent, read_lines, run_flow, wait_until
from tests.lifecycle_context import (
    FLOW,
    add_agent,
    configs,
    report,
    spec,
)

pytestmark = pytest.mark.usefixtures("lifecycle_types")


@pytest.fixture
def engine(engine: FlowEngine) -> FlowEngine:
    """The shared engine, polling replica status faster while it stops a flow."""
    engine.stop_poll = 0.02
    return engine


def _waves(text: str) -> list[list[str]]:
    s = spec(text)
    return stop_waves(s, translate("demo", s, flow_revision=1, enabled=False).values())


def test_stop_waves_follow_the_connections() -> None:
    assert _waves(FLOW) == [["gen"], ["keep"], ["out"]]
    fan = FLOW.replace(
        "  sinks:\n",
        "    - {id: side, type: lt-pass, config: {where: x}, inputs: [gen, keep]}\n"
        "  sinks:\n    - {id: s2, type: lt-sink, inputs: [side]}\n",
    ).replace("{id: gen, type: lt-gen}", "{id: gen, type: lt-gen}\n    - {id: g2, type: lt-gen}")
    # side waits for keep (one of its inputs); a second source goes in the first wave.
    assert _waves(fan) == [["gen", "g2"], ["keep"], ["side", "out"], ["s2"]]
    cycle = FLOW.replace("inputs: [gen]", "inputs: [gen, out2]").replace(
        "  sinks:\n", "    - {id: out2, type: lt-pass, config: {where: x}, inputs: [keep]}\n"
        "  sinks:\n")
    assert _waves(cycle) == [["gen"], ["keep", "out2", "out"]]  # a cycle: the rest at once


async def _enabled(nc: Any) -> dict[str, bool]:
    return {k.split(".")[1]: v["enabled"] for k, v in (await configs(nc)).items()}


async def test_stop_disables_wave_after_wave_as_replicas_report_stopped(
    engine: FlowEngine, nc: Any
) -> None:
    await engine.apply("demo", spec())
    await engine.deploy("demo")
    await engine.start("demo")
    for node, replica in (("gen", 0), ("keep", 0), ("keep", 1), ("out", 0)):
        await report(nc, node, replica, "running")
    await add_agent(nc, "agent-1")  # a fresh heartbeat: live for the next six seconds
    stopping = asyncio.create_task(engine.stop("demo"))

    async def enabled_is(want: dict[str, bool]) -> bool:
        return await _enabled(nc) == want

    await wait_until(lambda: enabled_is({"gen": False, "keep": True, "out": True}), 5, "gen off")
    await asyncio.sleep(0.3)  # keep stays enabled while gen runs
    assert await _enabled(nc) == {"gen": False, "keep": True, "out": True}
    await report(nc, "gen", 0, "completed")
    await wait_until(lambda: enabled_is({"gen": False, "keep": False, "out": True}), 5, "keep")
    await report(nc, "keep", 0, "stopped")
    await report(nc, "keep", 1, "running", agent="gone")  # its agent is not live: no wait
    await asyncio.sleep(0.1)  # (a replica whose agent is dead is not waited for)
    await wait_until(lambda: enabled_is(dict.fromkeys(["gen", "keep", "out"], False)), 5, "out")
    assert not stopping.done()  # the sinks are waited for too
    await report(nc, "out", 0, "stopped")
    result = await asyncio.wait_for(stopping, 5)
    assert result.flow.state == FlowState.DEPLOYED_STOPPED
    assert result.changes.updated == ["demo.gen", "demo.keep", "demo.out"]
    assert result.changes.not_stopped == []


async def test_stop_sources_disables_only_the_first_wave_and_keeps_the_record_running(
    engine: FlowEngine, nc: Any
) -> None:
    """What `flowctl run` does on Ctrl+C before it stops: the sources alone, waited for;
    the rest keeps running (drains); `stop` then finishes in waves."""
    await engine.apply("demo", spec())
    await engine.deploy("demo")
    await engine.start("demo")
    await report(nc, "gen", 0, "running")
    await add_agent(nc, "agent-1")
    stopping = asyncio.create_task(engine.stop_sources("demo"))
    await wait_until(lambda: _enabled_is(nc, {"gen": False, "keep": True, "out": True}), 5,
                     "gen off")
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waits for the source's replica to stop
    await report(nc, "gen", 0, "stopped")
    result = await asyncio.wait_for(stopping, 5)
    assert result.changes.updated == ["demo.gen"] and result.changes.not_stopped == []
    assert (await engine.flows.get("demo")).state == FlowState.RUNNING
    assert await _enabled(nc) == {"gen": False, "keep": True, "out": True}
    for node, replica in (("keep", 0), ("keep", 1), ("out", 0)):
        await report(nc, node, replica, "stopped")
    result = await asyncio.wait_for(engine.stop("demo"), 5)
    assert result.flow.state == FlowState.DEPLOYED_STOPPED
    assert await _enabled(nc) == dict.fromkeys(["gen", "keep", "out"], False)


async def _enabled_is(nc: Any, want: dict[str, bool]) -> bool:
    return await _enabled(nc) == want


async def test_stop_gives_up_waiting_after_its_timeout(engine: FlowEngine, nc: Any) -> None:
    engine.stop_timeout = 0.5
    await engine.apply("demo", spec())
    await engine.deploy("demo")
    await engine.start("demo")
    await report(nc, "gen", 0, "running")  # never stops
    await report(nc, "keep", 0, "starting")
    result = await asyncio.wait_for(engine.stop("demo"), 5)
    assert result.changes.not_stopped == ["demo.gen.0"]
    assert await _enabled(nc) == dict.fromkeys(["gen", "keep", "out"], False)
    assert result.to_dict()["changes"]["not_stopped"] == ["demo.gen.0"]


async def ensure_stream(nc: Any, flow: str) -> None:
    """A stream of ``flow`` made outside the engine (a leftover)."""
    await ensure_flow_stream(nc, flow, [f"flowctl.{flow}.x.out"], 2**24)


async def _stream_exists(nc: Any, flow: str) -> bool:
    try:
        await nc.jetstream().stream_info(stream_name(flow))
    except NotFoundError:
        return False
    return True


async def test_undeploy_and_delete_remove_the_flow_stream(engine: FlowEngine, nc: Any) -> None:
    alo = spec(FLOW.replace("spec:\n", "spec:\n  delivery: at-least-once\n"))
    await engine.apply("demo", alo)
    await engine.apply("other", alo)
    await engine.deploy("demo")
    await engine.start("demo")
    assert await _stream_exists(nc, "demo")  # the engine made it at deploy
    for flow in ("other", "demo-2"):
        await ensure_stream(nc, flow)
    result = await engine.undeploy("demo", force=True)
    assert result.changes.streams_removed == ["FLOWCTL_demo"]
    assert not await _stream_exists(nc, "demo")
    assert await _stream_exists(nc, "other") and await _stream_exists(nc, "demo-2")

    await engine.deploy("demo")
    assert await _stream_exists(nc, "demo")
    deleted = await engine.delete("demo", force=True)
    assert deleted.changes.streams_removed == ["FLOWCTL_demo"]
    assert not await _stream_exists(nc, "demo")

    # A never-deployed flow with a stream left over (an agent created it late).
    deleted = await engine.delete("other")
    assert deleted.changes.streams_removed == ["FLOWCTL_other"]
    assert not await _stream_exists(nc, "other")
    assert await _stream_exists(nc, "demo-2")
    assert await delete_flow_stream(nc, "other") is False


async def test_undeploy_of_an_at_most_once_flow_removes_no_stream(
    engine: FlowEngine, nc: Any
) -> None:
    amo = spec(FLOW.replace("spec:\n", "spec:\n  delivery: at-most-once\n"))
    await engine.apply("demo", amo)
    await engine.deploy("demo")
    assert (await engine.undeploy("demo")).changes.streams_removed == []


def _batch_flow(out: Path, delivery: str) -> str:
    body = f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: 7}}
      placement: {{labels: {{zone: a}}}}
  processors:
    - id: group
      type: batch
      inputs: [gen]
      config: {{size: 5, interval: 60}}
      placement: {{labels: {{zone: a}}}}
  sinks:
    - id: out
      type: file
      inputs: [group]
      config: {{path: "{out}"}}
      placement: {{labels: {{zone: b}}}}
"""
    return flow_yaml("batches", body, delivery=delivery)


@pytest.mark.parametrize("delivery", ["at-most-once", "at-least-once"])
async def test_stop_delivers_the_last_partial_batch_across_agents(
    nc: Any, agents: Any, tmp_path: Path, delivery: str
) -> None:
    agents("a1", "zone=a")
    agents("b1", "zone=b")
    for name in ("a1", "b1"):
        await wait_until(lambda name=name: live_agent(nc, name), what=f"agent {name}")
    out = tmp_path / "out.jsonl"
    engine = await run_flow(nc, _batch_flow(out, delivery))
    await wait_until(lambda: all_in_state(nc, "batches", ["batches.gen.0"], "completed"),
                     20, "the source completed")
    await wait_until(lambda: _lines(out, 1), 10, "the first full batch")

    result = await engine.stop("batches")
    assert result.changes.not_stopped == []
    await asyncio.sleep(0.5)  # anything late would show up now
    batches = [json.loads(line) for line in read_lines(out)]
    assert [b["count"] for b in batches] == [5, 2]
    assert [e["seq"] for b in batches for e in b["events"]] == list(range(7))

    await engine.undeploy("batches")
    assert not await _stream_exists(nc, "batches")


async def _lines(path: Path, n: int) -> bool:
    return len(read_lines(path)) >= n
