"""The agent as users run it: real `flowctl agent` processes, flows driven through the
engine, events checked where they land (files, subjects) and records read from KV."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from flowstore import parse_flow
from flowstore.nats import AGENTS_BUCKET, CONFIG_BUCKET, open_bucket
from tests.agents import (
    AgentRecord,
    all_in_state,
    flow_yaml,
    live_agent,
    read_lines,
    run_flow,
    statuses,
    wait_until,
)


async def test_agent_record_heartbeat_and_clean_exit(nc, agents) -> None:
    agent = agents("a1", "zone=a,tier=edge")
    rec = await wait_until(lambda: live_agent(nc, "a1"), what="agent record")
    assert rec.labels == {"zone": "a", "tier": "edge"}
    assert rec.pid == agent.pid and rec.host and rec.version and rec.started_at
    first = rec.heartbeat_at
    later = await wait_until(
        lambda: _changed(nc, "a1", first), what="a second heartbeat", timeout=5
    )
    assert later.memory_mb > 0
    # The raw value is one line of JSON, as `nats kv watch` shows it.
    raw = (await (await open_bucket(nc, AGENTS_BUCKET)).get("a1")).value
    assert b"\n" not in raw and json.loads(raw)["name"] == "a1"
    assert agent.stop() == 0
    assert await live_agent(nc, "a1") is None


async def _changed(nc, name: str, before: str) -> AgentRecord | None:
    rec = await live_agent(nc, name)
    return rec if rec and rec.heartbeat_at != before else None


async def test_second_agent_with_same_name_refuses(nc, agents) -> None:
    agents("dup")
    await wait_until(lambda: live_agent(nc, "dup"), what="first agent")
    second = agents("dup")
    assert second.proc.wait(15) == 1
    _, err = second.output()
    assert "already running" in err and "Traceback" not in err


GEN_TO_FILE = """\
  sources:
    - id: gen
      type: generate
      config: {{count: {count}}}
  processors:
    - id: tag
      type: transform
      inputs: [gen]
      config: {{set: {{tag: "{tag}"}}}}
  sinks:
    - id: out
      type: file
      inputs: [tag]
      config: {{path: "{path}"}}
"""


async def test_events_flow_end_to_end_with_status_and_agent_record(nc, agents, tmp_path) -> None:
    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    out = tmp_path / "out.jsonl"
    await run_flow(nc, flow_yaml("e2e", GEN_TO_FILE.format(count=50, tag="'x'", path=out)))
    lines = await wait_until(lambda: _lines(out, 50), what="50 events in the file")
    events = [json.loads(x) for x in lines]
    assert sorted(e["seq"] for e in events) == list(range(50))
    assert all(e["tag"] == "x" for e in events)
    st = await wait_until(
        lambda: _counters_settled(nc, "e2e"), what="status counters", timeout=10
    )
    assert st["e2e.gen.0"].state.value == "completed"
    assert st["e2e.gen.0"].counters.out == 50
    assert st["e2e.tag.0"].state.value == "running" and st["e2e.tag.0"].counters.in_ == 50
    assert st["e2e.out.0"].counters.in_ == 50 and st["e2e.out.0"].agent == "a1"
    want = {"e2e.gen.0", "e2e.tag.0", "e2e.out.0"}

    async def listed():  # type: ignore[no-untyped-def]
        rec = await live_agent(nc, "a1")  # (its record lists them at its next heartbeat)
        return rec if rec is not None and set(rec.components) == want else None

    await wait_until(listed, what=f"agent record listing {sorted(want)}", timeout=10)


async def _lines(path: Path, n: int) -> list[str] | None:
    lines = read_lines(path)
    return lines if len(lines) >= n else None


async def _counters_settled(nc, flow: str):
    st = await statuses(nc, flow)
    out = st.get(f"{flow}.out.0")
    return st if out and out.counters.in_ == 50 else None


async def test_config_change_restarts_with_new_config(nc, agents, tmp_path) -> None:
    agents("a1")
    out = tmp_path / "out.jsonl"
    body = """\
  sources:
    - id: feed
      type: nats
      config: {subject: "feed.in"}
  processors:
    - id: tag
      type: transform
      inputs: [feed]
      config: {set: {tag: "%s"}}
  sinks:
    - id: out
      type: file
      inputs: [tag]
      config: {path: "%s"}
"""
    engine = await run_flow(nc, flow_yaml("chg", body % ("'v1'", out)))
    keys = ["chg.feed.0", "chg.tag.0", "chg.out.0"]
    await wait_until(lambda: all_in_state(nc, "chg", keys, "running"), what="running")
    await nc.publish("feed.in", b'{"n": 1}')
    await wait_until(lambda: _lines(out, 1), what="first event")
    cfg_kv = await open_bucket(nc, CONFIG_BUCKET)
    feed_rev = (await cfg_kv.get("chg.feed")).revision
    # Change one node while running: only it restarts, with the new config.
    changed = parse_flow(flow_yaml("chg", body % ("'v2'", out)))
    result = await engine.apply("chg", changed.spec)
    assert result.changes.updated == ["chg.tag"]
    assert (await cfg_kv.get("chg.feed")).revision == feed_rev

    async def v2_arrives() -> bool:
        await nc.publish("feed.in", b'{"n": 2}')
        lines = read_lines(out)
        return any(json.loads(x)["tag"] == "v2" for x in lines)

    await wait_until(v2_arrives, what="an event tagged by the new config")
    first = json.loads(read_lines(out)[0])
    assert first == {"n": 1, "tag": "v1"}


async def test_disable_stops_delivery_and_enable_resumes(nc, agents, tmp_path) -> None:
    agents("a1")
    out = tmp_path / "out.jsonl"
    body = f"""\
  sources:
    - id: feed
      type: nats
      config: {{subject: "dis.in"}}
  sinks:
    - id: out
      type: file
      inputs: [feed]
      config: {{path: "{out}"}}
