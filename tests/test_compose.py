"""compose.yaml end to end: NATS, three labelled agents and the one-shot `apply` service.

The stack runs a locally built image (:func:`tests.docker_images.ensure_flowctl_image`,
no registry pulls) under a unique compose project with NATS published on a free loopback
port; the host's own `flowctl` then checks that the three agents are live with their
labels, that examples/compose-flow.yaml runs with each node on the agent its labels
select, and that events keep moving. ``docker-compose down -v`` removes every container,
network and volume afterwards, whatever happened.

Skipped (with the reason) only when no Docker engine answers or no compose CLI can be
found or installed. The first run builds the base image (about a minute); later runs
reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_images import ROOT, engine_problem, ensure_flowctl_image

pytestmark = pytest.mark.docker

FLOWCTL = str(Path(sys.executable).parent / "flowctl")
COMPOSE_FILE = ROOT / "compose.yaml"
FLOW = "compose-demo"
EXPECTED_LABELS = {
    "agent-1": {"zone": "a", "tier": "edge"},
    "agent-2": {"zone": "b", "tier": "edge"},
    "agent-3": {"zone": "c", "tier": "core"},
}
EXPECTED_PLACEMENT = {"gen": "agent-1", "scale": "agent-2", "out": "agent-3"}
ZONE_OF_NODE = {"gen": "a", "scale": "b", "out": "c"}  # examples/compose-flow.yaml


def compose_command() -> list[str] | None:
    """docker-compose (v1), else `docker compose` (v2), else try apt-get; None if neither."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "docker-compose"]):
            subprocess.run(cmd, capture_output=True, timeout=600, env=env, check=False)
        if shutil.which("docker-compose"):
            return ["docker-compose"]
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """One compose project of compose.yaml."""

    def __init__(self, compose: list[str], image: str) -> None:
        self.project = f"flowctl-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.port}"
        self.base = [*compose, "-p", self.project, "-f", str(COMPOSE_FILE)]
        self.env = {**os.environ, "FLOWCTL_IMAGE": image,
                    "FLOWCTL_NATS_ADDR": "127.0.0.1", "FLOWCTL_NATS_PORT": str(self.port)}

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.base, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, cwd=ROOT)

    def logs(self) -> str:
        proc = self.compose("logs", "--no-color", "--tail", "40", timeout=60)
        return proc.stdout + proc.stderr

    def flowctl(self, *args: str) -> Any:
        """Run the host's flowctl against the stack's NATS; the parsed JSON it prints."""
        env = {**os.environ, "NATS_URL": self.nats_url}
        proc = subprocess.run([FLOWCTL, *args, "-o", "json"], capture_output=True,
                              text=True, timeout=30, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"flowctl {' '.join(args)}: exit {proc.returncode}: "
                               f"{proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def container_state(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).stdout.split()
        if not ids:
            return "missing"
        proc = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", ids[0]],
            capture_output=True, text=True, timeout=30)
        return proc.stdout.strip()

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in ("container", "network", "volume"):
            cmd = ["docker", kind, "ls", "-q", "--filter", label]
            if kind == "container":
                cmd.append("--all")
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
            found += [f"{kind} {x}" for x in out.split()]
        return found

    def remove_leftovers(self) -> None:
        for item in self.leftovers():
            kind, ident = item.split()
            extra = ["-f", "-v"] if kind == "container" else []
            subprocess.run(["docker", kind, "rm", *extra, ident], capture_output=True,
                           timeout=60, check=False)


def wait_for(check: Callable[[], Any], timeout: float, what: str, stack: Stack) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the stack's logs."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n"
                f"--- compose logs ---\n{stack.logs()}")


@pytest.fixture(scope="module")
def compose() -> list[str]:
    problem = engine_problem()
    if problem:
        pytest.skip(f"compose test needs a Docker engine: {problem}")
    cmd = compose_command()
    if cmd is None:
        pytest.skip("compose test needs docker-compose or `docker compose` (none found, "
                    "and apt-get install docker-compose was not possible)")
    return cmd


