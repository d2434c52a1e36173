"""The built-in processors, driven through the Component API with a real context.

Nothing is mocked: expressions compile for real, ``python`` imports a real module.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from componentmanager import get_type
from componentmanager.component import EventTooLarge
from componentmanager.components.expressions import EvaluationError
from tests.component_context import Ctx, make, validate


async def test_filter_keeps_matching_events_from_any_input_port() -> None:
    ctx = Ctx()
    f = make("filter", {"where": "level == 'error' and code >= 500"}, ctx)
    for port, event in [("in", {"level": "error", "code": 503}), ("in", {"level": "info"}),
                        ("in-2", {"level": "error", "code": 500}),
                        ("in", {"level": "warn", "code": 501})]:
        await f.process(port, event)
    assert ctx.emitted == [("out", {"level": "error", "code": 503}),
                           ("out", {"level": "error", "code": 500})]
    assert ctx.filtered == 2


async def test_filter_on_a_missing_field_fails_the_event() -> None:
    ctx = Ctx()
    f = make("filter", {"where": "amont > 50"}, ctx)  # misspelled: never a silent drop
    with pytest.raises(EvaluationError, match="field 'amont' is not in the event"):
        await f.process("in", {"amount": 70})
    assert ctx.emitted == [] and ctx.filtered == 0


async def test_transform_on_missing_or_mistyped_fields_fails_the_event() -> None:
    ctx = Ctx()
    t = make("transform", {"set": {"total": "amount * qty"}}, ctx)
    with pytest.raises(EvaluationError, match="field 'amount' is not in the event"):
        await t.process("in", {"price": 1})
    with pytest.raises(EvaluationError, match=r"'\*' needs two numbers, got string and number"):
        await t.process("in", {"amount": "str", "qty": 2})
    t = make("transform", {"set": {"total": "get(amount, 0) * get(qty, 1)"}}, ctx)
    await t.process("in", {"amount": 3})
    assert ctx.events() == [{"amount": 3, "total": 3}]


def test_filter_rejects_a_bad_expression_at_validation() -> None:
    with pytest.raises(ValidationError, match="lambda is not allowed"):
        validate("filter", {"where": "(lambda: 1)()"})


async def test_transform_sets_renames_drops_without_mutating_input() -> None:
    ctx = Ctx()
    t = make("transform", {
        "set": {"total": "price * qty", "user.email": "lower(user.email)", "qty": "qty + 1"},
        "rename": {"user.email": "email", "ghost": "never"},
        "drop": ["secret", "user.password"],
    }, ctx)
    event = {"price": 2, "qty": 3, "secret": "s", "user": {"email": "A@B.C", "password": "p"}}
    snapshot = json.loads(json.dumps(event))
    await t.process("in", event)
    assert ctx.events() == [{"price": 2, "qty": 4, "total": 6, "user": {}, "email": "a@b.c"}]
    assert event == snapshot
    with pytest.raises(TypeError, match="JSON object"):
        await t.process("in", [1])


async def test_transform_setting_top_level_fields_sees_the_input_event() -> None:
    ctx = Ctx()  # the fast path for set-only transforms behaves as the general one
    many = make("transform", {"set": {"qty": "qty + 1", "total": "price * qty"}}, ctx)
    one = make("transform", {"set": {"double": "price * 2"}}, ctx)
    event = {"price": 2, "qty": 3}
    await many.process("in", event)
    await one.process("in", event)
    assert ctx.events() == [{"price": 2, "qty": 4, "total": 6}, {"price": 2, "qty": 3,
                                                                 "double": 4}]
    assert event == {"price": 2, "qty": 3}
    for t in (many, one):
        with pytest.raises(TypeError, match="JSON object"):
            await t.process("in", [1])
    with pytest.raises(EvaluationError, match="not a finite number"):
        await one.process("in", {"price": 1e308})


async def test_transform_changes_owned_frames_in_place_only_when_that_is_safe() -> None:
    """Events decoded for this call alone (``batch_owned``) get the field set in place;
    not when the expression reads the field it sets, not when the frame fails."""
    ctx = Ctx()
    ctx.batch_owned = True
    double = make("transform", {"set": {"double": "price * 2"}}, ctx)
    frame = [{"price": 1}, {"price": 2}]
    assert await double.process_batch("in", frame) is True
    assert frame == [{"price": 1, "double": 2}, {"price": 2, "double": 4}]
    assert [e for _, e in ctx.emitted] == frame and ctx.emitted[0][1] is frame[0]
    for config in ({"count": "count + 1"}, {"count": "event.count + 1"},
                   {"count": "1 if has(count) else 0"}):
        ctx.emitted.clear()
        reads = make("transform", {"set": config}, ctx)
        frame = [{"count": 1}]
        assert await reads.process_batch("in", frame) is True
        assert frame == [{"count": 1}] and ctx.emitted[0][1] is not frame[0], config
    ctx.emitted.clear()
    frame = [{"price": 1}, "text", {"price": 3}]  # one fails: none is changed
    assert await double.process_batch("in", frame) is False
    assert frame == [{"price": 1}, "text", {"price": 3}] and ctx.emitted == []
    ctx.batch_owned = False  # fed by a fused node: copies
    frame = [{"price": 5}]
    assert await double.process_batch("in", frame) is True
    assert frame == [{"price": 5}] and ctx.emitted[0][1] == {"price": 5, "double": 10}


async def test_route_all_first_default_and_drop() -> None:
    config = {"routes": {"big": "amount > 100", "eu": "region == 'eu'"}, "default": "rest"}
    ctx = Ctx()
    r = make("route", config, ctx)
    for e in [{"amount": 500, "region": "eu"}, {"amount": 5, "region": "eu"},
              {"amount": 1, "region": "us"}]:
        await r.process("in", e)
    assert [(p, e["amount"]) for p, e in ctx.emitted] == [
        ("big", 500), ("eu", 500), ("eu", 5), ("rest", 1)]

    ctx = Ctx()
    r = make("route", {**config, "mode": "first", "default": None}, ctx)
    for e in [{"amount": 500, "region": "eu"}, {"amount": 1, "region": "us"}]:
        await r.process("in", e)
    assert [(p, e["amount"]) for p, e in ctx.emitted] == [("big", 500)]
    assert ctx.filtered == 1
    assert get_type("route").output_names(config) == ["big", "eu", "rest"]
    assert get_type("route").dynamic_outputs


@pytest.mark.parametrize("bad", [{"routes": {}}, {"routes": {"a.b": "x"}},
                                 {"routes": {"dlq": "x"}}, {"routes": {"a": "x"}, "default": "*"},
                                 {"routes": {"a": "__import__('os')"}}])
def test_route_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate("route", bad)


async def test_batch_by_size_and_by_flush() -> None:
    ctx = Ctx()
    b = make("batch", {"size": 2, "interval": 0.5}, ctx)
    assert b.flush_interval == 0.5 and type(b).flush_interval is None
    for i in range(5):
        await b.process("in", {"i": i})
    assert ctx.events() == [{"events": [{"i": 0}, {"i": 1}], "count": 2},
                            {"events": [{"i": 2}, {"i": 3}], "count": 2}]
    await b.flush()
    await b.flush()  # nothing pending: emits nothing
    assert ctx.events()[2:] == [{"events": [{"i": 4}], "count": 1}]
    assert make("batch", {"size": 10}, Ctx()).flush_interval is None


class SmallServerCtx(Ctx):
    """A context whose server takes events of at most 60 encoded bytes (as emit does)."""

    async def emit(self, port: str, event: Any) -> None:
        size = len(json.dumps(event, separators=(",", ":")))
        if size > 60:
            raise EventTooLarge(f"an event of {size} bytes is larger than the server allows")
        await super().emit(port, event)


async def test_batch_too_large_for_the_server_is_split_and_what_cannot_fit_dead_lettered(
        ) -> None:
    ctx = SmallServerCtx()
    b = make("batch", {"size": 4}, ctx)
    for event in ({"i": 0}, {"i": 1}, {"big": "x" * 80}, {"i": 3}):
        await b.process("in", event)
    assert ctx.events() == [{"events": [{"i": 0}, {"i": 1}], "count": 2},
                            {"events": [{"i": 3}], "count": 1}]
    assert [json.loads(data) for data, _ in ctx.rejected] == [{"big": "x" * 80}]
    assert "larger than the server allows" in ctx.rejected[0][1] and b.held() == 0


async def test_python_function_from_a_module(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flowctl_test_udf.py").write_text(textwrap.dedent("""
        def explode(event):
            if event.get("skip"):
                return None
            return [{"part": p} for p in event["parts"]]

        async def tag(event):
            return {**event, "tagged": True}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = Ctx()
    p = make("python", {"function": "flowctl_test_udf:explode"}, ctx)
    await p.start()
    await p.process("in", {"parts": ["a", "b"]})
    await p.process("in", {"skip": True})
    await p.process("in", {"parts": []})  # [] drops the event as None does: counted
    assert ctx.events() == [{"part": "a"}, {"part": "b"}] and ctx.filtered == 2
    ctx = Ctx()
    p = make("python", {"function": "flowctl_test_udf:tag"}, ctx)
    await p.start()
    await p.process("in", {"x": 1})
    assert ctx.events() == [{"x": 1, "tagged": True}]
    with pytest.raises(TypeError, match="does not define a callable"):
        await make("python", {"function": "flowctl_test_udf:missing"}, Ctx()).start()
    with pytest.raises(ImportError, match="cannot import"):
        await make("python", {"function": "no_such_module_x:f"}, Ctx()).start()


