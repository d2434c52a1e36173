"""What happens to an event that fails in an in-process replica: mixin of
:class:`~componentmanager.runners.inprocess.InProcessReplica`.

The event is counted in ``errors``, shown as the replica's last error, logged (and kept
in FLOWCTL_LOGS with its event id) once per interval for failures of the same shape,
and dead-lettered to ``flowctl.<flow>.<node>.dlq`` with the reason; the replica goes on.
With at-least-once a dead letter must be stored before its input is acked: when it is
not (FLOWCTL_DLQ full or away), that input (only) is delivered again instead, after a
pause growing with its deliveries. A dead letter too large for the server beside its
headers keeps a preview of the event.
"""

from __future__ import annotations

from typing import Any

import structlog
from nats.aio.msg import Msg

from componentmanager.component import EventError
from componentmanager.dataplane import (
    HDR_REPLAY_TO,
    dead_letter_headers,
    encode,
    event_as_received,
    event_id,
    frame_count,
    store_dead_letter,
)
from componentmanager.dataplane.accounting import shape
from flowstore.models import dlq_subject

log = structlog.get_logger("flowctl.replica")


class EventFailures:
    """Count, log once per interval, dead-letter (see the module doc)."""

    # provided by the replica
    nc: Any
    flow: str
    node: str
    key: str
    host: Any
    counters: Any
    last_error: str | None
    _acked: bool
    _dead_letters_unstored: set[int]  # id() of inputs one of whose dead letters failed
    _owns_for: Any
    _took: Any

    async def _failed_event(self, port: str, msg: Msg | None, index: int, event: Any,
                            exc: Exception) -> None:
        """Count, log (once per interval for the same failure), dead-letter, go on."""
        data = (encode(event) if msg is None
                else event_as_received(msg.data, frame_count(msg.headers), index))
        stored = await self._event_failed(port, msg.headers if msg else None, index, data, exc)
        if not stored and msg is not None and self._acked:
            self._dead_letters_unstored.add(id(msg))  # not acked: see _taken_or_again

    async def _event_failed(self, port: str, headers: dict[str, str] | None, index: int,
                            data: bytes, exc: Exception) -> bool:
        """Count, log and dead-letter event ``index`` of a message with ``headers``
        (``data``: the event): whether its dead letter was stored."""
        error = str(exc) if isinstance(exc, EventError) else f"{type(exc).__name__}: {exc}"
        eid = event_id(headers, index)
        self._count_error(f"event on port {port}: {error}", eid)
        letter = dead_letter_headers(headers, index, error)
        if (getattr(self, "_exactly_once", False) and eid
                and not (headers and HDR_REPLAY_TO in headers)):
            # the same event dead-lettered again after a crash (before its commit) is one
            # dead letter: the DLQ stream drops the repeat within its window (not for a
            # replayed one: it may fail again, and that is a new dead letter)
            letter["Nats-Msg-Id"] = f"{self.node}:{eid}"
        return await self._dead_letter(data, letter)

    async def _dead_letter_unprocessed(self, port: str, msg: Msg, events: list[Any],
                                       why: EventError) -> None:
        """An input delivered too often was never acked (see
        :func:`~componentmanager.dataplane.wire.undeliverable`): its events (this
        replica's share) fail as they are, so none goes unseen."""
        taken, owns = 0, self._owns_for(msg)
        for index, event in enumerate(events):
            try:
                if owns is not None and not owns(event):
                    continue
            except Exception:
                pass  # its key cannot be computed: it would fail here anyway
            self.counters.in_ += 1
            taken += 1
            await self._failed_event(port, msg, index, event, why)
        self._took(port, msg, taken, 0.0)

    async def reject(self, data: bytes, reason: str) -> None:
        self._count_error(reason)
        await self._dead_letter(data, dead_letter_headers(None, 0, reason))

    def _count_error(self, error: str, eid: str | None = None) -> None:
        """Count a failed event; log it (and keep it in FLOWCTL_LOGS, with its event id)
        once per interval for failures of the same shape, with a count of the others."""
        self.counters.errors += 1
        self.last_error = error
        if self.host.throttle.admit(("event failed", self.key, shape(error)), error):
            log.warning("event failed", replica=self.key, error=error, event_id=eid)
            self.host.log_line(self, f"event failed: {error}", "error", eid)

    async def _dead_letter(self, data: bytes, headers: dict[str, str]) -> bool:
        """Publish to the node's dead-letter subject (stored in FLOWCTL_DLQ; with
        at-least-once confirmed by the stream): whether it was."""
        try:
            await store_dead_letter(self.nc, dlq_subject(self.flow, self.node), data,
                                    headers, confirmed=self._acked)
            return True
        except Exception as dlq_exc:
            if self.host.throttle.admit(("dead-letter failed", self.key, shape(str(dlq_exc))),
                                     str(dlq_exc)):
                log.warning("dead-letter failed", replica=self.key, error=str(dlq_exc))
            return False

