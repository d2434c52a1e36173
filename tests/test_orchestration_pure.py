"""Orchestrated programs, the pure parts: depends_on (validated, translated, waited for,
stopped in reverse), binary, ports, --orchestrator, liveness verdicts. Plain data, ms."""

from __future__ import annotations

from pathlib import Path

import pytest

from componentmanager.agent.reconcile import stop_groups
from componentmanager.runners.container import network_options
from componentmanager.runners.dependencies import waiting_for
from componentmanager.runners.env import component_env, parse_duration
from componentmanager.runners.health import heartbeat_verdict, probe_verdict
from flowengine.stopping import stop_waves
from flowengine.translate import translate
from flowengine.validate import validate_loaded
from flowstore.loader import parse_flow, parse_flow_lenient
from flowstore.models import ComponentConfig, ExternalFields, ReplicaState
from flowstore.paths import resolve_paths

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ttp-pipeline.yaml"

PIPELINE = """\
apiVersion: flowctl/v1
kind: Pipeline
metadata: {name: orch}
spec:
  sources:
    - {id: src, binary: ./src.sh, image: "ex/src:1", health_port: 8088,
       ports: ["50051:50051", {containerPort: 9000}]}
  processors:
    - {id: proc, binary: ./proc.sh, depends_on: [src]}
  sinks:
    - {id: sink, command: python3, args: [sink.py], image: "ex/sink:1",
       depends_on: [proc]}
"""


def load(text: str) -> tuple[object, list[object]]:
    loaded, problems = parse_flow_lenient(text, "flow.yaml")
    return loaded, problems


def test_programs_wired_by_their_environment_are_valid() -> None:
    loaded, problems = load(PIPELINE)
    result = validate_loaded(loaded, problems)  # type: ignore[arg-type]
    assert (result.errors, result.warnings) == ([], [])  # no inputs, no disconnected
    text = EXAMPLE.read_text()
    result = validate_loaded(*load(text))  # type: ignore[arg-type]
    assert (result.errors, result.warnings) == ([], [])


@pytest.mark.parametrize(("depends", "code", "message"), [
    ("[nope]", "unknown_node", "node 'proc' depends on 'nope', which is not a node"),
    ("[proc]", "unknown_node", "node 'proc' depends on itself"),
])
def test_a_dependency_naming_no_node_is_located(depends: str, code: str, message: str) -> None:
    text = PIPELINE.replace("depends_on: [src]", f"depends_on: {depends}")
    result = validate_loaded(*load(text))  # type: ignore[arg-type]
    assert [(e.code, e.path, e.line) for e in result.errors] == [
        (code, "spec.processors[0].depends_on[0]", 9)]
    assert result.errors[0].message == message


def test_a_dependency_cycle_is_refused_where_it_closes() -> None:
    text = PIPELINE.replace("- {id: src, binary", "- {id: src, depends_on: [sink], binary")
    result = validate_loaded(*load(text))  # type: ignore[arg-type]
    assert [(e.code, e.path) for e in result.errors] == [
        ("cycle", "spec.processors[0].depends_on[0]")]  # proc -> src closes it
    assert "depends_on has a cycle: src -> sink -> proc -> src" in result.errors[0].message


def test_binary_is_the_program_and_both_forms_are_kept(tmp_path: Path) -> None:
    spec = resolve_paths(parse_flow(PIPELINE).spec, tmp_path)
    src, proc, sink = spec.nodes
    assert (src.binary, src.image, src.working_dir) == (
        str(tmp_path / "src.sh"), "ex/src:1", str(tmp_path))
    assert [(p.container_port, p.host_port) for p in src.ports] == [(50051, 50051), (9000, None)]
    assert (proc.kind, proc.program) == ("process", str(tmp_path / "proc.sh"))
    assert sink.working_dir is None  # command with an image: the container's entrypoint
    both = "binary: ./x, command: ./y"
    _, problems = load(PIPELINE.replace("binary: ./proc.sh", both))
    assert "binary and command both name the program" in str(problems[0])


