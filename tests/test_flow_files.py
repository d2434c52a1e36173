"""Flow files as users bring them: problems reported in one pass with their lines (also as
JSON), relative paths resolving against the flow file, external nodes written the short
way, and pipeline files of the Go flowctl loading with a note for what is not honoured.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from flowengine import validate_loaded
from flowstore.loader import parse_flow_lenient
from flowstore.paths import resolve_paths
from tests.programs.cli_helpers import flowctl, ok, startup_baseline

BROKEN = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: typos, descripton: a typo}
spec:
  sources:
    - id: gen
      type: generate
      config: {cuont: 3}
  processors:
    - id: t
      type: transfrom
      inputs: [gen]
      inptus: [x]
    - id: py
      type: python
      inputs: [t]
      config: {}
  sinks:
    - id: out
      type: stdout
      inputs: [py, nowhere]
"""


def test_every_kind_of_problem_in_one_pass_as_json(tmp_path: Path) -> None:
    flow = tmp_path / "typos.yaml"
    flow.write_text(BROKEN)
    result = flowctl("validate", str(flow), "-o", "json")
    assert result.returncode == 1, result.stderr
    errors = json.loads(result.stdout)["errors"]
    found = {(e["code"], e["path"], e["line"], e["suggestion"]) for e in errors}
    assert ("unknown_field", "metadata.descripton", 3, "did you mean 'description'?") in found
    assert ("unknown_field", "spec.processors[0].inptus", 13, "did you mean 'inputs'?") in found
    assert ("invalid_config", "spec.sources[0].config.cuont", 8,
            "did you mean 'count'?") in found
    assert ("unknown_type", "spec.processors[0].type", 11,
            "did you mean 'transform'?") in found
    assert any(e["code"] == "unknown_node" and e["line"] == 21 for e in errors)
    python = next(e for e in errors if e["path"] == "spec.processors[1].config")
    assert python["message"].endswith("set exactly one of 'function' or 'code'")
    assert not any("Value error" in e["message"] for e in errors)  # no library prefixes
    assert [e["line"] for e in errors] == sorted(e["line"] for e in errors)
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("spec: [\n")
    data = json.loads(flowctl("validate", str(not_yaml), "-o", "json").stdout)
    assert [e["code"] for e in data["errors"]] == ["invalid_yaml"]


EVERY_MISTAKE = """\
apiVersion: flowctl/v1
kind: Flow
metadata:
  name: Bad_Name
spec:
  sources:
    - id: gen
      type: generat
      confg: {rate: 5}
    - id: tick
      type: generate
      replicas: two
      config: {count: 3, rat: 4}
    - id: Bad_Id
      type: generate
  processors:
    - id: up
      type: transform
      inputs: [gen, tick, nowhere, Bad_Id]
      config: {set: {value: "seq *"}}
  sinks:
    - id: out
      type: stdot
      inputs: [up]
"""


def test_every_mistake_of_a_file_in_one_run_whatever_the_first(tmp_path: Path) -> None:
    """An invalid flow name, unknown fields and wrong types no longer stop the pass: the
    types, configs and graph are checked too, in file order, through validate, apply -f
    and run alike (they share the loader)."""
    flow = tmp_path / "mistakes.yaml"
    flow.write_text(EVERY_MISTAKE)
    result = flowctl("validate", str(flow), "-o", "json")
    assert result.returncode == 1, result.stderr
    errors = json.loads(result.stdout)["errors"]
    found = [(e["code"], e["path"], e["line"]) for e in errors]
    expected = [
        ("invalid_field", "metadata.name", 4),
        ("unknown_type", "spec.sources[0].type", 8),
        ("unknown_field", "spec.sources[0].confg", 9),
        ("invalid_field", "spec.sources[1].replicas", 12),
        ("invalid_config", "spec.sources[1].config.rat", 13),
        ("invalid_field", "spec.sources[2].id", 14),
        ("unknown_node", "spec.processors[0].inputs[2]", 19),  # nowhere, not Bad_Id
        ("invalid_config", "spec.processors[0].config.set.value", 20),
        ("unknown_type", "spec.sinks[0].type", 23),
    ]
    assert found == expected
    assert "Bad_Id" not in " ".join(e["message"] for e in errors if e["code"] == "unknown_node")
    for command in (["apply", "-f", str(flow), "--nats-url", "nats://127.0.0.1:1"],
                    ["run", str(flow), "--nats-url", "nats://127.0.0.1:1"]):
        shown = flowctl(*command)
        assert shown.returncode == 1 and "Traceback" not in shown.stderr, command
        assert "flow 'Bad_Name' is not valid (9 error(s))" in shown.stderr, command
        assert all(f"line {line}: {path}: " in shown.stderr for _, path, line in expected)


