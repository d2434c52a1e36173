"""The pure bookkeeping behind "every event accounted for": throttled logging, drop
windows, slow-consumer routing and the ``degraded`` decision. Plain data, no NATS."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

from nats.errors import SlowConsumerError

from componentmanager.agent.health import HOLDING_S, ReplicaHealth, assess
from componentmanager.dataplane.accounting import DropRouter, DropWindow, Throttle, shape


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_logs_once_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    t = Throttle(interval=10, clock=clock)
    assert t.admit("boom")
    assert not any(t.admit("boom") for _ in range(599_999))
    assert t.admit("other")  # another message has its own interval
    assert t.due() == []
    clock.now = 10.0
    assert t.due() == [("boom", 599_999, None)]
    assert t.admit("other")  # its interval passed with nothing held back
    clock.now = 20.0
    assert t.due() == []
    assert t.admit("boom")


def test_throttle_summary_shows_the_last_message_as_it_was() -> None:
    clock = Clock()
    t = Throttle(interval=10, clock=clock)
    key = shape("division by zero in '100 / (seq % 50)' at seq 50")
    assert t.admit(key, "division by zero in '100 / (seq % 50)' at seq 50")
    assert not t.admit(key, "division by zero in '100 / (seq % 50)' at seq 100")
    clock.now = 10.5  # an admit after the interval, before due(): held back and counted
    assert not t.admit(key, "division by zero in '100 / (seq % 50)' at seq 150")
    assert t.due() == []
    clock.now = 21.0
    assert t.due() == [(key, 2, "division by zero in '100 / (seq % 50)' at seq 150")]


def test_failures_that_differ_only_by_numbers_share_a_key() -> None:
    assert shape("events.jsonl:3 is not JSON (byte 4)") == shape("events.jsonl:17 is not "
                                                                  "JSON (byte 9)")


def test_drop_window_counts_what_was_lost_lately() -> None:
    w = DropWindow(span=10)
    assert w.add(0, 0) == 0
    assert w.add(2, 500) == 500
    assert w.add(9, 12_345) == 12_345
    assert w.add(12, 12_345) == 11_845  # the sample at 2 s is the baseline now
    assert w.add(30, 12_345) == 0


def test_slow_consumer_reports_are_counted_on_the_owner() -> None:
    router, counted = DropRouter(), []
    sub = SimpleNamespace(_id=7)
    router.own(sub, counted.append)
    assert router.route(SlowConsumerError(subject="s", reply="", sid=7, sub=sub))
    assert not router.route(SlowConsumerError(subject="s", reply="", sid=8, sub=sub))
    assert not router.route(RuntimeError("something else"))
    router.release(sub)
    assert not router.route(SlowConsumerError(subject="s", reply="", sid=7, sub=sub))
    assert counted == [1]


def test_degraded_reasons() -> None:
    assert assess(0, None, 0.0) is None
    assert assess(12_345, "overload (input queue full)", 0.0) == (
        "dropping: overload (input queue full), 12,345 lost in the last 10 s")
    holding = assess(0, None, HOLDING_S + 1)
    assert holding is not None and holding.startswith("holding the agent's event loop: 1.5 s")
    both = assess(3, None, 4.0)
    assert both is not None and both.startswith("dropping: overload, 3 lost")
    assert "holding" in both
    told = assess(0, None, 1.0, "use await asyncio.to_thread(...)")
    assert told is not None and told.endswith("stalled in the last 10 s; use await "
                                              "asyncio.to_thread(...)")


def test_stalls_age_out_of_the_window() -> None:
    h = ReplicaHealth()
    h.stalled(0.0, 0.3)
    h.stalled(5.0, 0.4)
    assert abs(h.stalled_within(6.0) - 0.7) < 1e-9
    assert abs(h.stalled_within(12.0) - 0.4) < 1e-9
    assert h.stalled_within(20.0) == 0


async def test_a_task_that_swallows_a_cancel_is_cancelled_again() -> None:
    # Python 3.11's wait_for can swallow a cancel (nats-py waits with it); a shutdown that
    # cancelled once and awaited the task hung (seen in CI: an agent did not exit on SIGTERM).
    from componentmanager.agent.tasks import cancel_and_wait

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], 5.0) == set()
    assert task.cancelled() and swallowed == 3

    release = asyncio.Event()

    async def deaf() -> None:  # ignores every cancel until released
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    forever = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    assert await cancel_and_wait([forever], 0.5) == {forever}  # bounded: left behind
    release.set()
    await forever
