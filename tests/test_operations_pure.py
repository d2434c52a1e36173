"""The pure decisions behind operating a flow: rates over a window, the latency
histogram, `--since` parsing and log rendering, where `tap` listens and what `dlq
replay` targets, and how `top` sums a node's replicas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import typer

from cli.live_views import node_rows, tap_subjects
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