def test_runs_as_the_orchestrator_asks_when_both_forms_are_there() -> None:
    both = ExternalFields(binary="./src", image="ex/src:1")
    assert [both.runs_as(o) for o in (None, "process", "container")] == [
        "container", "process", "container"]
    program = ExternalFields(command="python3")
    assert [program.runs_as(o) for o in (None, "process", "container")] == ["process"] * 3


def test_translate_carries_dependencies_and_stops_go_in_reverse() -> None:
    spec = parse_flow(PIPELINE).spec
    configs = translate("orch", spec, flow_revision=1, enabled=True)
    sink = configs["orch.sink"]
    assert (sink.depends_on, sink.dependency_depth, sink.inputs) == ({"proc": 1}, 2, {})
    assert (configs["orch.src"].depends_on, configs["orch.src"].dependency_depth) == (None, None)
    assert stop_waves(spec, configs.values()) == [["sink"], ["proc"], ["src"]]
    keys = [("o.src.0", "source", 0), ("o.sink.0", "sink", 2), ("o.proc.0", "processor", 1),
            ("o.plain.0", "sink", 0), ("o.gen.0", "source", 0)]
    assert stop_groups(keys) == [["o.sink.0"], ["o.proc.0"], ["o.src.0", "o.gen.0"],
                                 ["o.plain.0"]]


def test_waiting_for_names_what_is_not_up_yet() -> None:
    states = {"f.a.0": ReplicaState.RUNNING, "f.b.0": ReplicaState.STARTING,
              "f.b.1": ReplicaState.DEGRADED}
    assert waiting_for("f", {"a": 1, "b": 2}, states) == "waiting for b (1/2 up)"
    assert waiting_for("f", {"a": 1}, states) is None
    assert waiting_for("f", {"c": 1}, {}) == "waiting for c (0/1 up)"


def test_liveness_verdicts() -> None:
    url = "http://127.0.0.1:1/health"
    assert probe_verdict(0, "", url) == (None, None)
    assert probe_verdict(1, "no answer", url)[0] == \
        f"unhealthy: health check {url} failed (no answer), 1/3"
    assert probe_verdict(3, "HTTP 500", url)[1] == \
        f"health check {url} failed 3 times in a row (last: HTTP 500)"
    assert heartbeat_verdict(1.0, 1.0) == (None, None)
    assert heartbeat_verdict(2.0, 1.0)[0] == "unhealthy: no heartbeat for 2.0s"
    assert "no heartbeat for 3s (every 1s expected)" in (heartbeat_verdict(3.0, 1.0)[1] or "")
    assert [parse_duration(t, 9.0) for t in ("10s", "500ms", "1m", "2", "x", "0s")] == [
        10.0, 0.5, 60.0, 2.0, 9.0, 9.0]


def cfg(**ext: object) -> ComponentConfig:
    return ComponentConfig(flow="f", node="proc", type="x", kind="container", queue="q",
                           depends_on={"src": 1}, external=ExternalFields(**ext))


def test_containers_share_the_flows_network_or_the_hosts() -> None:
    c = cfg(image="i", ports=[{"containerPort": 50052, "hostPort": 6000},
                              {"containerPort": 53, "protocol": "udp"}])
    assert network_options(c, "nats://127.0.0.1:4222") == {
        "network_mode": "host", "extra_hosts": {"src": "127.0.0.1"}}
    assert network_options(c, "nats://nats.example:4222") == {
        "network": "flowctl-f", "networking_config": {"flowctl-f": {"Aliases": ["proc"]}},
        "ports": {"50052/tcp": 6000, "53/udp": 53}}


def test_the_environment_names_the_endpoint_and_the_heartbeat() -> None:
    env = component_env(cfg(command="x"), 0, {"NATS_URL": "nats://h:4222"}, {}, 2.0)
    assert (env["FLOWCTL_ENDPOINT"], env["COMPONENT_ID"]) == ("nats://h:4222", "proc")
    assert env["FLOWCTL_HEARTBEAT_SUBJECT"] == "flowctl.heartbeat.f.proc.0"
    assert env["FLOWCTL_HEARTBEAT_INTERVAL"] == "2s"