def test_relative_paths_resolve_against_the_flow_file(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "shout.py").write_text("def shout(event):\n"
                                      "    event['loud'] = event['greeting'].upper()\n"
                                      "    return event\n")
    (project / "flow.yaml").write_text(textwrap.dedent("""\
        apiVersion: flowctl/v1
        kind: Flow
        metadata: {name: relative}
        spec:
          sources:
            - {id: gen, type: generate, config: {count: 3, template: {greeting: hi}}}
          processors:
            - {id: loud, type: python, inputs: [gen], config: {function: "shout:shout"}}
          sinks:
            - {id: out, type: file, inputs: [loud], config: {path: out/events.jsonl}}
        """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = flowctl("run", "../project/flow.yaml", "--until-done", "--timeout", "60",
                     cwd=elsewhere, timeout=90)
    assert result.returncode == 0, result.stderr
    lines = (project / "out" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["loud"] for line in lines] == ["HI"] * 3
    assert not (elsewhere / "out").exists()
    warned = flowctl("validate", str(project / "flow.yaml").replace("flow.yaml", "x.yaml"))
    assert warned.returncode == 1  # (a missing file is an error, not a warning)
    (project / "flow.yaml").write_text((project / "flow.yaml").read_text()
                                       .replace("shout:shout", "nothere:shout"))
    missing = ok(flowctl("validate", str(project / "flow.yaml"))).stdout
    assert "module nothere is not in" in missing and "[path_not_found]" in missing
    # Where the flow runs on this machine, a module not found here is an error: nothing
    # starts (an unreachable --nats-url shows nothing was even connected to).
    for command in (["run", "flow.yaml", "--until-done"], ["dev", "flow.yaml"],
                    ["up", "-f", "flow.yaml", "--nats-url", "nats://127.0.0.1:1"]):
        refused = flowctl(*command, cwd=project)
        assert refused.returncode == 1, (command, refused.stderr)
        assert "node 'loud': module nothere is not in" in refused.stderr, command
        assert "[module_not_found]" in refused.stderr and "Traceback" not in refused.stderr
    warned = flowctl("apply", "-f", "flow.yaml", "--nats-url", "nats://127.0.0.1:1",
                     cwd=project)
    assert warned.returncode == 3 and "warning: " in warned.stderr  # checked, then NATS


def test_external_nodes_the_short_way(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        apiVersion: flowctl/v1
        kind: Flow
        metadata: {name: short}
        spec:
          sources:
            - {id: feed, image: "myorg/feed:1"}
          processors:
            - {id: work, command: [python3, worker.py, --fast], args: [--verbose],
               inputs: [feed]}
            - {id: bad, type: worker, command: "python3 worker.py", inputs: [work]}
          sinks:
            - {id: out, type: stdout, inputs: [bad]}
        """)
    loaded, problems = parse_flow_lenient(text, "short.yaml")
    assert loaded is not None and problems == []
    nodes = {n.id: n for n in resolve_paths(loaded.spec, tmp_path).nodes}
    assert (nodes["feed"].type, nodes["feed"].kind) == ("external", "container")
    assert (nodes["work"].command, nodes["work"].args) == ("python3",
                                                           ["worker.py", "--fast", "--verbose"])
    assert nodes["work"].working_dir == str(tmp_path)  # args resolve next to the flow file
    result = validate_loaded(loaded, problems)
    assert result.codes() == ["command_with_arguments"]
    assert "args: [worker.py]" in (result.errors[0].suggestion or "")


GO_PIPELINE = """\
apiVersion: flowctl/v1
kind: Pipeline
metadata:
  name: go-pipeline
  namespace: default
  annotations: {owner: data-team}
spec:
  description: from the Go flowctl
  driver: kubernetes
  sources:
    - id: gen
      image: myorg/gen@v1.0.0
      health_check: /healthz
      health_port: 8080
      restart_policy: no
      volumes:
        - {name: data, host_path: ./data, container_path: /data, readonly: true}
      ports: ["8080:8080"]
  processors:
    - id: enrich
      type: enricher@v1.0.0
      command: [python3, enrich.py]
      inputs: [gen]
  sinks:
    - {id: out, type: stdout, inputs: [enrich]}
  pipelines:
    - {id: metrics, command: [./metrics.sh]}
"""


def test_a_go_flowctl_pipeline_file_loads_with_notes(tmp_path: Path) -> None:
    loaded, problems = parse_flow_lenient(GO_PIPELINE, "pipeline.yaml")
    assert loaded is not None
    assert {p.severity for p in problems} == {"warning"}
    assert sorted((p.path, p.line) for p in problems) == [
        ("metadata.namespace", 5), ("spec.driver", 9), ("spec.pipelines[0]", 27)]
    spec = resolve_paths(loaded.spec, tmp_path)
    nodes = {n.id: n for n in spec.nodes}
    assert spec.description == "from the Go flowctl"
    assert spec.annotations == {"owner": "data-team"}
    gen = nodes["gen"]
    assert (gen.restart_policy, gen.health_check, gen.volumes) == (
        "never", "/healthz", [f"{tmp_path / 'data'}:/data:ro"])
    assert [(p.container_port, p.host_port) for p in gen.ports] == [(8080, 8080)]
    assert nodes["metrics"].role == "source" and nodes["metrics"].command == \
        str(tmp_path / "metrics.sh")
    result = validate_loaded(loaded, problems)
    assert result.ok, result.errors  # an unregistered versioned type is fine for a program
    flow = tmp_path / "pipeline.yaml"
    flow.write_text(GO_PIPELINE.replace("type: stdout", "type: stdout@v2"))
    shown = flowctl("validate", str(flow))
    assert shown.returncode == 1 and "unknown component type 'stdout@v2'" in shown.stdout


def test_hostile_files_are_refused_quickly(tmp_path: Path) -> None:
    import time

    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        laughs.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    files = {
        "bomb.yaml": "\n".join(laughs) + "\n",
        "deep.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "deep.json": '{"a": ' + "[" * 5000 + "]" * 5000 + "}\n",
        "merge.yaml": "base: &b {<<: *b}\n",  # a self-referential merge key
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        started = time.monotonic()
        result = flowctl("validate", str(tmp_path / name), "-o", "json")
        took = time.monotonic() - started
        errors = json.loads(result.stdout)["errors"]
        assert result.returncode == 1 and [e["code"] for e in errors] == ["refused"], name
        if took >= 3:  # (the CLI's own start-up included): on a loaded machine, on top
            assert took < 3 + startup_baseline(), (name, took)  # of it as it is now
        assert "Traceback" not in result.stderr
    applied = flowctl("apply", "-f", str(tmp_path / "bomb.yaml"), "--nats-url",
                      "nats://127.0.0.1:1")
    assert applied.returncode == 1 and "expand to more than 100,000 values" in applied.stderr
    merged = flowctl("apply", "-f", str(tmp_path / "merge.yaml"), "--nats-url",
                     "nats://127.0.0.1:1")
    assert merged.returncode == 1 and "Traceback" not in merged.stderr
    assert "line 1: its YAML alias *b is inside the collection it names" in merged.stderr
