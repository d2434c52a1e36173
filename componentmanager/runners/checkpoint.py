"""Source positions kept with what the stream has acknowledged: :class:`SourceCheckpoint`.

A source of an at-least-once flow says how far it got with ``ctx.advance(position)``
("everything I emitted so far is covered by this position": ``generate``'s next sequence,
``file``'s byte offset, any JSON value for a third-party source) and asks where to resume
with ``await ctx.resume_position()``. The runtime writes a position to the
``flowctl_checkpoints`` bucket (key ``<flow>.<node>.<replica>``, one line of JSON) only
once every event emitted before it is stored in the flow's stream, every
:data:`CHECKPOINT_EVERY_S`; so a source restarted by failover, a crash or a stop resumes
after what was stored and loses nothing, repeating at most what was stored in the last
interval before it died. A finished source's checkpoint says ``completed``: it stays
completed across restarts and failover. A checkpoint of another config (the source's
``type`` or ``config`` changed) is ignored: the source starts over. Undeploy removes them.

Positions are exact for a source with one output port (events leave in emit order); a
source that emits on several ports gets them per emit order of messages, which frames
may reorder across ports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import Any

from flowstore.models import ComponentConfig, utcnow
from flowstore.nats import CHECKPOINTS_BUCKET, open_bucket

#: How often a stored position is written.
CHECKPOINT_EVERY_S = 0.2
_NOTHING = object()


def config_fingerprint(cfg: ComponentConfig) -> str:
    """What a position is relative to: the source's type and config."""
    body = json.dumps({"type": cfg.type, "config": cfg.config}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


class SourceCheckpoint:
    """The checkpoint of one source replica (see the module doc)."""

    def __init__(self, nc: Any, cfg: ComponentConfig, replica: int,
                 stored_events: Callable[[], int]) -> None:
        self.nc = nc
        self.key = f"{cfg.flow}.{cfg.node}.{replica}"
        self.fingerprint = config_fingerprint(cfg)
        self._stored_events = stored_events
        self._marks: collections.deque[tuple[int, Any]] = collections.deque()
        self._written: Any = _NOTHING
        self._last: Any = None  # the latest position advanced to (or loaded)
        self._kv: Any = None
        self.position: Any = None
        self.completed = False
        self.events_before = 0  # events stored by earlier runs of this source

    async def load(self) -> None:
        """Read the checkpoint (a missing, junk or foreign one means: from the start)."""
        self._kv = await open_bucket(self.nc, CHECKPOINTS_BUCKET)  # the engine made it
        try:
            entry = await self._kv.get(self.key)
            data = json.loads(entry.value or b"")
        except Exception:
            return
        if not isinstance(data, dict) or data.get("config") != self.fingerprint:
            return
        self.position = data.get("position")
        self.completed = bool(data.get("completed"))
        self.events_before = int(data.get("events") or 0)
        self._written = self._last = self.position

    def advance(self, emitted_events: int, position: Any) -> None:
        """The first ``emitted_events`` events of this run are covered by ``position``."""
        self._last = position
        if self._marks and self._marks[-1][0] == emitted_events:
            self._marks[-1] = (emitted_events, position)
        else:
            self._marks.append((emitted_events, position))

    def _stored_position(self) -> tuple[Any, int] | None:
        stored = self._stored_events()
        found = None
        while self._marks and self._marks[0][0] <= stored:
            found = self._marks.popleft()
        return None if found is None else (found[1], found[0])

    async def _write(self, position: Any, events: int, completed: bool = False) -> None:
        value = {"position": position, "events": self.events_before + events,
                 "completed": completed, "config": self.fingerprint, "updated_at": utcnow()}
        await self._kv.put(self.key, json.dumps(value, separators=(",", ":")).encode())
        self._written = position

    async def run(self) -> None:
        """Write the latest stored position every :data:`CHECKPOINT_EVERY_S`."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            await self.flush()

    async def flush(self) -> None:
        found = self._stored_position()
        if found is not None and found[0] != self._written:
            with contextlib.suppress(Exception):  # the next interval tries again
                await self._write(found[0], found[1])

    async def complete(self, events: int) -> None:
        """Everything was emitted and stored: the source is done for good."""
        self._marks.clear()
        with contextlib.suppress(Exception):
            await self._write(self._last, events, completed=True)
