"""The pure core of ``window`` and the stateful components' logic, without NATS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from componentmanager.components.stateful import Join, JoinConfig, Window, WindowConfig
from componentmanager.components.windowing import (
    Aggregations,
    KeyedWindows,
    Shape,
    parse_aggregation,
    parse_seconds,
)
from componentmanager.dataplane.partition import (
    KeyNotComputed,
    Partitioner,
    key_text,
    partition_of,
    partition_origin,
)


class Ctx:
    """What a component sees of the runtime: records what it emits."""

    def __init__(self, inputs: list[str] | None = None) -> None:
        self.emitted: list[tuple[str, Any]] = []
        self.filtered = 0
        self.input_ports = inputs or ["in"]

    async def emit(self, port: str, event: Any) -> None:
        self.emitted.append((port, event))

    def count_filtered(self, count: int = 1) -> None:
        self.filtered += count


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_durations_and_aggregations_parse_or_say_how() -> None:
    assert [parse_seconds(v) for v in (10, "10s", "500ms", "5m", "1h", 2.5)] == \
        [10.0, 10.0, 0.5, 300.0, 3600.0, 2.5]
    with pytest.raises(ValueError, match="write 10, 10s"):
        parse_seconds("ten seconds")
    assert parse_aggregation("count") == ("count", None)
    assert parse_aggregation("sum(amount * 2)") == ("sum", "amount * 2")
    with pytest.raises(ValueError, match="needs an expression"):
        parse_aggregation("max")
    with pytest.raises(ValueError, match="not an aggregation"):
        parse_aggregation("median(x)")


def test_window_config_says_what_is_missing_or_does_not_apply() -> None:
    with pytest.raises(ValidationError, match="a tumbling window needs size"):
        WindowConfig.model_validate({})
    with pytest.raises(ValidationError, match="gap does not apply"):
        WindowConfig.model_validate({"size": "1s", "gap": "1s"})
    with pytest.raises(ValidationError, match="slide is longer than size"):
        WindowConfig.model_validate({"kind": "sliding", "size": 1, "slide": 2})
    with pytest.raises(ValidationError, match="taken by the window"):
        WindowConfig.model_validate({"size": 1, "aggregate": {"start": "count"}})


def test_sliding_windows_hold_an_event_in_each_window_that_contains_it() -> None:
    shape = Shape("sliding", size=10.0, slide=5.0)
    assert shape.starts(12.0) == [5.0, 10.0]
    assert Shape("tumbling", size=10.0).starts(12.0) == [10.0]


def _aggs() -> Aggregations:
    return Aggregations({"n": ("count", None), "total": ("sum", lambda e: e["v"]),
                         "lo": ("min", lambda e: e["v"]), "avg": ("avg", lambda e: e["v"]),
                         "all": ("collect", lambda e: e["v"]), "first": ("first", lambda e: e["v"]),
                         "last": ("last", lambda e: e["v"])})


def test_session_windows_merge_when_an_event_bridges_them() -> None:
    aggs = _aggs()
    windows = KeyedWindows(Shape("session", gap=7.0), aggs)
    for t, v in ((0.0, 1), (12.0, 3), (6.0, 2)):  # 6 bridges [0,7) and [12,19)
        assert windows.add("k", t, aggs.values({"v": v}), watermark=float("-inf"))
    assert windows.close(18.9) == []
    [(key, start, window)] = windows.close(19.0)
    assert (key, start, window["end"]) == ("k", 0.0, 19.0)
    assert aggs.results(window["acc"]) == {"n": 3, "total": 6, "lo": 1, "avg": 2.0,
                                           "all": [1, 2, 3], "first": 1, "last": 3}


def test_an_event_whose_windows_closed_is_late() -> None:
    aggs = _aggs()
    windows = KeyedWindows(Shape("tumbling", size=1.0), aggs)
    assert windows.add("k", 3.5, aggs.values({"v": 1}), watermark=3.2)
    assert not windows.add("k", 2.5, aggs.values({"v": 1}), watermark=3.2)


def test_event_time_window_closes_on_the_watermark_and_sends_late_events_to_late() -> None:
    ctx = Ctx()
    window = Window(WindowConfig.model_validate(
        {"size": "10s", "key": "user", "time": "ts", "lateness": "2s",
         "aggregate": {"clicks": "count", "spent": "sum(amount)"}}), ctx)
    events = [{"user": "a", "ts": 1, "amount": 5}, {"user": "b", "ts": 4, "amount": 1},
              {"user": "a", "ts": 9, "amount": 5}, {"user": "a", "ts": 11, "amount": 1},
              {"user": "a", "ts": 8, "amount": 100},  # within lateness: still counts
              {"user": "b", "ts": 12.5, "amount": 1}]  # watermark 10.5: [0,10) closes
    for event in events:
        run(window.process("in", event))
    assert [e for _, e in ctx.emitted] == [
        {"key": "a", "start": "1970-01-01T00:00:00.000Z", "end": "1970-01-01T00:00:10.000Z",
         "clicks": 3, "spent": 110},
        {"key": "b", "start": "1970-01-01T00:00:00.000Z", "end": "1970-01-01T00:00:10.000Z",
         "clicks": 1, "spent": 1}]
    run(window.process("in", {"user": "a", "ts": 3, "amount": 1}))
    assert ctx.emitted[-1] == ("late", {"user": "a", "ts": 3, "amount": 1})
    assert window.held() == 2


def test_window_state_survives_a_snapshot_and_is_dealt_out_by_key() -> None:
    config = WindowConfig.model_validate({"size": 10, "key": "user", "time": "ts"})
    first = Window(config, Ctx())
    for user in ("a", "b", "c"):
        run(first.process("in", {"user": user, "ts": 1}))
    snapshot = first.snapshot()
    again = Window(config, Ctx())
    again.restore([snapshot])
    assert again.held() == 3 and again.watermark() == 1
    mine = {k: v for k, v in snapshot["keys"].items() if partition_of(k, 2) == 0}
    half = Window(config, Ctx())
    half.restore([{**snapshot, "keys": mine}])
    assert half.held() == len(mine)


def test_join_pairs_in_arrival_order_and_times_out_the_rest() -> None:
    ctx = Ctx(["orders", "payments"])
    join = Join(JoinConfig.model_validate({"key": "id", "within": "1s"}), ctx)
    run(join.process("orders", {"id": 1, "n": "first"}))
    run(join.process("orders", {"id": 1, "n": "second"}))
    run(join.process("payments", {"id": 1, "paid": 10}))
    assert ctx.emitted == [("out", {"key": 1, "orders": {"id": 1, "n": "first"},
                                    "payments": {"id": 1, "paid": 10}})]
    assert join.held() == 1
    join.groups[key_text(1)]["orders"][0][0] -= 5  # it has waited past within
    run(join.flush())
    assert ctx.emitted[-1] == ("timeout", {"key": 1, "input": "orders",
                                           "event": {"id": 1, "n": "second"},
                                           "missing": ["payments"]})
    assert join.held() == 0 and join.snapshot() == {"keys": {}}


def test_a_key_that_cannot_be_computed_belongs_to_partition_zero_only() -> None:
    def key(event: dict[str, Any]) -> Any:
        return event["user"]

    owners = [Partitioner(key, i, 3) for i in range(3)]
    assert [p.owns({}) for p in owners[1:]] == [False, False]
    with pytest.raises(KeyNotComputed, match="partition_by"):  # fails there, once
        owners[0].owns({})
    for user in ("a", "b", "c", "d"):
        assert sum(p.owns({"user": user}) for p in owners) == 1
    assert partition_of(key_text({"b": 1, "a": 2}), 5) == partition_of('{"a":2,"b":1}', 5)


def test_output_ids_differ_once_a_node_is_repartitioned() -> None:
    # Replica 1 of 2 and replica 1 of 3 take other events of one input message: ids
    # alike would make the stream drop the second's outputs as duplicates (lost events,
    # seen in CI when a partitioned node was rescaled while running).
    origins = {partition_origin("7", i, n) for n in (1, 2, 3) for i in range(n)}
    assert len(origins) == 6


BAD_KEYED = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: bad}
spec:
  sources:
    - {id: a, type: generate}
  processors:
    - {id: j, type: join, inputs: [a], config: {key: id}}
    - {id: w, type: window, inputs: [a], replicas: 2, config: {size: 1s}}
    - {id: w2, type: window, inputs: [a], replicas: 2, partition_by: user,
       config: {size: 1s, key: region}}
    - {id: t, type: transform, inputs: [a], partition_by: "user["}
    - {id: agg, type: window, inputs: [a], config: {size: 1s, aggregate: {n: cuont}}}
  sinks:
    - {id: s, type: stdout, inputs: [j, w, w2, t, agg]}
"""


