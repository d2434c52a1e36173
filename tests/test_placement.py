"""place(): replicas -> agents, with plain records and no I/O."""

from __future__ import annotations

from flowstore.models import AgentRecord, ComponentConfig, Placement, utcnow
from flowstore.placement import eligible_agents, place, unplaceable_reason


def agent(name: str, **labels: str) -> AgentRecord:
    return AgentRecord(
        name=name, host="h", pid=1, labels=labels, version="0", started_at=utcnow(),
        instance=f"{name}-i",
    )


def config(node: str, replicas: int = 1, *, flow: str = "f", placement: Placement | None = None,
           assignments: list[str | None] | None = None) -> ComponentConfig:
    return ComponentConfig(
        flow=flow, node=node, type="t", queue=f"flowctl.{flow}.{node}", replicas=replicas,
        placement=placement, assignments=assignments or [],
    )


def test_replicas_of_one_node_spread_over_distinct_agents() -> None:
    result = place([config("a", 3)], [agent("x"), agent("y"), agent("z")])
    assert result.assignments == {"f.a": ["x", "y", "z"]}
    assert result.reasons == {}
    assert result.load == {"x": 1, "y": 1, "z": 1}


def test_more_replicas_than_agents_wrap_around_least_loaded_first() -> None:
    result = place([config("a", 5)], [agent("y"), agent("x")])
    assert result.assignments["f.a"] == ["x", "y", "x", "y", "x"]


def test_least_loaded_agent_first_ties_by_name() -> None:
    result = place([config("a"), config("b"), config("c")], [agent("y"), agent("x")])
    assert result.assignments == {"f.a": ["x"], "f.b": ["y"], "f.c": ["x"]}


def test_existing_assignments_are_kept_when_agent_is_live_and_eligible() -> None:
    cfg = config("a", 2, assignments=["z", "z"])  # both on z: stable, never moved
    result = place([cfg], [agent("x"), agent("z")])
    assert result.assignments["f.a"] == ["z", "z"]
    assert result.changed([cfg]) == []


def test_replicas_of_a_dead_agent_move_and_the_others_stay() -> None:
    cfg = config("a", 3, assignments=["gone", "y", None])
    result = place([cfg], [agent("x"), agent("y")])
    # replica 0 avoids y (it already holds replica 1 of this node); for replica 2 both
    # hold one replica of this node and are equally loaded: name order picks x.
    assert result.assignments["f.a"] == ["x", "y", "x"]
    assert result.changed([cfg]) == ["f.a"]


def test_kept_assignments_count_towards_load_before_new_ones_are_placed() -> None:
    placed = config("a", 2, assignments=["x", "x"])
    new = config("b", 1)
    result = place([new, placed], [agent("x"), agent("y")])
    assert result.assignments == {"f.a": ["x", "x"], "f.b": ["y"]}


def test_assignment_to_an_agent_no_longer_eligible_moves() -> None:
    cfg = config("a", placement=Placement(labels={"team": "data"}), assignments=["x"])
    result = place([cfg], [agent("x", team="web"), agent("y", team="data")])
    assert result.assignments["f.a"] == ["y"]


def test_labels_and_agent_name_restrict_the_candidates() -> None:
    agents = [agent("x", team="data", zone="a"), agent("y", team="data", zone="b"), agent("z")]
    by_label = config("a", 2, placement=Placement(labels={"team": "data"}))
    by_name = config("b", 2, placement=Placement(agent="z"))
    both = config("c", placement=Placement(agent="y", labels={"zone": "b"}))
    result = place([by_label, by_name, both], agents)
    assert result.assignments == {"f.a": ["x", "y"], "f.b": ["z", "z"], "f.c": ["y"]}


def test_no_eligible_agent_leaves_none_with_a_reason() -> None:
    cfg = config("a", 2, placement=Placement(labels={"team": "data"}))
    result = place([cfg, config("b")], [agent("x", team="web")])
    assert result.assignments == {"f.a": [None, None], "f.b": ["x"]}
    assert result.reasons == {
        "f.a": {0: "no live agent matches placement team=data",
                1: "no live agent matches placement team=data"},
    }
    assert result.pending() == [
        ("f.a", 0, "no live agent matches placement team=data"),
        ("f.a", 1, "no live agent matches placement team=data"),
    ]


def test_no_agent_at_all() -> None:
    result = place([config("a")], [])
    assert result.assignments == {"f.a": [None]}
    assert result.reasons == {"f.a": {0: "no live agent"}}


def test_replica_count_changes_truncate_or_extend_the_assignments() -> None:
    agents = [agent("x"), agent("y")]
    shrink = place([config("a", 1, assignments=["y", "x"])], agents)
    assert shrink.assignments["f.a"] == ["y"]
    grow = place([config("a", 3, assignments=["y"])], agents)
    assert grow.assignments["f.a"] == ["y", "x", "x"]


def test_others_count_towards_load_but_are_not_placed() -> None:
    other = config("busy", 2, flow="g", assignments=["x", "x"])
    result = place([config("a")], [agent("x"), agent("y")], others=[other])
    assert result.assignments == {"f.a": ["y"]}
    assert result.load == {"x": 2, "y": 1}


def test_same_input_same_result_whatever_the_order() -> None:
    configs = [config("a", 2), config("b", 3), config("c")]
    agents = [agent("x"), agent("y"), agent("z")]
    one = place(configs, agents)
    two = place(list(reversed(configs)), list(reversed(agents)))
    assert one.assignments == two.assignments


def test_helpers() -> None:
    agents = [agent("y", team="data"), agent("x", team="data"), agent("z")]
    team = Placement(labels={"team": "data"})
    assert [a.name for a in eligible_agents(team, agents)] == ["x", "y"]
    assert [a.name for a in eligible_agents(None, agents)] == ["x", "y", "z"]
    assert unplaceable_reason(team, agents) is None
    assert unplaceable_reason(Placement(agent="w"), agents) == (
        "no live agent matches placement agent=w"
    )
