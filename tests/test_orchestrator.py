"""The orchestrator pipeline of the design notes (examples/ttp-pipeline.yaml) through the
real `flowctl run --orchestrator process|container`: three small programs wired to each
other over TCP by their own environment (tests/programs/ttp_*.py, consumer_app.py),
started in dependency order, each once its dependency's /health answered, data flowing,
Ctrl+C stopping them in reverse order with nothing left behind.

The file is run as a copy with free ports (the example's are fixed) and, for the checks,
a ``TRACE_FILE`` where each program notes when it started, first answered /health with
200, and stopped; the programs are copied beside it as the example's relative paths say.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.programs.cli_helpers import (  # noqa: F401  (an autouse fixture)
    EXAMPLES,
    ROOT,
    Flowctl,
    cli_processes_cleaned_up,
    flowctl,
    free_port,
    wait_for,
)

PROGRAMS = ROOT / "tests" / "programs"
PROGRAM_FILES = ("ttp_common.py", "ttp_source.py", "ttp_processor.py", "consumer_app.py")
IMAGES = {"ttp_source.py": "flowctl-example/ttp-source:1",
          "ttp_processor.py": "flowctl-example/ttp-processor:1",
          "consumer_app.py": "flowctl-example/consumer-app:1"}
ORDER = ["source started", "source healthy", "processor started", "processor healthy",
         "consumer started", "consumer healthy"]


def pipeline_copy(tmp_path: Path, out: Path, trace: Path) -> Path:
    """examples/ttp-pipeline.yaml with free ports, TRACE_FILE and OUTPUT_FILE, in a copy of
    the layout its relative paths expect (examples/ beside tests/programs/)."""
    (tmp_path / "tests").mkdir()
    shutil.copytree(PROGRAMS, tmp_path / "tests" / "programs",
                    ignore=lambda d, names: [n for n in names if n not in PROGRAM_FILES])
    text = (EXAMPLES / "ttp-pipeline.yaml").read_text()
    for port in ("50051", "50052", "8088", "8089", "3000"):
        text = text.replace(port, str(free_port()))
    flow = yaml.safe_load(text)
    for section in ("sources", "processors", "sinks"):
        for entry in flow["spec"][section]:
            entry["env"] = {**entry.get("env", {}), "TRACE_FILE": str(trace)}
            entry["volumes"] = [f"{tmp_path}:{tmp_path}"]  # containers write there too
    flow["spec"]["sinks"][0]["env"]["OUTPUT_FILE"] = str(out)
    (tmp_path / "examples").mkdir()
    path = tmp_path / "examples" / "ttp-pipeline.yaml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


def traced(trace: Path) -> list[str]:
    lines = trace.read_text().splitlines() if trace.exists() else []
    return [line.split(" ", 1)[1] for line in lines]


def events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def run_pipeline(tmp_path: Path, orchestrator: str, timeout: float = 30) -> None:
    out, trace = tmp_path / "ttp-output.jsonl", tmp_path / "trace.txt"
    flow = pipeline_copy(tmp_path, out, trace)
    run = Flowctl("run", str(flow), "--orchestrator", orchestrator, log_dir=tmp_path,
                  name="run")
    try:
        wait_for(lambda: len(events(out)) >= 20 or run.proc.poll() is not None, timeout,
                 f"20 events in the consumer's file; the trace: {traced(trace)}")
        assert run.proc.poll() is None, run.err()
        assert traced(trace) == ORDER, run.err()  # each only after its dependency's /health
        got = events(out)
        ledgers = [e["ledger"] for e in got]
        # source -> processor -> consumer, none lost (from when the consumer joined)
        assert ledgers == list(range(ledgers[0], ledgers[0] + len(got)))
        assert all(e["ttp"] == f"transfer-{e['ledger']}" for e in got)
        listed = flowctl("list", "-o", "json")  # no --nats-url: the run's record finds it
        assert listed.returncode == 0, listed.stderr
        assert [f["metadata"]["name"] for f in json.loads(listed.stdout)] == [
            "ttp-processing-pipeline"]
        run.interrupt(group=True)  # a terminal's Ctrl+C
        assert run.wait(40) == 130, run.err()
    finally:
        if run.proc.poll() is None:
            run.kill()
    assert traced(trace)[len(ORDER):] == ["consumer stopped", "processor stopped",
                                          "source stopped"]  # the reverse order
    assert "stopped, undeployed and deleted" in run.err()
    assert "Traceback" not in run.err()
    run.assert_no_leftovers()


def test_the_orchestrator_pipeline_runs_as_processes(tmp_path: Path) -> None:
    run_pipeline(tmp_path, "process")


def build_images() -> None:
    """The example's three images (tests/programs/ttp.Dockerfile on the base image)."""
    from tests.docker_images import build_base_image

    base = build_base_image()
    for program, tag in IMAGES.items():
        subprocess.run(["docker", "build", "-q", "-f", str(PROGRAMS / "ttp.Dockerfile"),
                        "--build-arg", f"BASE={base}", "--build-arg",
                        f"PROGRAM={program.removesuffix('.py')}", "-t", tag, str(PROGRAMS)],
                       check=True, capture_output=True, timeout=300)


