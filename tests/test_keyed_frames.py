"""Keyed and stateful components take a frame at once (``process_batch``) with exactly
the results of taking its events one by one: the same windows, late events, failures,
pairs and state. Without NATS: the frames are handed over as the runner hands them
(offered at once; the event a component stops at goes through ``process``; the rest
offered again)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from componentmanager.component import EventError
from componentmanager.components.processors import Filter, FilterConfig
from componentmanager.components.stateful import Join, JoinConfig, Window, WindowConfig
from componentmanager.components.windowing import Aggregations, KeyedWindows, Shape
from tests.component_context import Ctx as Recorder


def Ctx(inputs: list[str] | None = None) -> Recorder:
    """What a component sees of the runtime (records what it emits and filters)."""
    ctx = Recorder()
    ctx.input_ports = inputs or ["in"]  # type: ignore[attr-defined]
    return ctx


async def one_by_one(comp: Any, port: str, events: list[Any]) -> list[str]:
    failed = []
    for event in events:
        try:
            await comp.process(port, event)
        except EventError as exc:
            failed.append(str(exc))
    return failed


async def in_frames(comp: Any, port: str, events: list[Any], size: int = 16) -> list[str]:
    """As the runner takes each frame of ``size`` events."""
    failed: list[str] = []
    for start in range(0, len(events), size):
        frame, i = events[start:start + size], 0
        while i < len(frame):
            took = await comp.process_batch(port, frame[i:])
            i += len(frame) - i if took is True else int(took)
            if i < len(frame):
                failed += await one_by_one(comp, port, [frame[i]])
                i += 1
    return failed


def stream(seed: int, n: int = 600) -> list[dict[str, Any]]:
    """Events mostly in time order, some out of order or very late, some broken."""
    rnd, out = random.Random(seed), []
    for i in range(n):
        ts = i * 0.05 + rnd.choice([0, 0, 0, -0.3, -2.5])
        event: dict[str, Any] = {"user": rnd.choice("abcd"), "ts": ts, "v": rnd.randint(1, 9)}
        if i % 97 == 5:
            event["v"] = "x"  # sum() of a string: the event fails
        if i % 89 == 7:
            event["ts"] = "not a time"
        out.append(event)
    return out


@pytest.mark.parametrize("config", [
    {"size": "1s", "key": "user", "time": "ts", "lateness": "0.5s"},
    {"size": "2s", "slide": "0.5s", "kind": "sliding", "key": "user", "time": "ts"},
    {"kind": "session", "gap": "0.2s", "key": "user", "time": "ts", "lateness": "1s"},
    {"size": "1s", "time": "ts"},
])
def test_a_window_takes_frames_with_the_results_of_one_by_one(config: dict[str, Any]) -> None:
    config = {**config, "aggregate": {"n": "count", "s": "sum(v)", "hi": "max(v)",
                                      "all": "collect(v)"}}
    results = []
    for take in (one_by_one, in_frames):
        ctx = Ctx()
        window = Window(WindowConfig.model_validate(config), ctx)
        failed = asyncio.run(take(window, "in", stream(7)))
        asyncio.run(window._close(float("inf")))  # what is still open, in order
        results.append((ctx.emitted, failed, json.dumps(window.snapshot())))
    assert results[0] == results[1]
    emitted, failed, _ = results[0]
    assert any(port == "late" for port, _ in emitted) and len(failed) == 14


def test_a_processing_time_frame_counts_every_event_in_one_window() -> None:
    ctx = Ctx()
    window = Window(WindowConfig.model_validate(
        {"size": "1h", "key": "user", "aggregate": {"n": "count"}}), ctx)
    assert asyncio.run(window.process_batch("in", [{"user": u} for u in "abab"])) == 4
    assert window.held() == 4 and ctx.emitted == []


def test_an_event_that_fails_in_one_of_its_windows_changes_none() -> None:
    aggs = Aggregations({"lo": ("min", lambda e: e["v"])})
    windows = KeyedWindows(Shape("sliding", size=2.0, slide=1.0), aggs)
    assert windows.add("k", 2.5, aggs.values({"v": "x"}), watermark=0)  # [1,3) and [2,4)
    assert windows.add("k", 0.5, aggs.values({"v": 3}), watermark=0)  # [0,2)
    before = json.dumps(windows.open)
    with pytest.raises(EventError, match="cannot compare"):
        windows.add("k", 1.5, aggs.values({"v": 1}), watermark=0)  # [0,2) fits, [1,3) not
    assert json.dumps(windows.open) == before


def test_a_join_takes_frames_with_the_pairs_of_one_by_one() -> None:
    rnd = random.Random(3)
    frames = [(rnd.choice(["orders", "payments"]),
               [{"id": rnd.randint(1, 12), "n": i} for i in range(rnd.randint(1, 9))])
              for _ in range(80)]
    frames.append(("orders", [{"id": 1}, {"id": [1, "a"]}, {"id": 1}]))
    results = []
    for take in (one_by_one, in_frames):
        ctx = Ctx(["orders", "payments"])
        join = Join(JoinConfig.model_validate({"key": "id"}), ctx)
        for port, events in frames:
            asyncio.run(take(join, port, events))
        waiting = {k: {p: [e for _, e in w] for p, w in g.items()}
                   for k, g in join.groups.items()}
        results.append((ctx.emitted, waiting))
    assert results[0] == results[1]
    assert len(results[0][0]) > 100 and results[0][1]


def test_a_filter_takes_a_frame_at_once_and_counts_what_it_drops() -> None:
    ctx = Ctx()
    keep = Filter(FilterConfig.model_validate({"where": "v > 2"}), ctx)
    assert asyncio.run(keep.process_batch("in", [{"v": v} for v in range(5)]))
    assert [e for _, e in ctx.emitted] == [{"v": 3}, {"v": 4}] and ctx.filtered == 3
    assert not asyncio.run(keep.process_batch("in", [{"v": 1}, {"w": 1}]))  # one fails:
    assert ctx.filtered == 3  # nothing done, each goes its own way
