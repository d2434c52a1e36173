"""Is a running program still alive? Liveness of external components after their start.

Readiness (before ``running``) is :mod:`componentmanager.runners.external`'s; this module
watches what comes after, for processes and containers alike:

* ``health_check`` on ``health_port`` is probed every ``health_interval`` seconds (0: not
  after start). A failed probe makes the replica's reason ``unhealthy: ...``; after
  :data:`FAILURES_IN_A_ROW` failures in a row the program is declared dead.
* A component that registered (the SDK does: it publishes on ``FLOWCTL_HEARTBEAT_SUBJECT``
  at start, then every ``FLOWCTL_HEARTBEAT_INTERVAL``) and then stays silent for
  :data:`SILENT_BEATS` intervals while its process lives is declared dead too. One that
  never registered is not watched this way.

A dead program is stopped by the runner and its ``restart_policy`` decides (it counts as
a failure, so ``on-failure`` restarts it), with the reason in ``last_error`` and in its
log. :func:`probe_verdict` and :func:`heartbeat_verdict` are the pure decisions;
:func:`http_status` is the probe (also used for readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from componentmanager.runners.env import COMPONENT_HEARTBEAT_S, parse_duration

FAILURES_IN_A_ROW = 3
SILENT_BEATS = 3.0


async def http_status(
    host: str, port: int, path: str = "/health", timeout: float = 1.0
) -> int | None:
    """The status code of a tiny ``GET`` (no dependency), or None when nobody answers."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            parts = (await reader.readline()).split()
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
            return int(parts[1])
        return None
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()


def probe_verdict(failures: int, last: str, url: str) -> tuple[str | None, str | None]:
    """(reason shown while running, why it is dead) after ``failures`` failed probes in a
    row (0: healthy, both None)."""
    if failures == 0:
        return None, None
    if failures >= FAILURES_IN_A_ROW:
        return None, f"health check {url} failed {failures} times in a row (last: {last})"
    return f"unhealthy: health check {url} failed ({last}), {failures}/" \
           f"{FAILURES_IN_A_ROW}", None


def heartbeat_verdict(silent_s: float, interval_s: float) -> tuple[str | None, str | None]:
    """(reason shown while running, why it is dead) for a registered component whose last
    heartbeat was ``silent_s`` ago."""
    if silent_s >= SILENT_BEATS * interval_s:
        return None, f"registered component sent no heartbeat for {silent_s:.0f}s " \
                     f"(every {interval_s:g}s expected)"
    if silent_s >= 1.5 * interval_s:
        return f"unhealthy: no heartbeat for {silent_s:.1f}s", None
    return None, None


class Liveness:
    """One run of one replica's program: heartbeats heard, probes made, the verdict."""

    def __init__(self, replica: Any, env: dict[str, str]) -> None:
        self.replica = replica
        self.interval_s = parse_duration(env.get("FLOWCTL_HEARTBEAT_INTERVAL", ""),
                                         COMPONENT_HEARTBEAT_S)
        self.subject = env.get("FLOWCTL_HEARTBEAT_SUBJECT")
        self.last_beat: float | None = None  # None: not registered
        self._sub: Any = None

    async def listen(self) -> None:
        """Hear heartbeats from now on (before the launch: the first is the registration)."""
        if self.subject:
            with contextlib.suppress(Exception):
                self._sub = await self.replica.host.nc.subscribe(self.subject, cb=self._beat)

    async def _beat(self, _msg: Any) -> None:
        if self.last_beat is None:
            self.replica.sink.write("flowctl: component registered (heartbeats every "
                                    f"{self.interval_s:g}s)", "agent")
        self.last_beat = time.monotonic()

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def _show(self, note: str | None) -> None:
        replica = self.replica
        if note != replica.note and (note or (replica.note or "").startswith("unhealthy")):
            replica.note = note
            replica.host.changed(replica)

    async def watch(self, host: str, port: int | None, path: str, every: float) -> str:
        """Returns why the program is dead; runs until then (cancel it otherwise)."""
        failures, last = 0, ""
        url = f"http://{host}:{port}{path}"
        tick = min(x for x in (every or 1.0, self.interval_s / 2, 1.0) if x > 0)
        next_probe = time.monotonic() + every
        try:
            while True:
                await asyncio.sleep(tick)
                notes: list[str] = []
                if port is not None and every > 0 and time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + every
                    code = await http_status(host, port, path, timeout=min(every, 2.0))
                    failures, last = (0, "") if code == 200 else (
                        failures + 1, f"HTTP {code}" if code else "no answer")
                    note, dead = probe_verdict(failures, last, url)
                    if dead:
                        return dead
                    notes += [note] if note else []
                if self.last_beat is not None:
                    silent = time.monotonic() - self.last_beat
                    note, dead = heartbeat_verdict(silent, self.interval_s)
                    if dead:
                        return dead
                    notes += [note] if note else []
                self._show("; ".join(notes) or None)
        finally:
            self._show(None)
