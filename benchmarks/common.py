"""Shared pieces of the benchmarks: a server, agent processes, a counting subscriber."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FLOWCTL = str(Path(sys.executable).parent / "flowctl")


def start_agent(url: str, name: str, labels: str, heartbeat: float = 1.0,
                status_interval: float = 0.5) -> subprocess.Popen:
    return subprocess.Popen(
        [FLOWCTL, "--nats-url", url, "agent", "--name", name, "--labels", labels,
         "--heartbeat", str(heartbeat), "--status-interval", str(status_interval)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


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