"""
    engine = await run_flow(nc, flow_yaml("dis", body))
    keys = ["dis.feed.0", "dis.out.0"]
    await wait_until(lambda: all_in_state(nc, "dis", keys, "running"), what="running")
    await nc.publish("dis.in", b'{"n": 1}')
    await wait_until(lambda: _lines(out, 1), what="first event")
    await engine.stop("dis")
    await wait_until(lambda: all_in_state(nc, "dis", keys, "stopped"), what="stopped")
    for i in range(20):
        await nc.publish("dis.in", json.dumps({"n": 100 + i}).encode())
    await nc.flush()
    await asyncio.sleep(1.0)  # give a leaked subscription the chance to deliver
    assert read_lines(out) == ['{"n":1}']
    await engine.start("dis")
    await wait_until(lambda: all_in_state(nc, "dis", keys, "running"), what="running again")
    await nc.publish("dis.in", b'{"n": 2}')
    await wait_until(lambda: _lines(out, 2), what="events after re-enable")
    assert read_lines(out)[-1] == '{"n":2}'


async def test_deleted_key_stops_replica_and_garbage_is_reported(nc, agents, tmp_path) -> None:
    agent = agents("a1")
    out = tmp_path / "out.jsonl"
    body = f"""\
  sources:
    - id: feed
      type: nats
      config: {{subject: "del.in"}}
  sinks:
    - id: out
      type: file
      inputs: [feed]
      config: {{path: "{out}"}}
    - id: other
      type: stdout
      inputs: [feed]
"""
    await run_flow(nc, flow_yaml("del", body))
    keys = ["del.feed.0", "del.out.0", "del.other.0"]
    await wait_until(lambda: all_in_state(nc, "del", keys, "running"), what="running")
    cfg_kv = await open_bucket(nc, CONFIG_BUCKET)
    # Someone writes garbage into a config key by hand.
    await cfg_kv.put("del.other", b"{not json")
    await cfg_kv.put("del.ghost", b'{"flow": "del"}')
    st = await wait_until(
        lambda: _has_error(nc, "del.ghost.0"), what="the garbage reported in status"
    )
    assert st.state.value == "failed" and "invalid config record" in st.last_error
    other = await wait_until(lambda: _has_error(nc, "del.other.0"), what="report on other")
    assert "invalid config record" in other.last_error
    # ...and everything else keeps running.
    await nc.publish("del.in", b'{"n": 1}')
    await wait_until(lambda: _lines(out, 1), what="events still flowing")
    # Delete a key: its replica stops and is removed from the agent.
    await cfg_kv.delete("del.out")

    async def removed() -> bool:
        rec = await live_agent(nc, "a1")
        return rec is not None and "del.out.0" not in rec.components

    await wait_until(removed, what="replica removed")
    await nc.publish("del.in", b'{"n": 2}')
    await nc.flush()
    await asyncio.sleep(0.5)
    assert read_lines(out) == ['{"n":1}']
    assert agent.proc.poll() is None


async def _has_error(nc, key: str):
    st = await statuses(nc, key.split(".")[0])
    s = st.get(key)
    return s if s and s.last_error else None


async def test_two_replicas_share_the_work(nc, agents, tmp_path) -> None:
    agents("a1")
    agents("a2")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
    await wait_until(lambda: live_agent(nc, "a2"), what="agent a2")
    out = tmp_path / "out.jsonl"
    body = f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: 400, rate: 400}}  # paced: many small frames, for both replicas
  processors:
    - id: work
      type: transform
      inputs: [gen]
      replicas: 2
      config: {{set: {{done: "true"}}}}
  sinks:
    - id: out
      type: file
      inputs: [work]
      config: {{path: "{out}"}}
"""
    await run_flow(nc, flow_yaml("share", body))
    await wait_until(lambda: _lines(out, 400), what="all events", timeout=20)

    async def split() -> dict | None:
        st = await statuses(nc, "share")
        a, b = st.get("share.work.0"), st.get("share.work.1")
        if a and b and a.counters.in_ + b.counters.in_ == 400:
            return {"a": a, "b": b}
        return None

    both = await wait_until(split, what="counters of both replicas")
    assert both["a"].agent != both["b"].agent
    assert both["a"].counters.in_ > 0 and both["b"].counters.in_ > 0
    assert sorted(json.loads(x)["seq"] for x in read_lines(out)) == list(range(400))
