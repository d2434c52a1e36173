"""External components through a real agent: an in-process source, a Python script run as
a process (using the SDK) and a container sink, moving events end to end; and SIGKILL of
the agent leaving neither a child process nor a container behind."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import psutil
import pytest

from tests.agents import all_in_state, flow_yaml, live_agent, read_lines, run_flow, wait_until
from tests.docker_images import engine_problem, ensure_flowctl_image

PROGRAMS = Path(__file__).resolve().parent / "programs"



@pytest.fixture(scope="module")
def flowctl_image() -> str:
    problem = engine_problem()
    if problem:
        pytest.skip(f"needs a Docker engine: {problem}")
    return ensure_flowctl_image()


def mixed_flow(out_dir: Path, image: str) -> str:
    return f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: 25, template: {{text: "event {{seq}}"}}}}
  processors:
    - id: upper
      type: sdk-upper
      frames: true
      command: {sys.executable}
      args: ["{PROGRAMS / 'sdk_upper.py'}"]
      health_port: {_free_port()}
      inputs: [gen]
  sinks:
    - id: store
      type: sdk-file-sink
      frames: true                 # the SDK takes frames: upper (SDK) sends it frames
      image: {image}
      command: /opt/flowctl/bin/python
      args: ["/programs/sdk_file_sink.py"]
      volumes: ["{PROGRAMS}:/programs:ro", "{out_dir}:/out"]
      health_port: {_free_port()}
      config: {{path: /out/events.jsonl}}
      inputs: [upper]
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _flow_containers(flow: str) -> list:
    import docker

    client = docker.from_env()
    try:
        # sparse: no inspect of each one (a container removed meanwhile would 404)
        return client.containers.list(all=True, sparse=True,
                                      filters={"label": f"flowctl.flow={flow}"})
    finally:
        client.close()


@pytest.mark.docker
async def test_inprocess_process_and_container_move_events(
    nc, agents, tmp_path, flowctl_image
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    agents("ext1", log_dir=str(tmp_path / "logs"))
    await wait_until(lambda: live_agent(nc, "ext1"), what="agent")
    await run_flow(nc, flow_yaml("mixed", mixed_flow(out_dir, flowctl_image)))
    keys = ["mixed.upper.0", "mixed.store.0"]
    await wait_until(
        lambda: all_in_state(nc, "mixed", keys, "running"), timeout=60, what="external running"
    )
    events_file = out_dir / "events.jsonl"

    async def all_arrived() -> bool:
        return len(read_lines(events_file)) >= 25

    await wait_until(all_arrived, timeout=60, what="25 events in the container's file")
    events = [json.loads(x) for x in read_lines(events_file)]
    assert sorted(e["seq"] for e in events) == list(range(25))
    assert all(e["text"] == f"EVENT {e['seq']}" and e["port"] == "in" for e in events)
    # The process's output went to its log file.
    assert (tmp_path / "logs" / "mixed.upper.0.log").exists()


@pytest.mark.docker
async def test_sigkilled_agent_leaves_no_child_and_no_container(
    nc, agents, tmp_path, flowctl_image
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    agent = agents("ext2", log_dir=str(tmp_path / "logs"))
    await wait_until(lambda: live_agent(nc, "ext2"), what="agent")
    await run_flow(nc, flow_yaml("killed", mixed_flow(out_dir, flowctl_image)))
    keys = ["killed.upper.0", "killed.store.0"]
    await wait_until(
        lambda: all_in_state(nc, "killed", keys, "running"), timeout=60, what="running"
    )
    children = [p for p in _children(agent.pid) if "watchdog" not in " ".join(p.cmdline())]
    assert children, "the process component should be a child of the agent"
    assert _flow_containers("killed")
    agent.kill()

    async def nothing_left() -> bool:
        alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        return not alive and not _flow_containers("killed")

    await wait_until(nothing_left, timeout=30, what="no child process and no container")


async def test_disabling_a_process_component_stops_it_within_the_grace(
    nc, agents, tmp_path
) -> None:
    """No Docker needed: a SIGTERM-ignoring program is gone within the 5 s grace."""
    agent = agents("ext3", log_dir=str(tmp_path / "logs"))
    await wait_until(lambda: live_agent(nc, "ext3"), what="agent")
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "while True:\n    time.sleep(0.1)\n"
    )
    body = f"""\
  sources:
    - id: feed
      type: nats
      config: {{subject: "stub.in"}}
  sinks:
    - id: stub
      type: stubborn
      command: {sys.executable}
      args: ["{stubborn}"]
      inputs: [feed]
"""
    engine = await run_flow(nc, flow_yaml("stub", body))
    await wait_until(
        lambda: all_in_state(nc, "stub", ["stub.stub.0", "stub.feed.0"], "running"),
        what="running",
    )
    (child,) = [p for p in _children(agent.pid) if str(stubborn) in " ".join(p.cmdline())]
    t0 = asyncio.get_running_loop().time()
    await engine.stop("stub")

    async def gone() -> bool:
        return not child.is_running() or child.status() == psutil.STATUS_ZOMBIE

    await wait_until(gone, timeout=15, what="the program stopped")
    elapsed = asyncio.get_running_loop().time() - t0
    assert elapsed < 5.0 + 2.0, f"took {elapsed:.1f}s (grace 5 s)"
    await wait_until(
        lambda: all_in_state(nc, "stub", ["stub.stub.0"], "stopped"), what="stopped status"
    )
