"""translate(): a flow -> one self-contained ComponentConfig per node, no I/O."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from componentmanager.registry import ComponentType, Port
from flowengine import translate
from flowstore.loader import parse_flow
from flowstore.models import ExternalFields, FlowSpec, consumer_names
from flowstore.streams import earlier_partitions, output_subjects, reads_as_wanted
from tests.lifecycle_context import register_test_types


class GenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = 10
    interval: float = 0.0


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: dict[str, str] = {}


def _routes(config: dict[str, Any]) -> list[str]:
    return list(config.get("routes", {}))


TEST_TYPES = (
    ComponentType("tt-gen", "source", "test source", GenConfig, outputs=(Port("out"),)),
    ComponentType("tt-pass", "processor", "test processor", inputs=(Port("in"),),
                  outputs=(Port("out"),)),
    ComponentType("tt-route", "processor", "test route", RouteConfig, inputs=(Port("in"),),
                  dynamic_outputs=True, extra={"outputs_from_config": _routes}),
    ComponentType("tt-sink", "sink", "test sink", inputs=(Port("in"),)),
    ComponentType("tt-file", "source", "a source named like a sink", GenConfig,
                  outputs=(Port("out"),)),
    ComponentType("tt-file", "sink", "a sink named like a source", inputs=(Port("in"),)),
)


@pytest.fixture(autouse=True)
def _test_types(monkeypatch: pytest.MonkeyPatch) -> None:
    register_test_types(monkeypatch, TEST_TYPES)


FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: orders}
spec:
  delivery: at-least-once
  sources:
    - {id: gen, type: tt-gen, config: {count: 3}}
  processors:
    - {id: split, type: tt-route, replicas: 2, inputs: [gen],
       config: {routes: {big: "x > 9", small: "x < 1"}}}
    - {id: tag, type: my-tagger, command: ./tag, args: [--fast], env: {A: "1"},
       inputs: [split.big, split.big]}
  sinks:
    - {id: out, type: tt-sink, inputs: [tag, split.small], replicas: 3,
       placement: {labels: {team: data}}}
    - {id: box, type: tt-sink, image: "example/sink:1", inputs: [gen]}
"""


def spec() -> FlowSpec:
    return parse_flow(FLOW).spec


def test_one_config_per_node_keyed_flow_dot_node() -> None:
    configs = translate("orders", spec(), flow_revision=4, enabled=False)
    assert list(configs) == ["orders.gen", "orders.split", "orders.tag", "orders.out",
                             "orders.box"]
    for key, cfg in configs.items():
        assert cfg.key == key
        assert cfg.queue == f"flowctl.{key}"
        assert (cfg.flow_revision, cfg.enabled, cfg.assignments) == (4, False, [])
        assert cfg.delivery == "at-least-once"


def test_the_source_config_in_full() -> None:
    gen = translate("orders", spec(), flow_revision=1, enabled=True)["orders.gen"]
    assert gen.model_dump(mode="json", exclude_none=True) == {
        "flow": "orders",
        "node": "gen",
        "type": "tt-gen",
        "role": "source",
        "kind": "inprocess",
        "config": {"count": 3, "interval": 0.0},  # defaults made explicit
        "inputs": {},
        "outputs": {"out": "flowctl.orders.gen.out"},
        "frame_ports": [],  # box, a container without frames: true, reads it
        "queue": "flowctl.orders.gen",
        "replicas": 1,
        "stateful": False,
        "assignments": [],
        "enabled": True,
        "delivery": "at-least-once",
        "flow_revision": 1,
        "downstream": {},  # at-least-once: the stream keeps events, no one waits
    }


def test_inputs_outputs_and_downstream() -> None:
    configs = translate("orders", spec(), flow_revision=1, enabled=False)
    split, tag, out = configs["orders.split"], configs["orders.tag"], configs["orders.out"]
    assert split.inputs == {"in": ["flowctl.orders.gen.out"]}
    assert split.outputs == {"big": "flowctl.orders.split.big",
                             "small": "flowctl.orders.split.small"}
    assert split.downstream == {}  # only sources wait for their downstream
    assert split.frame_ports == ["small"]  # big is read by a program without frames: true
    assert tag.inputs == {"in": ["flowctl.orders.split.big"]}  # the repeat is dropped
    assert out.inputs == {"in": ["flowctl.orders.tag.out", "flowctl.orders.split.small"]}
    assert out.outputs == {}
    assert out.downstream == {}
    assert out.placement is not None and out.placement.labels == {"team": "data"}
    assert out.replicas == 3


def test_external_kinds_carry_their_fields_and_unknown_config_passes_as_is() -> None:
    configs = translate("orders", spec(), flow_revision=1, enabled=False)
    tag, box = configs["orders.tag"], configs["orders.box"]
    assert tag.kind == "process"
    assert tag.external == ExternalFields(command="./tag", args=["--fast"], env={"A": "1"})
    assert tag.outputs == {"out": "flowctl.orders.tag.out"}
    assert tag.config == {}
    assert box.kind == "container"
    assert box.external is not None and box.external.image == "example/sink:1"
    assert configs["orders.gen"].external is None


def test_same_node_ids_in_two_flows_get_distinct_keys_and_subjects() -> None:
    a = translate("a", spec(), flow_revision=1, enabled=False)
    b = translate("a-b", spec(), flow_revision=1, enabled=False)
    assert not set(a) & set(b)
    assert a["a.out"].inputs["in"][0] == "flowctl.a.tag.out"
    assert b["a-b.out"].inputs["in"][0] == "flowctl.a-b.tag.out"


