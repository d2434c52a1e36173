"""validate(): one test per issue code, located in the file, with registry metadata only."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from componentmanager.registry import ComponentType, Port
from flowengine import ValidationResult, validate
from flowstore.loader import parse_flow
from flowstore.models import AgentRecord, Connection, FlowSpec, Node, Placement, utcnow
from tests.lifecycle_context import register_test_types


class GenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = 10


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    where: str


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: dict[str, str] = {}


def _routes(config: dict[str, Any]) -> list[str]:
    return list(config.get("routes", {}))


# impl points nowhere: validation must never import or construct a component.
TEST_TYPES = (
    ComponentType("t-gen", "source", "test source", GenConfig, outputs=(Port("out"),),
                  impl="no.such.module:Nope"),
    ComponentType("t-filter", "processor", "test filter", FilterConfig,
                  inputs=(Port("in", required=True),), outputs=(Port("out"),),
                  impl="no.such.module:Nope"),
    ComponentType("t-route", "processor", "test route", RouteConfig,
                  inputs=(Port("in", required=True),), dynamic_outputs=True,
                  extra={"outputs_from_config": _routes}, impl="no.such.module:Nope"),
    ComponentType("t-sink", "sink", "test sink", inputs=(Port("in", required=True),),
                  impl="no.such.module:Nope"),
    ComponentType("t-file", "source", "file source", GenConfig, outputs=(Port("out"),)),
    ComponentType("t-file", "sink", "file sink", inputs=(Port("in", required=True),)),
)


@pytest.fixture(autouse=True)
def _test_types(monkeypatch: pytest.MonkeyPatch) -> None:
    register_test_types(monkeypatch, TEST_TYPES)


HEADER = "apiVersion: flowctl/v1\nkind: Flow\nmetadata:\n  name: {name}\nspec:\n"


def check(body: str, name: str = "demo", **kwargs: Any) -> ValidationResult:
    loaded = parse_flow(HEADER.format(name=name) + body)
    return validate(loaded.spec, source=loaded.source, name=loaded.name, **kwargs)


def only(result: ValidationResult, code: str) -> dict[str, Any]:
    found = [i.to_dict() for i in result.issues if i.code == code]
    assert len(found) == 1, result.to_dict()
    return found[0]


GOOD = """\
  sources:
    - {id: gen, type: t-gen}
  processors:
    - {id: keep, type: t-filter, config: {where: "x > 1"}, inputs: [gen]}
  sinks:
    - {id: out, type: t-sink, inputs: [keep]}
