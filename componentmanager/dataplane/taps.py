"""Copies of in-memory ports for ``flowctl tap``.

A port a fused node passes to the next node in memory is never published. While
``flowctl tap`` watches one it says so every :data:`TAP_RENEW_S` on
:func:`~flowstore.names.tapping_subject`; every agent's data loop listens (one
subscription) and, for :data:`TAP_HOLD_S` after the last word, the node publishes a copy
of each frame it hands on to :func:`~flowstore.names.tap_subject` (core NATS, outside
every flow's stream: nothing stores or reads it but the tap). A copy is best effort: it
never holds up or costs the flow an event. Untapped, a fused hop costs one dict lookup
when some other port is tapped, nothing otherwise.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from componentmanager.dataplane.wire import encode_lines
from flowstore.names import HDR_META, tap_subject, tapping_subject

#: How often ``flowctl tap`` renews its watch, and how long a watch lasts unrenewed.
TAP_RENEW_S = 2.0
TAP_HOLD_S = 3 * TAP_RENEW_S


class Taps:
    """The in-memory ports watched by a ``flowctl tap`` now, as the agent heard it."""

    def __init__(self) -> None:
        self._until: dict[tuple[str, str, str], float] = {}
        self._sub: Any = None

    async def listen(self, nc: Any) -> None:
        self._sub = await nc.subscribe(tapping_subject("*", "*", "*"), cb=self._heard)

    async def _heard(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        if len(parts) == 5:
            self._until[(parts[2], parts[3], parts[4])] = time.monotonic() + TAP_HOLD_S

    def watched(self, flow: str, node: str, port: str) -> bool:
        if not self._until:
            return False
        until = self._until.get((flow, node, port))
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[(flow, node, port)]
            return False
        return True

    async def copy(self, nc: Any, flow: str, node: str, port: str, events: list[Any]) -> None:
        """Publish a copy of ``events`` (one frame) for the tap; never raises."""
        with contextlib.suppress(Exception):
            body = encode_lines(events)
            header = {HDR_META: f"{node}-tap:0 {len(events)} {time.time():.6f}"}
            await nc.publish(tap_subject(flow, node, port), body, headers=header)
