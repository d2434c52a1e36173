"""Shared pieces of the benchmarks: a server, agent processes, a counting subscriber, the
CPU a process has spent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

FLOWCTL = str(Path(sys.executable).parent / "flowctl")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark dies, however it dies (Linux), so a
    benchmark killed by a timeout leaves no agent behind."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_agent(url: str, name: str, labels: str, heartbeat: float = 1.0,
                status_interval: float = 0.5) -> subprocess.Popen:
    return subprocess.Popen(
        [FLOWCTL, "--nats-url", url, "agent", "--name", name, "--labels", labels,
         "--heartbeat", str(heartbeat), "--status-interval", str(status_interval)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent,
    )


@contextlib.asynccontextmanager
async def two_agents(status_interval: float = 0.5) -> AsyncIterator[str]:
    """An embedded NATS server with two agents (bench-a, bench-b) live: its URL."""
    from flowengine import FlowEngine
    from flowstore.nats import NatsOptions, connect
    from flowstore.server import EmbeddedNats

    with EmbeddedNats() as server:
        agents = [start_agent(server.url, "bench-a", "role=a", status_interval=status_interval),
                  start_agent(server.url, "bench-b", "role=b", status_interval=status_interval)]
        try:
            nc = await connect(NatsOptions(url=server.url))
            engine = await FlowEngine.open(nc)
            while len(await engine.live_agents()) < 2:
                await asyncio.sleep(0.1)
            await nc.close()
            yield server.url
        finally:
            stop_all(agents)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Counter:
    """Counts messages on a subject; records the time of the first and the latest."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    async def on_msg(self, _msg: Any) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self.count == 1:
            self.first = self.last
        if self.count == self.n:
            self.done.set()

    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first) if self.count > 1 else 0.0
