"""The pure decisions behind operating a flow: rates over a window, the latency
histogram, `--since` parsing and log rendering, where `tap` listens and what `dlq
replay` targets, and how `top` sums a node's replicas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import typer

from cli.live_views import node_rows, tap_subjects, tapping
from cli.logs import compile_grep, parse_since, render
from cli.output import Format
from componentmanager.agent.rates import RateWindow
from componentmanager.dataplane.latency import BUCKETS, LatencyHistogram
from flowengine.deadletters import DeadLetter, ReplayRefused, replay_headers, replay_target
from flowstore.models import ComponentConfig


def test_rate_window_tells_what_moves_now() -> None:
    window = RateWindow(span=6.0)
    assert window.add(0.0, 0, 0) == {"in": 0.0, "out": 0.0}
    assert window.add(2.0, 200, 100) == {"in": 100.0, "out": 50.0}
    window.add(4.0, 400, 200)
    window.add(6.0, 600, 300)
    # nothing more arrives: the rate falls to 0 once the window has passed
    window.add(8.0, 600, 300)
    window.add(10.0, 600, 300)
    assert window.add(12.0, 600, 300) == {"in": 0.0, "out": 0.0}


def test_latency_histogram_is_cumulative_per_event() -> None:
    histogram = LatencyHistogram()
    histogram.observe(0.0064, 64)  # a frame of 64 events, 100 µs each
    histogram.observe(2.0)
    histogram.observe(1.0, 0)  # nothing taken: nothing observed
    buckets = dict(histogram.cumulative())
    assert buckets["0.0001"] == 64 and buckets["2.5"] == 65 and buckets["+Inf"] == 65
    assert len(buckets) == len(BUCKETS) + 1 and histogram.sum == pytest.approx(2.0064)


def test_since_takes_durations_and_times() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert parse_since("10m", now) == now - timedelta(minutes=10)
    assert parse_since("1.5h", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-25T10:00:00Z", now) == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert parse_since("2026-11-25T10:00:00", now).tzinfo == UTC
    for bad in ("10 minutes", "yesterday", "-5m"):
        with pytest.raises(typer.BadParameter, match="neither a duration"):
            parse_since(bad, now)
    with pytest.raises(typer.BadParameter, match="not a regular expression"):
        compile_grep("order (")


def test_log_lines_render_for_people_and_scripts() -> None:
    record = {"ts": "2026-11-25T12:00:00Z", "flow": "f", "node": "price", "replica": 0,
              "agent": "a1", "stream": "error", "line": "event failed: boom",
              "event_id": "gen.0.x-4"}
    assert render(record, Format.table) == \
        "2026-11-25T12:00:00Z price.0@a1 [error] event failed: boom (event gen.0.x-4)"
    assert render({**record, "stream": "stdout", "event_id": None}, Format.table).endswith(
        "price.0@a1 event failed: boom")
    assert render(record, Format.json).startswith('{"ts":"2026-11-25T12:00:00Z"')
    assert render({"line": "not ours"}, Format.table) == '{"line": "not ours"}'


def _cfg(node: str, inputs: dict[str, list[str]], outputs: dict[str, str]) -> ComponentConfig:
    return ComponentConfig(flow="f", node=node, type="transform", role="processor",
                           inputs=inputs, outputs=outputs, queue=f"flowctl.f.{node}")


def test_tap_and_replay_find_the_subjects() -> None:
    proc = _cfg("work", {"in": ["flowctl.f.gen.out"], "side": []},
                {"out": "flowctl.f.work.out"})
    sink = _cfg("out", {"in": ["flowctl.f.a.out", "flowctl.f.b.out"]}, {})
    assert tap_subjects(proc, None) == (["flowctl.f.work.out"], "outputs of 'work'")
    assert tap_subjects(proc, "dlq")[0] == ["flowctl.f.work.dlq"]
    assert tap_subjects(sink, None)[0] == ["flowctl.f.a.out", "flowctl.f.b.out"]
    with pytest.raises(ValueError, match="ports: dlq, in, out, side"):
        tap_subjects(proc, "nope")
    # fused: a port passed on in memory is tapped on the copy its node sends while tapped
    chain = ["work", "out"]
    proc.fused, proc.fused_port, sink.fused = chain, "out", chain
    configs = {"f.work": proc, "f.out": sink}
    assert tap_subjects(proc, None) == (["_flowctl.tap.f.work.out"], "outputs of 'work'")
    assert tap_subjects(sink, None, configs)[0] == ["_flowctl.tap.f.work.out"]
    assert tapping(tap_subjects(sink, "in", configs)[0]) == ["_flowctl.tapping.f.work.out"]
    assert tapping(["flowctl.f.a.out"]) == []
    assert replay_target(proc, None) == ("in", "flowctl.f.gen.out")
    with pytest.raises(ReplayRefused, match="no input port 'side'"):
        replay_target(proc, "side")  # an input with nothing connected
    with pytest.raises(ReplayRefused, match="a source"):
        replay_target(_cfg("gen", {}, {"out": "flowctl.f.gen.out"}), None)
    letter = DeadLetter(seq=42, node="work", time="", error="boom", event_id="gen.0.x-4",
                        data=b"{}")
    headers = replay_headers(letter, "work", 1.5)
    assert headers == {"Flowctl": "replay.42-1 1 1.500000", "Flowctl-Replay-To": "work",
                       "Nats-Msg-Id": "dlq-42", "Flowctl-Replay-Of": "gen.0.x-4"}


def test_top_sums_a_nodes_replicas() -> None:
    def replica(node: str, state: str, rate: float, lag: dict[str, int]) -> dict:
        return {"node": node, "state": state, "rate": {"in": rate, "out": rate}, "lag": lag,
                "counters": {"in": 10, "out": 10, "errors": 1, "dropped": 0}}

    rows = node_rows([{"flow": "f", "replicas": [
        replica("gen", "completed", 0, {}),
        replica("work", "running", 100, {"in": 40}),
        replica("work", "running", 50, {"in": 40}),
        replica("work", "failed", 0, {}),
    ]}])
    assert [r["node"] for r in rows] == ["gen", "work"]
    work = rows[1]
    assert (work["replicas"], work["state"], work["rate_in"], work["lag"], work["in"],
            work["errors"]) == (3, "running 2/3", 150, 40, 30, 3)


def _agent(name: str, beat: datetime, heartbeat_s: float = 2.0):
    from flowstore.models import AgentRecord

    return AgentRecord(name=name, host="h", pid=1, version="0", started_at="x",
                       instance="i", heartbeat_s=heartbeat_s,
                       heartbeat_at=beat.isoformat().replace("+00:00", "Z"))


def test_a_replica_of_a_silent_agent_is_shown_unknown_by_the_rule_of_flowctl_agents() -> None:
    from flowstore.liveness import as_seen, silent_for

    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    running = {"state": "running", "agent": "a1", "reason": None, "rate": {"in": 5.0},
               "lag": {"in": 3}}
    fresh = _agent("a1", now - timedelta(seconds=3.9))
    late = _agent("a1", now - timedelta(seconds=4.1))
    assert silent_for(fresh, now) is None and as_seen(running, fresh, now) is running
    assert silent_for(late, now) == pytest.approx(4.1)  # overdue: 2 heartbeats of 2 s
    assert as_seen(running, late, now) == {
        "state": "unknown", "agent": "a1", "reason": "agent a1 silent 4.1 s", "rate": {},
        "lag": {}, "reported_state": "running"}
    assert as_seen(running, None, now)["reason"] == "agent a1 silent (its heartbeat record is gone)"
    for state in ("completed", "stopped", "failed", "pending"):  # as written, rates 0
        record = {**running, "state": state}
        assert as_seen(record, late, now) == {**record, "rate": {"in": 0.0, "out": 0.0}}


def test_the_leader_says_where_each_replica_went_and_why() -> None:
    from componentmanager.agent.moves import move_lines

    cfg = ComponentConfig(flow="f", node="out", type="file", queue="q", replicas=4,
                          assignments=["a1", "a2", None, "a4"])
    lines = move_lines(cfg, ["a3", "a2", "a3", None], {3: "no live agent matches placement"},
                       {"a1": 5.06}, {"a1", "a2", "a3"})
    assert lines == [
        (0, "moved out.0 from a1 to a3: a1 silent 5.1 s"),
        (2, "placed out.2 on a3"),
        (3, "could not move out.3 from a4: a4 is gone (no heartbeat record); "
            "no live agent matches placement"),
    ]
    moved = move_lines(cfg.model_copy(update={"assignments": ["a2"], "replicas": 1}), ["a3"],
                       {}, {}, {"a2", "a3"})
    assert moved == [(0, "moved out.0 from a2 to a3: a2 no longer matches the node's placement")]


def test_metrics_count_replicas_unknown_while_the_agents_heartbeat_is_overdue() -> None:
    from types import SimpleNamespace

    from componentmanager.agent.metrics import AgentCollector

    now = datetime.now(UTC)
    agent = SimpleNamespace(last_heartbeat=_agent("a1", now, heartbeat_s=0.5))
    collector = AgentCollector(agent)
    assert collector._state_seen("running") == "running"
    agent.last_heartbeat = _agent("a1", now - timedelta(seconds=1.5), heartbeat_s=0.5)
    assert collector._state_seen("running") == "unknown"
    assert collector._state_seen("completed") == "completed"


def test_the_console_sends_a_replica_again_when_its_agent_falls_silent() -> None:
    import json

    from console.events import ChangeHub

    hub = ChangeHub(nc=None)
    t0 = datetime.now(UTC)
    beat = json.loads(_agent("a1", t0).to_json())
    hub._remember({"bucket": "flowctl_agents", "key": "a1", "op": "put", "value": beat})
    sent = hub._remember({"bucket": "flowctl_status", "key": "f.out.0", "op": "put",
                          "value": {"state": "running", "agent": "a1"}})
    assert sent["value"]["state"] == "running"
    assert hub.silence_changes(t0 + timedelta(seconds=3)) == []
    [again] = hub.silence_changes(t0 + timedelta(seconds=4.5))
    assert (again["key"], again["value"]["state"]) == ("f.out.0", "unknown")
    assert again["value"]["reason"] == "agent a1 silent 4.5 s"
    assert hub.silence_changes(t0 + timedelta(seconds=5)) == []  # sent once
    beat = json.loads(_agent("a1", t0 + timedelta(seconds=5)).to_json())
    hub._remember({"bucket": "flowctl_agents", "key": "a1", "op": "put", "value": beat})
    [back] = hub.silence_changes(t0 + timedelta(seconds=5.1))
    assert back["value"] == {"state": "running", "agent": "a1"}