"""


def test_a_good_flow_is_valid() -> None:
    result = check(GOOD)
    assert result.to_dict() == {"status": "valid", "errors": [], "warnings": []}
    assert result.ok


def test_unknown_type_suggests_close_names() -> None:
    result = check(GOOD.replace("type: t-filter", "type: t-filtr"))
    issue = only(result, "unknown_type")
    assert issue["node"] == "keep"
    assert issue["path"] == "spec.processors[0].type"
    assert issue["line"] == 9
    assert "'t-filter'" in issue["suggestion"]
    assert result.status == "errors"


def test_invalid_config_one_issue_per_field() -> None:
    result = check(GOOD.replace('config: {where: "x > 1"}', "config: {wher: 1}"))
    issues = [i for i in result.errors if i.code == "invalid_config"]
    assert [i.path for i in issues] == [
        "spec.processors[0].config.where", "spec.processors[0].config.wher",
    ]
    assert "config.where: required field is missing" in issues[0].message
    assert "config.wher: unknown field" in issues[1].message
    assert all(i.line == 9 for i in issues)


def test_unknown_node_with_suggestion() -> None:
    issue = only(check(GOOD.replace("inputs: [gen]", "inputs: [gne]")), "unknown_node")
    assert issue["path"] == "spec.processors[0].inputs[0]"
    assert issue["node"] == "keep"
    assert "'gen'" in issue["suggestion"]


def test_unknown_port() -> None:
    issue = only(check(GOOD.replace("inputs: [gen]", "inputs: [gen.outt]")), "unknown_port")
    assert (issue["node"], issue["port"]) == ("gen", "outt")
    assert "'out'" in issue["suggestion"]


def test_wrong_port_direction_both_ways() -> None:
    issue = only(check(GOOD.replace("inputs: [keep]", "inputs: [keep.in]")),
                 "wrong_port_direction")
    assert (issue["node"], issue["port"]) == ("keep", "in")
    assert issue["path"] == "spec.sinks[0].inputs[0]"
    assert "input port, used here as an output" in issue["message"]
    spec = FlowSpec(
        nodes=[Node(id="gen", type="t-gen"), Node(id="keep", type="t-filter",
                                                 config={"where": "x"})],
        connections=[Connection(from_="gen.out", to="keep.out")],
    )
    issue = only(validate(spec), "wrong_port_direction")
    assert (issue["node"], issue["port"], issue["path"]) == ("keep", "out", "connections[0]")
    assert issue["line"] is None


def test_missing_required_input() -> None:
    result = check(GOOD.replace("inputs: [keep]", "inputs: []"))
    issue = only(result, "missing_required_input")
    assert (issue["node"], issue["port"], issue["path"]) == ("out", "in", "spec.sinks[0]")


def test_source_with_inputs() -> None:
    spec = FlowSpec(
        nodes=[Node(id="a", type="t-gen"), Node(id="b", type="t-gen"),
               Node(id="c", type="t-sink")],
        connections=[Connection(from_="a.out", to="b.in"), Connection(from_="b.out", to="c.in")],
    )
    assert only(validate(spec), "source_with_inputs")["node"] == "b"


def test_sink_used_as_upstream() -> None:
    body = GOOD + "    - {id: more, type: t-sink, inputs: [out]}\n"
    issue = only(check(body), "sink_with_outputs")
    assert issue["node"] == "out"
    assert issue["path"] == "spec.sinks[1].inputs[0]"


def test_role_mismatch() -> None:
    body = GOOD.replace("  sinks:\n    - {id: out, type: t-sink, inputs: [keep]}\n", "")
    body = body.replace("processors:\n", "processors:\n    - {id: out, type: t-sink, "
                        "inputs: [keep]}\n")
    issue = only(check(body), "role_mismatch")
    assert issue["node"] == "out"
    assert issue["suggestion"] == "move it to spec.sinks"


def test_cycle() -> None:
    body = GOOD.replace("inputs: [gen]", "inputs: [gen, back]")
    body = body.replace("  sinks:\n", "    - {id: back, type: t-filter, config: {where: y}, "
                        "inputs: [keep]}\n  sinks:\n")
    issue = only(check(body), "cycle")
    assert "keep -> back -> keep" in issue["message"]
    assert issue["path"] == "spec.processors[0].inputs[1]"


def test_self_loop_is_a_cycle() -> None:
    issue = only(check(GOOD.replace("inputs: [gen]", "inputs: [gen, keep]")), "cycle")
    assert "keep -> keep" in issue["message"]


def test_duplicate_id() -> None:
    issue = only(check(GOOD + "    - {id: keep, type: t-sink, inputs: [keep]}\n"),
                 "duplicate_id")
    assert issue["path"] == "spec.sinks[1]"
    assert "spec.processors[0]" in issue["message"]


@pytest.mark.parametrize("inputs", ["[gen.dlq]", "[gen, keep.dlq]"])
def test_reserved_port_name(inputs: str) -> None:
    issue = only(check(GOOD.replace("inputs: [gen]", f"inputs: {inputs}")), "reserved_name")
    assert issue["port"] == "dlq"


def test_reserved_flow_name() -> None:
    issue = only(check(GOOD, name="logs"), "reserved_name")
    assert issue["path"] == "metadata.name"
    assert issue["line"] == 4


def test_route_configured_port_named_dlq_is_reserved() -> None:
    spec = FlowSpec(
        nodes=[Node(id="g", type="t-gen"),
               Node(id="r", type="t-route", config={"routes": {"dlq": "x"}})],
        connections=[Connection(from_="g.out", to="r.in")],
    )
    assert only(validate(spec), "reserved_name")["node"] == "r"


def test_unused_output_is_a_warning() -> None:
    body = GOOD + "    - {id: side, type: t-sink, inputs: [gen]}\n"
    body = body.replace("inputs: [keep]", "inputs: [gen]")
    result = check(body)
    issue = only(result, "unused_output")
    assert (issue["severity"], issue["node"], issue["port"]) == ("warning", "keep", "out")
    assert result.status == "warnings"
    assert result.ok


def test_route_only_configured_ports_count_and_any_port_is_accepted() -> None:
    body = """\
  sources:
    - {id: gen, type: t-gen}
  processors:
    - {id: r, type: t-route, config: {routes: {big: "x > 9", small: "x < 1"}}, inputs: [gen]}
  sinks:
    - {id: b, type: t-sink, inputs: [r.big]}
    - {id: o, type: t-sink, inputs: [r.other]}
