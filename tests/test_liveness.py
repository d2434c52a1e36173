"""Liveness after start, with real programs: a program that stops answering its health
check, or a registered component that stops heartbeating while its process lives, is
shown unhealthy, stopped and restarted by its policy, saying why (status and log); the
stop grace is the node's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from componentmanager.runners.process import ProcessReplica
from flowstore.models import ComponentConfig, ReplicaState
from flowstore.nats import NatsOptions
from tests.process_context import PROGRAMS, Host, free_port, gone, make_cfg, until


class NotingHost(Host):
    """Also records the reason shown with each change (``replica.note``)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.notes: list[str] = []

    def changed(self, r: Any) -> None:
        super().changed(r)
        if r.note:
            self.notes.append(r.note)


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., ProcessReplica]]:
    made: list[ProcessReplica] = []

    def make(cfg: ComponentConfig, host: Host, **kwargs: Any) -> ProcessReplica:
        replica = ProcessReplica(cfg, 0, host, **kwargs)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        await replica.stop()


async def test_a_program_that_stops_answering_is_restarted(spawn: Any, tmp_path: Path) -> None:
    host = NotingHost(tmp_path / "logs", NatsOptions(url="nats://127.0.0.1:4222"))
    port = free_port()
    cfg = make_cfg(args=[str(PROGRAMS / "fading_health.py"), "2"], health_port=port,
                   health_interval=0.2)
    replica = spawn(cfg, host, backoff_initial=0.1)
    await replica.start()
    await until(lambda: replica.restarts >= 1 and replica.state == ReplicaState.RUNNING,
                "restarted and running again", 15, host)
    why = f"health check http://127.0.0.1:{port}/health failed 3 times in a row " \
          "(last: HTTP 500)"
    failed = [c.error for c in host.changes if c.state == ReplicaState.FAILED]
    assert failed[0] == why and failed[1] == f"{why}; restarting in 0.1s"
    assert host.has_line(f"flowctl: {why}; stopping it (restart_policy on-failure)")
    # before it was declared dead it was shown unhealthy
    assert host.notes[:2] == [
        f"unhealthy: health check http://127.0.0.1:{port}/health failed (HTTP 500), {k}/3"
        for k in (1, 2)]


async def test_a_registered_component_that_stops_heartbeating_is_restarted(
    spawn: Any, tmp_path: Path, nc: Any, nats_opts: NatsOptions
) -> None:
    host = Host(tmp_path / "logs", nats_opts, nc)
    cfg = make_cfg(args=[str(PROGRAMS / "hung_sdk.py")], outputs={"out": "flowctl.f1.p.out"},
                   env={"FLOWCTL_HEARTBEAT_INTERVAL": "0.3s"}, stop_grace=0.5)
    replica = spawn(cfg, host, backoff_initial=0.1)
    await replica.start()
    await until(lambda: replica.restarts >= 1, "a restart", 20, host)
    assert host.has_line("flowctl: component registered (heartbeats every 0.3s)")
    assert host.has_line("hanging")
    failed = [c.error or "" for c in host.changes if c.state == ReplicaState.FAILED]
    assert failed[0].startswith("registered component sent no heartbeat for ")
    assert failed[0].endswith("s (every 0.3s expected)")


async def test_stop_grace_is_the_nodes(spawn: Any, tmp_path: Path) -> None:
    host = Host(tmp_path / "logs", NatsOptions(url="nats://127.0.0.1:4222"))
    replica = spawn(make_cfg(args=[str(PROGRAMS / "stubborn.py")], stop_grace=0.3), host,
                    ready_after=0.2)
    await replica.start()
    await until(lambda: host.has_line("ignoring SIGTERM")
                and replica.state == ReplicaState.RUNNING, "running", 10, host)
    pid = replica.pid
    began = time.monotonic()
    await replica.stop()
    assert time.monotonic() - began < 2.5  # not the 5 s default
    assert replica.exit_code == -9 and gone(pid)