def test_validate_names_each_keyed_problem_where_it_is() -> None:
    from flowengine import validate_loaded
    from flowstore.loader import parse_flow_lenient

    loaded, problems = parse_flow_lenient(BAD_KEYED, "bad.yaml")
    result = validate_loaded(loaded, problems)
    errors = {(i.path, i.message.split(": ", 1)[1]) for i in result.errors}
    assert ("spec.processors[0].inputs", "a join needs two or more inputs, it has 1") in errors
    assert ("spec.processors[1].replicas", "a window without key cannot have 2 replicas "
            "(every event must meet in one)") in errors
    assert ("spec.processors[2].partition_by", "partition_by 'user' differs from its key "
            "'region'") in errors
    assert any(p == "spec.processors[3].partition_by" and "never closed" in m
               for p, m in errors)
    assert any(p == "spec.processors[4].config.aggregate" and "did you mean 'count'" in m
               for p, m in errors)


def test_values_of_the_wrong_kind_fail_the_event_and_change_nothing() -> None:
    from componentmanager.component import EventError

    ctx = Ctx()
    window = Window(WindowConfig.model_validate(
        {"size": 10, "time": "t", "aggregate": {"s": "sum(v)", "hi": "max(v)",
                                                "seen": "count(v)"}}), ctx)
    run(window.process("in", {"t": 1, "v": 2}))
    with pytest.raises(EventError, match=r"sum needs numbers, got null \(write get"):
        run(window.process("in", {"t": 2, "v": None}))
    with pytest.raises(EventError, match="aggregate s: sum needs numbers, got string 'x'"):
        run(window.process("in", {"t": 1, "v": "x"}))
    with pytest.raises(EventError, match="out of range"):
        run(window.process("in", {"t": 1e300, "v": 1}))
    assert window.held() == 1


