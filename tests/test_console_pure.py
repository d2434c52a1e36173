"""The console's pure parts with plain data: a node's figures from its replicas, the
charts' series with each output port's own rate, which lifecycle actions apply, when
dead letters can be replayed, and a stopped replica's rate (0, whatever it measured)."""

from __future__ import annotations

from typing import Any

from console.series import Series, port_rates, sample
from flowengine.deadletters import replay_refusal
from flowengine.results import applicable_actions
from flowstore.figures import node_figures
from flowstore.liveness import current_rate


def replica(node: str, index: int, state: str = "running", out: int = 0, **extra: Any
            ) -> dict[str, Any]:
    return {"flow": "f", "node": node, "replica": index, "state": state,
            "rate": {"in": 10.0, "out": 8.0}, "lag": {"in": 4},
            "counters": {"in": 100, "out": out, "filtered": 2, "errors": 1,
                         "out_ports": {"out": out}}, **extra}


def test_a_node_sums_its_replicas_and_gives_the_reason_of_a_failed_one() -> None:
    figures = node_figures([replica("p", 0, out=50),
                            replica("p", 1, "failed", out=30, last_error="boom")])
    assert figures == {"state": "failed 1/2", "reason": "boom", "replicas": 2,
                       "rate_in": 20.0, "rate_out": 16.0, "lag": 4, "in": 200, "out": 80,
                       "filtered": 4, "errors": 2, "dropped": 0, "replayed": 0,
                       "out_ports": {"out": 80}}
    degraded = replica("p", 0, "degraded", reason="dropping: overload", last_error="old")
    assert node_figures([degraded])["reason"] == "dropping: overload"
    assert node_figures([replica("p", 0, last_error="old")])["reason"] is None  # running


def test_an_output_port_rate_is_its_counter_growth_over_the_last_samples() -> None:
    series = Series(keep_s=10)
    first = series.add(100.0, [replica("gen", 0, out=0), replica("sink", 0)])["f"]
    assert first["ports"] == {"gen.out": 0.0, "sink.out": 0.0}  # nothing to compare yet
    for t in range(1, 6):
        latest = series.add(100.0 + t, [replica("gen", 0, out=40 * t), replica("sink", 0)])
    assert latest["f"]["ports"]["gen.out"] == 40.0  # 4 samples back: 160 in 4 s
    assert latest["f"]["nodes"]["gen"]["out"] == 200
    assert [s["t"] for s in series.of("f")] == [100.0, 101.0, 102.0, 103.0, 104.0, 105.0]
    series.add(111.0, [replica("gen", 0, out=200)])  # older than 10 s falls out
    assert series.of("f")[0]["t"] == 101.0
    series.add(112.0, [])  # no status records any more: the flow is forgotten
    assert series.of("f") == []


def test_a_counter_that_went_back_counts_as_no_events() -> None:
    before = sample(0.0, [replica("gen", 0, out=500)])
    assert port_rates(before, sample(2.0, [replica("gen", 0, out=10)])) == {"gen.out": 0.0}


def test_buttons_apply_by_the_desired_state() -> None:
    assert applicable_actions("not_deployed") == ["deploy"]
    assert applicable_actions("deployed_stopped") == ["start", "undeploy"]
    assert applicable_actions("running") == ["stop"]


def test_dead_letters_are_replayed_only_where_someone_takes_them() -> None:
    assert "deploy it first" in replay_refusal("f", "not_deployed", "at-least-once")
    assert replay_refusal("f", "deployed_stopped", "at-least-once") is None  # they wait
    assert "start it first" in replay_refusal("f", "deployed_stopped", "at-most-once")
    assert replay_refusal("f", "running", "at-most-once") is None


def test_a_replica_that_is_not_up_moves_nothing() -> None:
    measured = {"in": 20.0, "out": 20.0}
    for state in ("stopped", "failed", "completed", "pending"):
        assert current_rate(state, measured) == {"in": 0.0, "out": 0.0}
    for state in ("starting", "running", "degraded"):
        assert current_rate(state, measured) == measured