def test_pure_and_deterministic() -> None:
    one = translate("orders", spec(), flow_revision=1, enabled=False)
    two = translate("orders", spec(), flow_revision=1, enabled=False)
    assert {k: v.to_json() for k, v in one.items()} == {k: v.to_json() for k, v in two.items()}


def test_the_role_picks_the_type_when_a_source_and_a_sink_share_a_name() -> None:
    text = FLOW.replace("{id: gen, type: tt-gen, config: {count: 3}}", "{id: gen, type: tt-file}")
    text = text.replace('{id: box, type: tt-sink, image: "example/sink:1",',
                        "{id: box, type: tt-file,")
    configs = translate("orders", parse_flow(text).spec, flow_revision=1, enabled=False)
    gen, box = configs["orders.gen"], configs["orders.box"]
    assert (gen.type, gen.role, gen.config) == ("tt-file", "source", {"count": 10, "interval": 0.0})
    assert (box.type, box.role, box.config, box.outputs) == ("tt-file", "sink", {}, {})
    assert configs["orders.tag"].role == "processor"  # external: from its file section


def test_canvas_nodes_get_their_role_from_their_connections() -> None:
    loaded = parse_flow(
        '{"name": "c", "nodes": [{"id": "a", "type": "tt-file"}, {"id": "b", "type": "tt-pass"},'
        ' {"id": "c", "type": "tt-file"}], "connections": ['
        '{"source_node_id": "a", "target_node_id": "b"},'
        '{"source_node_id": "b", "target_node_id": "c"}]}'
    )
    configs = translate("c", loaded.spec, flow_revision=1, enabled=False)
    assert [cfg.role for cfg in configs.values()] == ["source", "processor", "sink"]


KEYED = """
apiVersion: flowctl/v1
kind: Flow
metadata: {name: shop}
spec:
  sources:
    - {id: orders, type: generate, config: {count: 3}}
    - {id: payments, type: generate, config: {count: 3}}
  processors:
    - {id: match, type: join, inputs: [orders, payments], replicas: 2,
       config: {key: order_id}}
    - {id: per-user, type: transform, inputs: [orders], replicas: 3, partition_by: user}
    - {id: tally, type: window, inputs: [match], config: {size: 1s}}
  sinks:
    - {id: out, type: stdout, inputs: [match, per-user, tally]}
"""


def test_a_join_names_its_inputs_after_its_upstream_nodes_and_partitions_by_key() -> None:
    configs = translate("shop", parse_flow(KEYED).spec, flow_revision=1, enabled=False)
    match = configs["shop.match"]
    assert match.inputs == {"orders": ["flowctl.shop.orders.out.match.2.*"],
                            "payments": ["flowctl.shop.payments.out.match.2.*"]}
    assert (match.partition_by, match.stateful) == ("order_id", True)
    by_user = configs["shop.per-user"]
    assert (by_user.partition_by, by_user.stateful) == ("user", False)
    tally = configs["shop.tally"]  # one replica, no key: nothing to partition
    assert (tally.partition_by, tally.stateful) == (None, True)


def test_producers_partition_for_each_keyed_reader_and_send_whole_only_when_read_whole(
        ) -> None:
    configs = translate("shop", parse_flow(KEYED).spec, flow_revision=1, enabled=False)
    orders, payments = configs["shop.orders"], configs["shop.payments"]
    assert [(r.node, r.key, r.partitions, r.subjects)
            for r in orders.keyed_outputs["out"]] == [
        ("match", "order_id", 2, "flowctl.shop.orders.out.match.2.*"),
        ("per-user", "user", 3, "flowctl.shop.orders.out.per-user.3.*")]
    assert orders.partitioned_only == ["out"]  # both readers keyed: none reads it whole
    assert [r.node for r in payments.keyed_outputs["out"]] == ["match"]
    assert configs["shop.per-user"].inputs == {"in": ["flowctl.shop.orders.out.per-user.3.*"]}
    match = configs["shop.match"]  # feeds a window of one replica: read whole
    assert (match.keyed_outputs, match.partitioned_only) == ({}, [])
    assert configs["shop.tally"].inputs == {"in": ["flowctl.shop.match.out"]}
    stream = output_subjects(list(configs.values()))
    assert "flowctl.shop.orders.out.per-user.>" in stream
    assert consumer_names(configs["shop.per-user"])[1] == (
        "per-user-in-p1of3", "in", ["flowctl.shop.orders.out.per-user.3.1"])


def test_a_producer_run_as_a_program_is_read_whole_by_its_keyed_readers() -> None:
    text = KEYED.replace("{id: orders, type: generate, config: {count: 3}}",
                         "{id: orders, type: gen, command: ./gen}")
    configs = translate("shop", parse_flow(text).spec, flow_revision=1, enabled=False)
    assert configs["shop.per-user"].inputs == {"in": ["flowctl.shop.orders.out"]}
    assert configs["shop.orders"].keyed_outputs == {}


def test_a_repartitioned_consumer_is_handed_the_old_partitions_over() -> None:
    old = ["flowctl.f.p.out.k.1.0", "flowctl.f.p.out.k.3.*", "flowctl.f.q.out"]
    new = ["flowctl.f.p.out.k.2.1"]
    assert [earlier_partitions(s, new) for s in old] == [
        "flowctl.f.p.out.k.1.*", "flowctl.f.p.out.k.3.*", None]
    assert earlier_partitions("flowctl.f.p.out.k.2.0", new) is None  # same count: its own
    handed = [*new, "flowctl.f.p.out.k.1.*"]
    assert reads_as_wanted(handed, new) and reads_as_wanted(new, new)
    assert not reads_as_wanted([*new, "flowctl.f.q.out"], new)
    assert not reads_as_wanted(["flowctl.f.p.out.k.1.*"], new)