def test_count_of_an_expression_counts_the_events_where_it_is_not_null() -> None:
    ctx = Ctx()
    window = Window(WindowConfig.model_validate(
        {"size": 10, "time": "t", "aggregate": {"n": "count", "with_v": "count(get(v, null))"}}),
        ctx)
    for event in ({"t": 1, "v": 1}, {"t": 2}, {"t": 3, "v": 0}):
        run(window.process("in", event))
    run(window.process("in", {"t": 20}))  # closes [0, 10)
    assert ctx.emitted[0][1]["n"] == 3 and ctx.emitted[0][1]["with_v"] == 2


def test_every_window_config_problem_is_said_at_its_own_field() -> None:
    with pytest.raises(ValidationError) as failed:
        WindowConfig.model_validate({"kind": "session", "size": "1s", "slide": "1s",
                                     "lateness": "2s", "aggregate": {"m": "median(v)"}})
    problems = {e["loc"][0]: e["msg"] for e in failed.value.errors()}
    assert set(problems) == {"gap", "size", "slide", "lateness", "aggregate"}
    assert "a session window needs gap" in problems["gap"]
    assert "lateness applies to event time" in problems["lateness"]


def test_a_join_that_drops_timeouts_has_no_unread_timeout_port() -> None:
    from flowengine import validate_loaded
    from flowstore.loader import parse_flow_lenient

    text = BAD_KEYED.replace("{id: j, type: join, inputs: [a], config: {key: id}}",
                             "{id: j, type: join, inputs: [a, w], config: {key: id, "
                             "timeout: drop}}")
    loaded, problems = parse_flow_lenient(text, "f.yaml")
    result = validate_loaded(loaded, problems)
    unread = {(i.node, i.port) for i in result.warnings if i.code == "unused_output"}
    assert ("j", "timeout") not in unread and ("w", "late") in unread
    assert any(i.path == "spec.processors[3].partition_by" and "no effect" in i.message
               for i in result.warnings)


@pytest.mark.parametrize("aggregate", [
    {"n": "count", "m": "count"},
    {"n": "count", "total": "sum(v)", "avg": "avg(v)", "all": "collect(v)",
     "first": "first(v)", "last": "last(v)", "seen": "count(get(w, null))"},
    {"hi": "max(v)", "n": "count"},  # (min/max: not grouped, each event on its own)
])
@pytest.mark.parametrize("kind", [{"size": 60}, {"kind": "sliding", "size": 60, "slide": 20}])
def test_a_frame_at_processing_time_is_taken_as_its_events_one_by_one(aggregate, kind) -> None:
    """Frames accumulated per key first, then put in their windows: the same windows and
    counts as each event on its own; a frame stops at the first event that fails."""
    events = [{"k": i % 3, "v": i, **({"w": 1} if i % 2 else {})} for i in range(50)]
    events[37] = {"k": 1, "v": "x"}  # sum and avg fail on it, max after numbers too
    config = {**kind, "key": "k", "aggregate": aggregate}
    framed, single = (Window(WindowConfig.model_validate(config), Ctx()) for _ in range(2))
    taken = run(framed.process_batch("in", events))
    failing = "count" not in aggregate.get("m", "")
    assert taken == (37 if failing else 50)
    for event in events[:taken]:
        run(single.process("in", event))
    assert framed.held() == single.held()

    def comparable(window: Window) -> dict:  # (the start names: the frame's time)
        return {k: sorted((w["n"], w["acc"]) for w in wins.values())
                for k, wins in window.windows.open.items()}

    assert comparable(framed) == comparable(single)
