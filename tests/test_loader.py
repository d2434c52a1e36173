"""The flow file loader: both accepted shapes, and located errors (never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowstore import FlowFileError, FlowRecord, load_flow, parse_flow
from flowstore.flowfile import flow_file_schema

GOOD = """\
apiVersion: flowctl/v1
kind: Flow
metadata:
  name: orders
  labels: {team: data}
spec:
  delivery: at-least-once
  sources:
    - id: gen
      type: generate
      config: {count: 100}
  processors:
    - id: big
      type: filter
      inputs: [gen]
      config: {where: "n > 10"}
  sinks:
    - id: out
      type: stdout
      inputs: [big.out]
      replicas: 2
      placement: {labels: {zone: a}}
"""


def test_flow_file_normalizes_to_nodes_and_connections() -> None:
    loaded = parse_flow(GOOD, "orders.yaml")
    assert loaded.name == "orders"
    spec = loaded.spec
    assert [(n.id, n.role) for n in spec.nodes] == [
        ("gen", "source"),
        ("big", "processor"),
        ("out", "sink"),
    ]
    assert [(c.from_, c.to) for c in spec.connections] == [
        ("gen.out", "big.in"),
        ("big.out", "out.in"),
    ]
    assert spec.delivery == "at-least-once"
    assert spec.node("out").replicas == 2
    assert spec.node("out").placement.labels == {"zone": "a"}
    assert loaded.source.node_paths["big"] == "spec.processors[0]"
    assert loaded.source.connection_paths[1] == "spec.sinks[0].inputs[0]"
    assert loaded.source.line("spec.sinks[0].inputs[0]") == 20


def test_pipeline_kind_is_accepted() -> None:
    assert parse_flow(GOOD.replace("kind: Flow", "kind: Pipeline")).name == "orders"


def test_canvas_export_is_accepted(tmp_path: Path) -> None:
    canvas = {
        "name": "canvas-flow",
        "nodes": [
            {"id": "a", "type": "generate", "name": "A", "config": {"count": 1}},
            {"id": "b", "type": "stdout", "name": "B", "config": {}},
        ],
        "connections": [
            {
                "source_node_id": "a",
                "source_port": "out",
                "target_node_id": "b",
                "target_port": "in",
            }
        ],
    }
    path = tmp_path / "canvas.json"
    path.write_text(json.dumps(canvas))
    loaded = load_flow(path)
    assert loaded.name == "canvas-flow"
    assert [(c.from_, c.to) for c in loaded.spec.connections] == [("a.out", "b.in")]
    assert loaded.spec.node("a").name == "A"


def test_all_schema_problems_reported_together_with_lines() -> None:
    bad = GOOD.replace("name: orders", "name: Orders_1")
    bad = bad.replace("id: big", "id: big\n      colour: red")
    with pytest.raises(FlowFileError) as err:
        parse_flow(bad, "bad.yaml")
    problems = {p.path: p for p in err.value.problems}
    assert set(problems) == {"metadata.name", "spec.processors[0].colour"}
    assert problems["metadata.name"].line == 4
    assert "not a valid name" in problems["metadata.name"].message
    assert problems["spec.processors[0].colour"].line == 14
    assert "unknown field" in problems["spec.processors[0].colour"].message
    text = str(err.value)
    assert text.startswith("bad.yaml: 2 problem(s)")
    assert "line 14: spec.processors[0].colour: unknown field" in text


def test_delivery_takes_three_modes_and_names_them_when_wrong() -> None:
    loaded = parse_flow(GOOD.replace("at-least-once", "exactly-once"))
    assert loaded.spec.delivery == "exactly-once"
    assert FlowRecord(name="orders", spec=loaded.spec).spec.delivery == "exactly-once"
    with pytest.raises(FlowFileError) as err:
        parse_flow(GOOD.replace("at-least-once", "exactly-twice"), "x.yaml")
    (problem,) = err.value.problems
    assert (problem.path, problem.line) == ("spec.delivery", 7)
    for mode in ("'at-most-once'", "'at-least-once'", "'exactly-once'", "'exactly-twice'"):
        assert mode in problem.message


def test_invalid_yaml_has_a_line() -> None:
    with pytest.raises(FlowFileError) as err:
        parse_flow("apiVersion: flowctl/v1\nspec: [unclosed\nkind: Flow\n", "x.yaml")
    (problem,) = err.value.problems
    assert problem.message.startswith("not valid YAML")
    assert problem.line is not None


@pytest.mark.parametrize("text", ["just a string", "- a\n- b\n", ""])
def test_not_a_flow(text: str) -> None:
    with pytest.raises(FlowFileError, match="not a flow"):
        parse_flow(text, "x.yaml")


def test_wrong_api_version_and_missing_spec() -> None:
    with pytest.raises(FlowFileError) as err:
        parse_flow("apiVersion: v2\nkind: Flow\nmetadata: {name: a}\n", "x.yaml")
    paths = {p.path for p in err.value.problems}
    assert paths == {"apiVersion", "spec"}


def test_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(FlowFileError, match="file not found"):
        load_flow(tmp_path / "nope.yaml")
    p = tmp_path / "bad.json"
    p.write_text('{"name": "x",\n "nodes": [}')
    with pytest.raises(FlowFileError, match="not valid JSON") as err:
        load_flow(p)
    assert err.value.problems[0].line == 2


def test_record_json_round_trip_is_one_compact_line() -> None:
    spec = parse_flow(GOOD).spec
    record = FlowRecord(name="orders", spec=spec)
    raw = record.to_json()
    assert b"\n" not in raw and b": " not in raw
    data = json.loads(raw)
    assert {"name", "spec", "state", "revision", "created_at", "updated_at"} <= set(data)
    assert data["state"] == "not_deployed"
    assert data["spec"]["connections"][0] == {"from": "gen.out", "to": "big.in"}
    assert "kv_revision" not in data
    again = FlowRecord.from_json(raw)
    assert again == record


def test_schema_export_names_the_sections() -> None:
    schema = flow_file_schema()
    assert schema["title"] == "flowctl flow"
    text = json.dumps(schema)
    for word in ("sources", "processors", "sinks", "placement", "restart_policy", "at-least-once"):
        assert word in text


def test_a_broken_frame_is_stood_in_for_so_the_nodes_are_still_checked() -> None:
    """apiVersion, kind, metadata and spec that fail the schema are reported, and the
    nodes are checked all the same (one pass); no message names the stand-in name."""
    from flowengine import validate_loaded
    from flowstore.loader import parse_flow_lenient
    from flowstore.repair import STAND_IN_NAME

    text = ("apiVersion: v2\nkind: Flw\nspec:\n  sources:\n"
            "    - {id: gen, type: generat}\n"
            "    - {id: Bad, type: generate}\n"
            "  sinks:\n    - {id: out, type: stdout, inputs: [gen, Bad]}\n")
    loaded, problems = parse_flow_lenient(text, "x.yaml")
    assert loaded is not None and loaded.name == ""
    result = validate_loaded(loaded, problems)
    assert [(i.code, i.path, i.line) for i in result.errors] == [
        ("invalid_field", "apiVersion", 1), ("missing_field", "metadata", 1),
        ("invalid_field", "kind", 2), ("unknown_type", "spec.sources[0].type", 5),
        ("invalid_field", "spec.sources[1].id", 6)]
    assert STAND_IN_NAME not in str(result.model_dump())
    named, _ = parse_flow_lenient(text.replace("spec:", "metadata: {name: Bad_Name}\nspec:"))
    assert named is not None and named.name == "Bad_Name"