@pytest.mark.docker
def test_the_orchestrator_pipeline_runs_as_containers(tmp_path: Path) -> None:
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); start dockerd to run this test")
    build_images()
    run_pipeline(tmp_path, "container", timeout=60)
    left = subprocess.run(["docker", "ps", "-aq", "--filter",
                           "label=flowctl.flow=ttp-processing-pipeline"],
                          capture_output=True, text=True, timeout=30).stdout
    assert left.strip() == ""


def read_line(port: int, timeout: float = 20) -> dict[str, Any]:
    """The first JSON line served on 127.0.0.1:``port`` (retried until it answers)."""
    import socket

    def attempt() -> dict[str, Any] | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return json.loads(s.makefile().readline())
        except (OSError, ValueError):
            return None

    return wait_for(attempt, timeout, f"a line on port {port}")


@pytest.mark.docker
async def test_containers_reach_each_other_by_node_id_on_the_flows_network(
        tmp_path: Path) -> None:
    """NATS not on loopback: the flow's containers share flowctl-<flow>, where the
    processor reaches the source by its node id; ports are published on the host."""
    import docker

    from componentmanager.runners.container import ContainerReplica, flow_network
    from flowstore.models import ComponentConfig, ExternalFields, ReplicaState
    from flowstore.nats import NatsOptions
    from tests.process_context import Host, until

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); start dockerd to run this test")
    build_images()
    host = Host(tmp_path / "logs", NatsOptions(url="nats://192.0.2.1:4222"))  # not loopback
    host.agent_name = "otest"
    src_port, proc_port = free_port(), free_port()

    def replica(node: str, image: str, env: dict[str, str], port: int) -> ContainerReplica:
        cfg = ComponentConfig(flow="onet", node=node, type="x", kind="container",
                              queue="q", external=ExternalFields(
                                  image=image, env=env, health_port=8080,
                                  ports=[{"containerPort": 5000, "hostPort": port}]))
        return ContainerReplica(cfg, 0, host)

    src = replica("src", IMAGES["ttp_source.py"], {"GRPC_PORT": "5000"}, src_port)
    proc = replica("proc", IMAGES["ttp_processor.py"],
                   {"GRPC_PORT": "5000", "LIVE_SOURCE_ENDPOINT": "src:5000"}, proc_port)
    try:
        for r in (src, proc):
            await r.start()
        await until(lambda: src.state == proc.state == ReplicaState.RUNNING,
                    "both running (/health on the network)", 30, host)
        assert read_line(src_port)["ledger"] == 1  # published on the host
        assert read_line(proc_port)["ttp"].startswith("transfer-")  # src reached by id
    finally:
        await proc.stop()
        await src.stop()
    assert not client.networks.list(names=[flow_network("onet")])  # gone with them
    client.close()
