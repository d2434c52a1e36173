"""Is a running replica keeping up? Pure decisions over what the agent sampled.

A replica is ``degraded`` (with a reason a user can act on) while, within the last
:data:`WINDOW_S` seconds, it

* lost events: ``dropping: overload (slow consumer), 12,345 lost in the last 10 s``;
* held the agent's data-plane event loop (its code was on the data thread's stack while
  the loop was stalled): ``holding the agent's event loop: 4.2 s stalled in the last
  10 s; move blocking work off the loop (a sync python function runs on a worker
  thread) or give it replicas``.

:class:`ReplicaHealth` keeps the samples of one replica; :func:`assess` is the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from componentmanager.dataplane.accounting import DropWindow

WINDOW_S = 10.0
#: A data-loop stall at least this long is attributed to the replica on its stack.
STALL_S = 0.2
#: Stalled time within the window from which a replica is reported as holding the loop.
HOLDING_S = 0.5


@dataclass
class ReplicaHealth:
    drops: DropWindow = field(default_factory=lambda: DropWindow(WINDOW_S))
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)

    def stalled(self, now: float, seconds: float) -> None:
        self.stalls.append((now, seconds))

    def stalled_within(self, now: float) -> float:
        self.stalls = [(t, s) for t, s in self.stalls if now - t < WINDOW_S]
        return sum(s for _, s in self.stalls)


#: What to do about a replica holding the loop, unless its component says better
#: (:meth:`componentmanager.component.Component.blocking_advice`: an async python
#: function is told to use ``await asyncio.to_thread(...)`` or to be sync).
BLOCKING_ADVICE = ("move blocking work off the loop (a sync python function runs on a "
                   "worker thread) or give the node more replicas")


def assess(lost: int, drop_reason: str | None, stalled_s: float,
           advice: str | None = None) -> str | None:
    """The ``degraded`` reason of a running replica, or None when it keeps up. ``advice``:
    what to do when it holds the loop (default :data:`BLOCKING_ADVICE`)."""
    reasons = []
    if lost > 0:
        why = drop_reason or "overload"
        reasons.append(f"dropping: {why}, {lost:,} lost in the last {WINDOW_S:g} s")
    if stalled_s >= HOLDING_S:
        reasons.append(
            f"holding the agent's event loop: {stalled_s:.1f} s stalled in the last "
            f"{WINDOW_S:g} s; {advice or BLOCKING_ADVICE}")
    return "; ".join(reasons) or None