async def test_python_inline_code_only_when_allowed() -> None:
    code = "def process(event):\n    return {**event, 'double': event['n'] * 2}\n"
    with pytest.raises(PermissionError, match="inline 'code' is disabled"):
        await make("python", {"code": code}, Ctx()).start()
    ctx = Ctx(allow_inline_code=True)
    p = make("python", {"code": code}, ctx)
    await p.start()
    await p.process("in", {"n": 21})
    assert ctx.events() == [{"n": 21, "double": 42}]
    with pytest.raises(TypeError, match="does not define a function process"):
        await make("python", {"code": "x = 1"}, Ctx(allow_inline_code=True)).start()


@pytest.mark.parametrize("bad", [{}, {"code": "def process(e): return e",
                                      "function": "m:f"}, {"code": "def process(:"},
                                 {"function": "not a path"}])
def test_python_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate("python", bad)


RECORDS_ITS_THREAD = """\
import threading, time
calls = []
def process(event):
    time.sleep(event.get("sleep", 0))
    calls.append(threading.current_thread().name)
    return event
"""


async def _max_loop_lag(work: Any) -> float:
    """How long the event loop was held at most while ``work`` ran (a 10 ms ticker)."""
    import asyncio

    lag, done = 0.0, asyncio.Event()

    async def tick() -> None:
        nonlocal lag
        loop = asyncio.get_running_loop()
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lag = max(lag, loop.time() - t0 - 0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    await work
    done.set()
    await ticker
    return lag


async def test_python_sync_first_call_runs_on_its_worker_thread() -> None:
    """A first call that blocks 1 s (a model loaded, say) does not hold the loop; a quick
    function then runs inline until a call blocks, from then on on its worker thread."""
    import threading

    ctx = Ctx(allow_inline_code=True)
    slow_start = make("python", {"code": RECORDS_ITS_THREAD}, ctx)
    await slow_start.start()
    assert await _max_loop_lag(slow_start.process("in", {"sleep": 1.0})) < 0.3
    await slow_start.process("in", {"n": 1})
    calls = slow_start._fn.__globals__["calls"]
    assert all(name.startswith("flowctl-") for name in calls) and len(calls) == 2
    [(said, _)] = ctx.logs  # once, about the first call
    assert said.startswith("the function blocks (10") and said.endswith(
        "ms for one call); it runs on a worker thread")
    await slow_start.stop()

    here = threading.current_thread().name
    for _ in range(5):  # a starved machine can make a quick call look slow: try again
        quick = make("python", {"code": RECORDS_ITS_THREAD}, Ctx(allow_inline_code=True))
        await quick.start()
        for event in ({"n": 1}, {"n": 2}, {"sleep": 0.05}, {"n": 3}):
            await quick.process("in", event)
        calls = quick._fn.__globals__["calls"]
        assert quick.blocking_advice() is None  # the general advice fits a sync function
        await quick.stop()
        if [name == here for name in calls] == [False, True, True, False]:
            break
    assert [name == here for name in calls] == [False, True, True, False]


async def test_python_async_function_is_told_what_an_async_function_does() -> None:
    code = "async def process(event):\n    return event\n"
    p = make("python", {"code": code}, Ctx(allow_inline_code=True))
    await p.start()
    await p.process("in", {"n": 1})
    advice = p.blocking_advice()
    assert advice is not None and "await asyncio.to_thread(" in advice
    assert "make the function sync" in advice
    await p.stop()


def test_a_transform_emits_events_nothing_else_holds() -> None:
    """A fused node after a transform owns what it is fed (see runners.fusion)."""
    from componentmanager.components.processors import Filter, Transform

    assert Transform.emits_owned is True
    assert getattr(Filter, "emits_owned", False) is False  # it passes its input on


async def test_a_frame_computed_at_once_gives_what_each_event_would() -> None:
    """``field <op> constant`` over a frame in C-level passes: the same values; anything
    irregular (a bool, a missing field, a string, inf, a division by zero) raises, and the
    transform takes that frame one by one, where each event gets its own answer."""
    from componentmanager.components.expressions import compile_expression

    frame = [{"v": 3}, {"v": -2.5}, {"v": 10**30}]
    for text in ("v * 2", "v + 0.5", "v / 4", "v // 3", "v % 7", "v - 1"):
        expr = compile_expression(text)
        assert expr.frame(frame) == [expr.evaluate(e) for e in frame], text
    for bad in ([{"v": True}], [{"w": 1}], [{"v": "x"}], [{"v": 1e308}], [[1]]):
        with pytest.raises(Exception):  # noqa: B017  (whatever it is: one by one then)
            compile_expression("v * 10").frame(bad)
    with pytest.raises(ZeroDivisionError):
        compile_expression("v / 0").frame([{"v": 1}])
    ctx = Ctx()
    ctx.batch_owned = True
    t = make("transform", {"set": {"w": "v * 10"}}, ctx)
    assert await t.process_batch("in", [{"v": 1}, {"v": True}]) is False  # one by one:
    await t.process("in", {"v": 1})
    with pytest.raises(EvaluationError, match="needs two numbers"):
        await t.process("in", {"v": True})
    assert ctx.events() == [{"v": 1, "w": 10}]
