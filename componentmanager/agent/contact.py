"""This agent's contact with the NATS server, and the server's clock as seen from here.

Every heartbeat an agent stores gets the server's timestamp. Right after a heartbeat is
acked the agent reads that timestamp back (:func:`flowstore.store.stored_at`): the pair
(server time, local monotonic time of the ack) anchors the server's clock on this host,
within one round trip (:meth:`Contact.server_now`). Silence is judged on that clock
against the timestamps the server gave other agents' heartbeats and the leader's lease
renewals (:func:`silent_for`), so a leader that has just taken over acts on what the
server saw at once, not after watching for a grace period of its own, and clock skew
between hosts does not matter.

Contact is *steady* while heartbeats are acked with no gap longer than
:data:`GAP_HEARTBEATS` intervals. After a gap (NATS frozen or unreachable, this process
frozen or starved) steady contact starts again at the next ack, and silence from before
that moment is no evidence (:meth:`Contact.evidence_since`): everyone else may have been
cut off just as this agent was. While contact is not steady nobody is judged at all.
Pure: the caller passes the monotonic clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

#: A gap between two acked heartbeats longer than this many intervals ends steady contact.
GAP_HEARTBEATS = 1.5


def silent_for(stored: datetime, now: datetime, evidence_since: datetime) -> float:
    """Seconds a key has gone unwritten at server time ``now``, counting only since
    ``evidence_since`` (when steady contact began)."""
    return max(0.0, (now - max(stored, evidence_since)).total_seconds())


class Contact:
    """Steadiness of this agent's heartbeats and its anchor on the server's clock."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self._anchor: tuple[datetime, float] | None = None  # (server time, monotonic)
        self._last_ack: float | None = None
        self._steady_since: float | None = None

    def acked(self, at: float) -> None:
        """A heartbeat was acked at monotonic time ``at``."""
        if self._last_ack is None or at - self._last_ack > GAP_HEARTBEATS * self.heartbeat_s:
            self._steady_since = at
        self._last_ack = at

    def anchored(self, server_time: datetime, at: float) -> None:
        """The server stored a heartbeat at ``server_time``; its ack came at ``at``."""
        self._anchor = (server_time, at)

    def server_now(self, at: float) -> datetime | None:
        """The server's clock at monotonic time ``at`` (None before the first anchor)."""
        if self._anchor is None:
            return None
        server_time, anchored_at = self._anchor
        return server_time + timedelta(seconds=at - anchored_at)

    def steady(self, at: float) -> bool:
        return (self._last_ack is not None
                and at - self._last_ack <= GAP_HEARTBEATS * self.heartbeat_s)

    def evidence_since(self, at: float) -> datetime | None:
        """Server time from which silence seen at ``at`` is evidence; None while
        contact is not steady (or the server's clock is not known yet)."""
        if not self.steady(at) or self._steady_since is None:
            return None
        return self.server_now(self._steady_since)


__all__ = ["GAP_HEARTBEATS", "Contact", "silent_for"]
