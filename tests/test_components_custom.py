"""The ``custom`` source, processor and sink: inline Python run in-process."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from componentmanager import get_type
from componentmanager.dataplane.wire import encode
from tests.component_context import Ctx


def custom(role: str, code: str, ctx: Ctx) -> Any:
    ctype = get_type("custom", role)
    assert ctype is not None
    return ctype.load_class()(ctype.config_model.model_validate({"code": code}), ctx)


class EncodingCtx(Ctx):
    """Encodes what is emitted, as the runtime does (a value that is not JSON raises)."""

    async def emit(self, port: str, event: Any) -> None:
        encode(event)
        await super().emit(port, event)


async def run_source(code: str, ctx: Ctx | None = None) -> Ctx:
    ctx = ctx or Ctx(allow_inline_code=True)
    source = custom("source", code, ctx)
    await source.start()
    await source.run()
    await source.stop()
    return ctx


async def test_a_source_emits_what_its_generator_yields_and_ends_when_it_returns() -> None:
    ctx = await run_source("def events():\n    for n in range(3):\n        yield {'n': n}\n")
    assert ctx.events() == [{"n": 0}, {"n": 1}, {"n": 2}]
    ctx = await run_source("import asyncio\nasync def events():\n    for n in range(2):\n"
                           "        await asyncio.sleep(0)\n        yield {'n': n}\n")
    assert ctx.events() == [{"n": 0}, {"n": 1}]
    ctx = await run_source("def events():\n    return [{'a': 1}]\n")  # an iterable
    assert ctx.events() == [{"a": 1}]


async def test_a_blocking_generator_moves_to_a_thread_and_keeps_its_order() -> None:
    ctx = await run_source("import time\ndef events():\n    for n in range(5):\n"
                           "        time.sleep(0.005)\n        yield n\n")
    assert ctx.events() == [0, 1, 2, 3, 4]
    assert any("runs on a worker thread" in message for message, _ in ctx.logs)


async def test_a_value_that_is_not_json_is_rejected_and_the_source_goes_on() -> None:
    ctx = await run_source("class Odd:\n    def __repr__(self):\n        return 'Odd()'\n"
                           "def events():\n    yield {'ok': 1}\n    yield Odd()\n"
                           "    yield {'ok': 2}\n", EncodingCtx(allow_inline_code=True))
    assert ctx.events() == [{"ok": 1}, {"ok": 2}]
    [(data, reason)] = ctx.rejected
    assert data == b"Odd()" and "not JSON" in reason


async def test_a_processor_returns_an_event_a_list_or_none() -> None:
    ctx = Ctx(allow_inline_code=True)
    p = custom("processor", "def process(e):\n    return None if e.get('skip') else "
               "[e, e] if e.get('twice') else {**e, 'seen': True}\n", ctx)
    await p.start()
    for event in ({"a": 1}, {"skip": True}, {"twice": 1}):
        await p.process("in", event)
    await p.stop()
    assert ctx.events() == [{"a": 1, "seen": True}, {"twice": 1}, {"twice": 1}]
    assert ctx.filtered == 1


async def test_a_sink_writes_flushes_and_closes() -> None:
    code = ("seen = []\ndef write(event):\n    seen.append(event['n'])\n"
            "def flush():\n    seen.append('flush')\n"
            "async def close():\n    seen.append('close')\n    raise SystemExit(seen)\n")
    ctx = Ctx(allow_inline_code=True)
    sink = custom("sink", code, ctx)
    await sink.start()
    for n in range(3):
        await sink.process("in", {"n": n})
    await sink.flush()
    with pytest.raises(SystemExit) as stopped:
        await sink.stop()
    assert stopped.value.args[0] == [0, 1, 2, "flush", "close"] and ctx.written == 3
    failing = custom("sink", "def write(event):\n    raise ValueError('no')\n", ctx)
    await failing.start()
    with pytest.raises(ValueError):  # the runner counts it in errors and dead-letters it
        await failing.process("in", {})
    assert ctx.written == 3


@pytest.mark.parametrize("role,name", [("source", "events"), ("processor", "process"),
                                       ("sink", "write")])
async def test_inline_code_needs_permission_and_its_function(role: str, name: str) -> None:
    with pytest.raises(PermissionError, match="inline 'code' is disabled"):
        await custom(role, f"def {name}(*a):\n    pass\n", Ctx()).start()
    with pytest.raises(TypeError, match=rf"does not define a function {name}\(\)"):
        await custom(role, "x = 1\n", Ctx(allow_inline_code=True)).start()
    with pytest.raises(ValidationError, match="does not compile"):
        custom(role, "def broken(:\n", Ctx())
