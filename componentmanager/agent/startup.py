"""An agent started before NATS is ready waits for it, saying so, instead of exiting."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from flowstore.nats import NatsUnavailable, redact

if TYPE_CHECKING:
    from componentmanager.agent.agent import Agent

log = structlog.get_logger("flowctl.agent")


def not_ready(exc: Exception) -> str | None:
    """Why NATS is not ready yet (worth waiting for), or None for a real error."""
    if isinstance(exc, NatsUnavailable):
        lowered = exc.reason.lower()
        if any(w in lowered for w in ("authorization", "authentication", "permission")):
            return None
        return exc.reason
    name = type(exc).__name__
    if isinstance(exc, TimeoutError | ConnectionError) or name in (
            "NoRespondersError", "ServiceUnavailableError", "TimeoutError",
            "ConnectionClosedError", "NoServersError"):
        return f"{name}: {exc}".rstrip(": ")
    return None



async def start_when_nats_is_ready(agent: Agent, stop: asyncio.Event) -> bool:
    """Start, waiting (with backoff, saying so) while NATS cannot be reached or its
    JetStream is not ready yet (a cluster still electing its leaders). False when
    ``stop`` was set first. Refused credentials and a taken name are not waited out."""
    delay = 0.5
    while True:
        try:
            await agent.start()
            return True
        except Exception as exc:
            if agent.nc is not None:
                with contextlib.suppress(Exception):
                    await agent.nc.close()
                agent.nc = None
            reason = not_ready(exc)
            if reason is None:
                raise
        log.warning("waiting for NATS", url=redact(agent.nats_options.url), reason=reason,
                    retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        if stop.is_set():
            return False
        delay = min(delay * 2, 10.0)

