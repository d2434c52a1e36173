"""A component registers and heartbeats on NATS; the SDK does it, any program may.

The agent gives a program ``FLOWCTL_HEARTBEAT_SUBJECT`` and ``FLOWCTL_HEARTBEAT_INTERVAL``
(a Go-style duration, ``10s`` unless the node's ``env`` sets another). The first
message on that subject registers the component (``{"register": true, ...}``); then one
heartbeat per interval. Once registered, a component that falls silent for three
intervals while its process lives (hung, deadlocked) is reported unhealthy and restarted
by its ``restart_policy`` (:mod:`componentmanager.runners.health`). A program that never
registers is judged by its process and its ``health_check`` alone.

In another language: publish any bytes on the subject at start and every interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

from componentmanager.runners.env import COMPONENT_HEARTBEAT_S, parse_duration


class Registration:
    """Register, then heartbeat every interval until :meth:`stop`."""

    def __init__(self, nc: Any, environ: Mapping[str, str]) -> None:
        self.nc = nc
        self.subject = environ.get("FLOWCTL_HEARTBEAT_SUBJECT", "")
        self.interval_s = parse_duration(environ.get("FLOWCTL_HEARTBEAT_INTERVAL", ""),
                                         COMPONENT_HEARTBEAT_S)
        self.identity = {"component_id": environ.get("COMPONENT_ID", ""),
                         "service_id": environ.get("FLOWCTL_SERVICE_ID", ""),
                         "pid": os.getpid()}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.subject and self._task is None:
            self._task = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        body = {"register": True, **self.identity}
        while True:
            with contextlib.suppress(Exception):  # NATS away: the next beat tries again
                await self.nc.publish(self.subject, json.dumps(body).encode())
            body = {"heartbeat": True, **self.identity}
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