@pytest.fixture
def stack(compose: list[str]) -> Iterator[Stack]:
    started = time.monotonic()
    image = ensure_flowctl_image()
    print(f"image {image} ready after {time.monotonic() - started:.1f}s")
    s = Stack(compose, image)
    try:
        up = s.compose("up", "-d", "--no-build", timeout=180)
        assert up.returncode == 0, f"compose up failed:\n{up.stdout}\n{up.stderr}"
        print(f"compose up {s.project}: {time.monotonic() - started:.1f}s")
        yield s
    finally:
        print(s.logs())
        down = s.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180)
        print(f"compose down: exit {down.returncode}\n{down.stderr[-2000:]}")
        left = s.leftovers()
        if left:
            s.remove_leftovers()
        assert not left, f"`down -v` left these behind (now removed): {left}"


def _live_agents(stack: Stack) -> dict[str, dict[str, Any]]:
    agents = {a["name"]: a for a in stack.flowctl("agents") if a["live"]}
    return agents if set(EXPECTED_LABELS) <= set(agents) else {}


def _running(stack: Stack) -> dict[str, Any]:
    status = stack.flowctl("status", FLOW)
    replicas = status["replicas"]
    ok = (status["effective"]["observed"] == "running" and len(replicas) == 3
          and all(r["state"] == "running" for r in replicas))
    return status if ok else {}


def _replicas(stack: Stack) -> dict[str, dict[str, Any]]:
    return {r["node"]: r for r in stack.flowctl("status", FLOW)["replicas"]}


COUNTERS = {"gen": ("out",), "scale": ("in", "out"), "out": ("in",)}


def events_moving(stack: Stack, timeout: float = 60) -> dict[str, dict[str, Any]]:
    """Wait until every node's counters were seen rising between two status samples of
    the same replica run (a replica restarted by a re-placement starts again from 0, so
    samples across a restart do not count). Returns the last sample."""
    moving: set[str] = set()
    deadline = time.monotonic() + timeout
    before = _replicas(stack)
    while time.monotonic() < deadline and moving != set(COUNTERS):
        time.sleep(3)
        try:
            after = _replicas(stack)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            continue  # one failed sample: take the next
        for node, keys in COUNTERS.items():
            old, new = before.get(node), after.get(node)
            if (old and new and old.get("started_at") == new.get("started_at")
                    and all(new["counters"][k] > old["counters"][k] for k in keys)):
                moving.add(node)
        before = after
    if moving != set(COUNTERS):
        pytest.fail(f"no events seen moving through {sorted(set(COUNTERS) - moving)} in "
                    f"{timeout}s; last status: {before}\n--- compose logs ---\n{stack.logs()}")
    return before


@pytest.mark.timeout(900)  # the first run builds the base image
def test_compose_runs_the_example_flow_on_three_agents(stack: Stack) -> None:
    agents = wait_for(lambda: _live_agents(stack), 60, "three live agents", stack)
    for name, labels in EXPECTED_LABELS.items():
        assert agents[name]["labels"] == labels, agents[name]
        assert agents[name]["host"] == name  # each agent is its own "host" (container)

    status = wait_for(lambda: _running(stack), 90, f"flow {FLOW} running", stack)
    assert status["effective"]["desired"] == "running"
    placed = {r["node"]: r["agent"] for r in status["replicas"]}
    assert placed == EXPECTED_PLACEMENT, status["replicas"]
    for node, agent in placed.items():  # each node runs where its placement labels point
        assert agents[agent]["labels"]["zone"] == ZONE_OF_NODE[node]

    assert wait_for(lambda: stack.container_state("apply") == "exited 0", 60,
                    "the apply service to exit 0", stack)

    # Events move end to end: every counter along the chain keeps rising.
    last = events_moving(stack)
    assert all(r["counters"]["errors"] == 0 for r in last.values()), last

    # The sink prints the transformed events in agent-3's log.
    sink_log = stack.compose("logs", "--no-color", "agent-3").stdout
    assert '"zone":"b"' in sink_log and "compose-demo " in sink_log, sink_log[-2000:]
