"""Helpers for tests that run real `flowctl agent` processes and wait on KV state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from flowengine import FlowEngine
from flowstore import AgentRecord, parse_flow
from flowstore.models import ReplicaStatus
from flowstore.nats import AGENTS_BUCKET, STATUS_BUCKET, open_bucket
from flowstore.store import read_all

FLOWCTL = str(Path(sys.executable).parent / "flowctl")


class AgentProcess:
    """A real `flowctl agent` subprocess; stop() sends SIGTERM and returns the exit code."""

    def __init__(
        self, nats_url: str, name: str, labels: str = "", log_dir: str | None = None,
        heartbeat: float = 0.5, extra: list[str] | None = None,
    ) -> None:
        args = [FLOWCTL, "--nats-url", nats_url, "agent", "--name", name,
                "--heartbeat", str(heartbeat), "--status-interval", "0.5"]
        if labels:
            args += ["--labels", labels]
        if log_dir:
            args += ["--log-dir", log_dir]
        # these tests are about other things: programs and images are allowed here
        args += ["--allow-commands", "*", "--allow-images", "*", *(extra or [])]
        self.name = name
        self.args = args
        # Output goes to files, not pipes: a pipe nobody reads would block the agent.
        self._out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by GC with self
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=self._out, stderr=self._err, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(Exception):  # where it hangs, for the failure report
                subprocess.run(["py-spy", "dump", "--pid", str(self.proc.pid)], timeout=20)
            print(f"agent {self.name} did not stop; its log:\n{self.output()[1][-4000:]}")
            self.proc.kill()
            self.proc.wait()
            return -999  # "did not stop in time": fails the caller's assert, leaves nothing

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def output(self) -> tuple[str, str]:
        """stdout and stderr so far."""
        texts = []
        for f in (self._out, self._err):
            f.flush()
            f.seek(0)
            texts.append(f.read())
        return texts[0], texts[1]


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float = 15, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def statuses(nc: Any, flow: str) -> dict[str, ReplicaStatus]:
    kv = await open_bucket(nc, STATUS_BUCKET)
    entries = await read_all(kv, f"{flow}.>")
    return {k: ReplicaStatus.from_json(e.value) for k, e in entries.items()}


async def all_in_state(nc: Any, flow: str, keys: list[str], *states: str) -> bool:
    st = await statuses(nc, flow)
    return all(k in st and st[k].state.value in states for k in keys)


def read_lines(path: Path) -> list[str]:
    """The complete lines of a file a sink may be writing (a last line without its
    newline is still being written: left out)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return [line for line in text.splitlines() if line]


def flow_yaml(name: str, body: str, delivery: str = "at-most-once") -> str:
    return (
        f"apiVersion: flowctl/v1\nkind: Flow\nmetadata: {{name: {name}}}\n"
        f"spec:\n  delivery: {delivery}\n{body}"
    )


async def live_agent(nc, name: str) -> AgentRecord | None:
    kv = await open_bucket(nc, AGENTS_BUCKET)
    entries = await read_all(kv)
    return AgentRecord.from_json(entries[name].value) if name in entries else None


async def run_flow(nc, text: str) -> FlowEngine:
    engine = await FlowEngine.open(nc)
    loaded = parse_flow(text)
    await engine.apply(loaded.name, loaded.spec)
    await engine.deploy(loaded.name)
    await engine.start(loaded.name)
    return engine


def gen_transform_file(path: Path, generate: str, set_field: str, expression: str,
                       replicas: int = 1, fuse: bool = True) -> str:
    """The flow body used by many tests: generate -> transform (one field) -> file sink
    (``fuse=False``: the transform apart, reading from and publishing to NATS)."""
    return f"""\
  sources:
    - id: gen
      type: generate
      config: {{{generate}}}
  processors:
    - id: work
      type: transform
      inputs: [gen]
      replicas: {replicas}
      fuse: {str(fuse).lower()}
      config: {{set: {{{set_field}: "{expression}"}}}}
  sinks:
    - id: out
      type: file
      inputs: [work]
      config: {{path: "{path}"}}
"""