"""
    result = check(body)
    assert [(i.code, i.port) for i in result.issues] == [("unused_output", "small")]


def test_disconnected_node_is_a_warning() -> None:
    result = check(GOOD + "    - {id: lonely, type: t-sink}\n")
    assert only(result, "disconnected_node")["node"] == "lonely"
    assert only(result, "missing_required_input")["node"] == "lonely"


def test_duplicate_connection_is_a_warning() -> None:
    result = check(GOOD.replace("inputs: [gen]", "inputs: [gen, gen.out]"))
    issue = only(result, "duplicate_connection")
    assert issue["path"] == "spec.processors[0].inputs[1]"
    assert result.status == "warnings"


def test_unsatisfiable_placement_only_with_agents() -> None:
    body = GOOD.replace("{id: out, type: t-sink,", "{id: out, type: t-sink, "
                        "placement: {labels: {team: data}},")
    assert check(body).status == "valid"
    web = AgentRecord(name="w1", host="h", pid=1, labels={"team": "web"}, version="0",
                      started_at=utcnow(), instance="i")
    result = check(body, agents=[web])
    issue = only(result, "unsatisfiable_placement")
    assert issue["message"] == "node 'out': no live agent matches placement team=data"
    assert issue["path"] == "spec.sinks[0].placement"
    assert result.status == "warnings"
    nobody = check(GOOD, agents=[])
    assert [(i.node, i.message) for i in nobody.warnings] == [
        (n, f"node '{n}': no live agent") for n in ("gen", "keep", "out")
    ]


def test_external_program_with_unregistered_type_is_accepted() -> None:
    body = GOOD.replace("{id: keep, type: t-filter, config: {where: \"x > 1\"},",
                        "{id: keep, type: my-enricher, command: ./enrich,")
    assert check(body).status == "valid"


def test_canvas_export_paths() -> None:
    loaded = parse_flow(
        '{"name": "c", "nodes": [{"id": "g", "type": "t-gen"}, {"id": "s", "type": "t-snk"}],'
        ' "connections": [{"source_node_id": "g", "target_node_id": "s"}]}'
    )
    result = validate(loaded.spec, source=loaded.source)
    assert only(result, "unknown_type")["path"] == "nodes[1].type"


def test_all_problems_reported_together_and_issue_shape() -> None:
    body = GOOD.replace("type: t-filter", "type: nope").replace("inputs: [keep]",
                                                                "inputs: [ghost]")
    result = check(body)
    assert set(result.codes()) >= {"unknown_type", "unknown_node"}
    assert set(result.errors[0].to_dict()) == {
        "code", "severity", "node", "port", "message", "suggestion", "path", "line",
    }
    assert "[unknown_type]" in str(result.errors[0])


def test_a_lone_node_is_only_disconnected_not_also_unused() -> None:
    spec = FlowSpec(nodes=[Node(id="g", type="t-gen", placement=Placement(agent="a1"))])
    assert validate(spec).codes() == ["disconnected_node"]


def test_a_source_and_a_sink_may_share_a_type_name() -> None:
    body = GOOD.replace("{id: gen, type: t-gen}", "{id: gen, type: t-file, config: {count: 1}}")
    body = body.replace("{id: out, type: t-sink,", "{id: out, type: t-file,")
    assert check(body).status == "valid"
    issue = only(check(GOOD.replace("type: t-filter, config: {where: \"x > 1\"}",
                                    "type: t-file")), "role_mismatch")
    assert issue["message"] == (
        "node 'keep': type 't-file' is a sink or source, but it is listed under processors")
    assert issue["suggestion"] == "move it to spec.sinks or move it to spec.sources"


def test_canvas_node_whose_shared_type_its_connections_cannot_tell() -> None:
    spec = FlowSpec(nodes=[Node(id="f", type="t-file")])
    issue = only(validate(spec), "ambiguous_type")
    assert issue["message"] == (
        "node 'f': type 't-file' exists as sink and source; its connections do not tell which")
    connected = FlowSpec(
        nodes=[Node(id="f", type="t-file"), Node(id="s", type="t-sink")],
        connections=[Connection(from_="f.out", to="s.in")],
    )
    assert validate(connected).status == "valid"


# -- delivery: exactly-once ------------------------------------------------------------------

EXACTLY_ONCE = """\
  delivery: {delivery}
  sources:
    - {{id: gen, type: t-gen}}
  sinks:
{sinks}"""


def exactly_once(sinks: str, delivery: str = "exactly-once") -> ValidationResult:
    return check(EXACTLY_ONCE.format(delivery=delivery, sinks=sinks))


def test_exactly_once_refuses_a_stdout_sink() -> None:
    result = exactly_once("    - {id: out, type: stdout, inputs: [gen]}\n")
    issue = only(result, "not_exactly_once")
    assert (issue["severity"], issue["node"]) == ("error", "out")
    assert (issue["path"], issue["line"]) == ("spec.sinks[0].type", 10)
    assert "cannot undo what it printed" in issue["message"]
    assert "delivery: at-least-once" in issue["suggestion"]
    assert result.status == "errors"


def test_exactly_once_refuses_a_nats_sink_without_its_stream() -> None:
    result = exactly_once("    - {id: pub, type: nats, inputs: [gen],\n"
                          "       config: {subject: orders.done}}\n")
    issue = only(result, "not_exactly_once")
    assert (issue["node"], issue["path"], issue["line"]) == ("pub", "spec.sinks[0].config", 11)
    assert "'orders.done'" in issue["message"]
    assert "config.stream" in issue["suggestion"]
    assert not result.ok



def test_exactly_once_accepts_a_nats_sink_that_names_its_stream() -> None:
    sink = "    - {id: pub, type: nats, inputs: [gen], config: {subject: o.done%s}}\n"
    assert exactly_once(sink % ", stream: ORDERS").status == "valid"
    assert only(exactly_once(sink % ""), "not_exactly_once")["node"] == "pub"


@pytest.mark.parametrize(("field", "what"), [("command: ./sink", "program"),
                                             ("image: acme/sink:1", "container")])
def test_exactly_once_refuses_programs_and_containers(field: str, what: str) -> None:
    result = exactly_once(f"    - {{id: ext, {field}, inputs: [gen]}}\n")
    issue = only(result, "not_exactly_once")
    assert issue["node"] == "ext"
    assert issue["path"] == f"spec.sinks[0].{field.split(':')[0]}"
    assert f"a {what} cannot take part" in issue["message"]
    assert "the SDK is at-least-once" in issue["message"]


def test_exactly_once_refuses_a_program_source_too() -> None:
    sinks = "    - {id: out, type: file, inputs: [gen], config: {path: o.jsonl}}\n"
    body = EXACTLY_ONCE.format(delivery="exactly-once", sinks=sinks).replace(
        "{id: gen, type: t-gen}", "{id: gen, command: ./produce}")
    issue = only(check(body), "not_exactly_once")
    assert (issue["node"], issue["path"]) == ("gen", "spec.sources[0].command")


def test_exactly_once_warns_about_an_http_sink() -> None:
    result = exactly_once("    - {id: post, type: http, inputs: [gen],\n"
                          "       config: {url: 'http://receiver/events'}}\n")
    issue = only(result, "exactly_once_receiver")
    assert (issue["severity"], issue["node"]) == ("warning", "post")
    assert (issue["path"], issue["line"]) == ("spec.sinks[0]", 10)
    assert "the receiver must de-duplicate by the Idempotency-Key header" in issue["message"]
    assert (result.status, result.ok) == ("warnings", True)


def test_exactly_once_with_file_and_kv_sinks_is_valid() -> None:
    assert exactly_once("    - {id: out, type: file, inputs: [gen], config: {path: o.jsonl}}\n"
                        "    - {id: kv, type: kv, inputs: [gen], config: {bucket: b, key: k}}\n"
                        ).status == "valid"


def test_exactly_once_refuses_a_sink_type_that_declares_nothing() -> None:
    issue = only(exactly_once("    - {id: out, type: t-sink, inputs: [gen]}\n"),
                 "not_exactly_once")
    assert (issue["node"], issue["path"]) == ("out", "spec.sinks[0].type")
    assert "exactly_once='transactional'" in issue["suggestion"]


ALL_SINKS = """\
    - {id: out, type: stdout, inputs: [gen]}
    - {id: pub, type: nats, inputs: [gen], config: {subject: orders.done}}
    - {id: post, type: http, inputs: [gen], config: {url: 'http://receiver/events'}}
    - {id: ext, command: ./sink, inputs: [gen]}
    - {id: box, image: acme/sink:1, inputs: [gen]}
"""


@pytest.mark.parametrize("delivery", ["at-least-once", "at-most-once"])
def test_the_same_sinks_stay_valid_without_exactly_once(delivery: str) -> None:
    assert exactly_once(ALL_SINKS, delivery).to_dict() == {
        "status": "valid", "errors": [], "warnings": []}
    refused = exactly_once(ALL_SINKS)
    assert [(i.code, i.node) for i in refused.issues] == [
        ("not_exactly_once", n) for n in ("out", "pub", "ext", "box")
    ] + [("exactly_once_receiver", "post")]
