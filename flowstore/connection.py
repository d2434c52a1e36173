"""A NATS client that never lives on as a zombie: :class:`SupervisedClient`.

nats-py leaves a connection wedged after a server freeze: ``flush()`` cancels its PONG
future on timeout but leaves it queued, the late PONG then hits the cancelled future, the
read loop dies of ``InvalidStateError``, and the client still says it is connected while
every request times out. This subclass:

* discards the PONG of a timed-out ``flush`` instead of dying on it;
* for long-running processes (``supervise=True``), runs a watchdog: every
  :data:`PROBE_EVERY_S` it checks that the client's read, flush and ping tasks are alive
  and that a PING gets its PONG within :data:`PROBE_TIMEOUT_S`; after
  :data:`PROBE_FAILURES` failed probes in a row (or at once when a task is dead) it
  rebuilds the connection (nats-py's own reconnect), logging why once. A frozen or
  restarted server then costs a stall, never a manual restart.

Errors nats-py reports (``error_cb``) are logged once per :data:`LOG_EVERY_S` per kind,
never per event, unless the caller handles them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.client import Client
from nats.errors import StaleConnectionError

log = logging.getLogger("flowctl.nats")

PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 5.0
PROBE_FAILURES = 2
LOG_EVERY_S = 10.0


class SupervisedClient(Client):
    """nats-py's Client with a PONG fix and an optional watchdog (see the module doc)."""

    _watchdog: asyncio.Task[None] | None = None
    _logged: dict[str, float]
    rebuilds: int = 0

    async def _process_pong(self) -> None:
        # A PONG answers the oldest PING; that PING's waiter may have given up (a flush
        # timed out): the PONG is then simply consumed.
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
        self._pongs_received += 1
        self._pings_outstanding = 0

    def supervise(self, name: str) -> None:
        """Start the watchdog (once connected)."""
        self._logged = {}
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(name))

    def note(self, what: str, message: str, **fields: Any) -> None:
        """Log ``message`` once per :data:`LOG_EVERY_S` for the same ``what``."""
        logged = getattr(self, "_logged", None)
        if logged is None:
            logged = self._logged = {}
        now = time.monotonic()
        if now - logged.get(what, -LOG_EVERY_S) >= LOG_EVERY_S:
            logged[what] = now
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            log.warning("%s%s", message, f" ({extra})" if extra else "")

    def _dead_task(self) -> str | None:
        for label, task in (("read", self._reading_task), ("flush", self._flusher_task),
                            ("ping", self._ping_interval_task)):
            if task is None or task.done():
                return label
        return None

    async def _probe(self) -> bool:
        try:
            await self.flush(timeout=PROBE_TIMEOUT_S)  # type: ignore[arg-type]
        except Exception:
            return False
        return True

    async def _watch(self, name: str) -> None:
        failures = 0
        while not self.is_closed:
            await asyncio.sleep(PROBE_EVERY_S)
            if not self.is_connected:
                failures = 0  # nats-py is reconnecting on its own
                continue
            dead = self._dead_task()
            if dead is None and await self._probe():
                failures = 0
                continue
            failures += 1
            if dead is None and failures < PROBE_FAILURES:
                continue
            reason = (f"its {dead} task died" if dead else
                      f"no answer to {failures} pings of {PROBE_TIMEOUT_S:g}s")
            self.note("rebuild", f"NATS connection {name} does not answer ({reason}); "
                      "reconnecting")
            failures = 0
            self.rebuilds += 1
            with contextlib.suppress(Exception):
                await self._process_op_err(StaleConnectionError())

    async def close(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
            with contextlib.suppress(BaseException):
                await watchdog
        await super().close()
