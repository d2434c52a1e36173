"""The built-in sinks, driven through the Component API with a real context.

``nats`` and ``kv`` run against the real server from conftest; ``http`` posts to a real
local server. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydantic import ValidationError

from componentmanager import RetryableError
from tests.component_context import Ctx, make, validate


async def test_stdout_prints_compact_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    s = make("stdout", {"prefix": "> "}, Ctx())
    await s.process("in", {"a": 1, "b": [1, "x"]})
    await s.process("in", "text")
    assert capsys.readouterr().out == '> {"a":1,"b":[1,"x"]}\n> "text"\n'


async def test_file_sink_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "out" / "events.jsonl"
    for batch in ([{"a": 1}, {"b": 2}], [{"c": 3}]):
        s = make("file-sink", {"path": str(path)}, Ctx())
        await s.start()
        for e in batch:
            await s.process("in", e)
        await s.flush()
        if batch[0] == {"a": 1}:
            assert path.read_text() == '{"a":1}\n{"b":2}\n'  # flushed, still open
        await s.stop()
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"a": 1}, {"b": 2}, {"c": 3}]


class Receiver:
    """A real local HTTP server recording POSTed bodies, answering ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[Any] = []
        self.headers: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = next(int(h.split(":")[1]) for h in head.split("\r\n")
                      if h.lower().startswith("content-length"))
        self.headers.append(head)
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()


async def test_file_sink_killed_before_its_second_commit_cuts_back_to_the_first(
        tmp_path: Path) -> None:
    """Exactly-once: the first commit (stored before start) keeps the file's length then:
    lines of an earlier flow stay, this replica's uncommitted ones are cut."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"earlier":1}\n')
    ctx = Ctx()
    ctx.exactly_once = True
    first = make("file-sink", {"path": str(path)}, ctx).initial_commit()
    killed = make("file-sink", {"path": str(path)}, ctx)
    await killed.start()
    await killed.process_batch("in", [{"a": 1}, {"b": 2}])
    await killed.flush()  # written, never committed: then kill -9
    restarted = make("file-sink", {"path": str(path)}, ctx)
    await restarted.start()
    await restarted.recover(first)
    await restarted.process("in", {"a": 1})
    await restarted.stop()
    assert path.read_text() == '{"earlier":1}\n{"a":1}\n'


async def test_http_sink_posts_events_and_batches() -> None:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        s = make("http-sink", {"url": url, "headers": {"X-Token": "t"}}, Ctx())
        await s.process("in", {"a": 1})
        assert receiver.bodies == [{"a": 1}]
        assert "POST /hook HTTP/1.1" in receiver.headers[0] and "X-Token: t" in receiver.headers[0]

        b = make("http-sink", {"url": url, "batch_size": 2, "interval": 0.2}, Ctx())
        assert b.flush_interval == 0.2
        for i in range(3):
            await b.process("in", {"i": i})
        await b.flush()
        assert receiver.bodies[1:] == [[{"i": 0}, {"i": 1}], [{"i": 2}]]

        receiver.status = 500  # worth a retry (at-least-once tries again in place)
        with pytest.raises(RetryableError, match="answered 500"):
            await s.process("in", {"a": 2})
        receiver.status = 400  # the request itself is wrong: final
        with pytest.raises(RuntimeError, match="answered 400"):
            await s.process("in", {"a": 3})
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(ConnectionError, match="failed"):
        await make("http-sink", {"url": url, "timeout": 1}, Ctx()).process("in", {})
    with pytest.raises(ValidationError):
        validate("http-sink", {"url": "file:///etc/passwd"})


async def test_http_sink_retries_a_batch_then_dead_letters_each_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose POST fails is never dropped unseen: tried again on a 5xx, then each
    of its events is counted and dead-lettered with the reason."""
    from componentmanager.components import sinks

    monkeypatch.setattr(sinks, "BATCH_RETRY_PAUSES_S", (0.01, 0.01))
    receiver = Receiver(status=503)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        ctx = Ctx()
        b = make("http-sink", {"url": url, "batch_size": 2}, ctx)
        await b.process("in", {"i": 0})
        await b.process("in", {"i": 1})  # full: POSTed 3 times, 503 each time
        assert len(receiver.bodies) == 3 and ctx.written == 0 and b.held() == 0
        assert [json.loads(data) for data, _ in ctx.rejected] == [{"i": 0}, {"i": 1}]
        assert "answered 503" in ctx.rejected[0][1] and "a batch of 2" in ctx.rejected[0][1]
        receiver.status = 200
        await b.process("in", {"i": 2})
        await b.flush()
        assert ctx.written == 1 and len(ctx.rejected) == 2
    finally:
        server.close()
        await server.wait_closed()


async def test_nats_sink_publishes_json(nc: Any) -> None:
    sub = await nc.subscribe("results.x")
    s = make("nats-sink", {"subject": "results.x"}, Ctx(nc))
    await s.start()
    await s.process("in", {"ok": True})
    await s.flush()
    msg = await sub.next_msg(timeout=2)
    assert msgspec.json.decode(msg.data) == {"ok": True}
    await s.stop()


async def test_kv_sink_creates_bucket_and_puts_by_key(nc: Any) -> None:
    s = make("kv", {"bucket": "users", "key": "'user.' + str(id)"}, Ctx(nc))
    await s.start()  # the bucket does not exist yet: created
    await s.process("in", {"id": 7, "name": "Ada"})
    await s.process("in", {"id": 7, "name": "Ada L."})
    kv = await nc.jetstream().key_value("users")
    entry = await kv.get("user.7")
    assert msgspec.json.decode(entry.value) == {"id": 7, "name": "Ada L."}
    again = make("kv", {"bucket": "users", "key": "name"}, Ctx(nc))
    await again.start()  # existing bucket: reused
    with pytest.raises(ValueError, match=r"field 'id' is not in the event"):
        await s.process("in", {"name": "no id"})
    with pytest.raises(ValueError, match="not a valid KV key"):
        await again.process("in", {"name": "has space"})
