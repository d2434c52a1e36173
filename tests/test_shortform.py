"""The short form of a flow file (source, process, sink in a line) and ``code:`` beside
``type:``: loaded as the long form, problems told with the file's paths and lines."""

from __future__ import annotations

import textwrap

from flowengine import validate_loaded
from flowstore.loader import parse_flow, parse_flow_lenient
from flowstore.shortform import flow_name

SHORT = textwrap.dedent("""\
    source:
      type: custom
      code: |
        def events():
            yield {"data": "hello"}
    process:
      - type: transform
        code: |
          def process(event):
              return event
      - type: filter
        config: {where: "data != ''"}
    sink:
      type: stdout
""")


def issues(text: str, file: str = "flow.yaml") -> list[tuple[int | None, str | None, str]]:
    loaded, problems = parse_flow_lenient(text, file)
    result = validate_loaded(loaded, problems)
    return [(i.line, i.path, i.code) for i in result.errors]


def test_the_short_form_is_a_line_named_after_its_file() -> None:
    loaded = parse_flow(SHORT, "examples/Inline_Short.yaml")
    assert loaded.name == "inline-short"
    assert [(n.id, n.role, n.type) for n in loaded.spec.nodes] == [
        ("source", "source", "custom"), ("process-1", "processor", "custom"),
        ("process-2", "processor", "filter"), ("sink", "sink", "stdout")]
    assert [(c.from_, c.to) for c in loaded.spec.connections] == [
        ("source.out", "process-1.in"), ("process-1.out", "process-2.in"),
        ("process-2.out", "sink.in")]
    assert "def events" in loaded.spec.nodes[0].config["code"]
    assert issues(SHORT) == []


def test_name_id_and_the_long_fields_may_be_given() -> None:
    text = "name: mine\ndelivery: at-most-once\nsource: {id: gen, type: generate}\n" \
           "sink: {type: stdout, replicas: 2}\n"
    loaded = parse_flow(text, "<stdin>")
    assert loaded.name == "mine" and loaded.spec.delivery == "at-most-once"
    assert [(n.id, n.replicas) for n in loaded.spec.nodes] == [("gen", 1), ("sink", 2)]
    assert flow_name("<stdin>") == "flow" and flow_name("__.yaml") == "flow"


def test_problems_point_at_the_short_form_lines() -> None:
    text = SHORT.replace("def events():", "def events(:").replace(
        "type: filter", "type: filtr").replace("sink:\n", "sinc: 1\nsink:\n  inputs: [x]\n")
    assert issues(text) == [
        (3, "source.code", "invalid_config"),
        (11, "process[1].type", "unknown_type"),
        (13, "sinc", "unknown_field"),
        (15, "sink.inputs", "unknown_field"),
    ]
    assert issues("name: Not_A_Name\nsource: {type: generate}\n") == [
        (None, "sink", "missing_field"), (1, "name", "invalid_field")]


def test_code_beside_type_in_the_long_form() -> None:
    text = textwrap.dedent("""\
        apiVersion: flowctl/v1
        kind: Flow
        metadata: {name: long}
        spec:
          sources:
            - id: src
              type: custom
              code: "def events():\\n    yield 1\\n"
          sinks:
            - id: out
              type: custom
              inputs: [src]
              code: "def write(:"
        """)
    assert issues(text) == [(13, "spec.sinks[0].code", "invalid_config")]
    loaded = parse_flow(text.replace("def write(:", "def write(e): pass"), "long.yaml")
    assert loaded.spec.nodes[1].config == {"code": "def write(e): pass"}
