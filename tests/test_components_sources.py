"""The built-in sources, driven through the Component API with a real context.

``nats`` runs against the real server from conftest; ``http`` talks over real local
sockets. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydantic import ValidationError

from componentmanager.components import sources
from tests.component_context import Ctx, free_port, make, until, validate


async def test_generate_count_template_and_seq() -> None:
    ctx = Ctx()
    src = make("generate", {"count": 3, "template": {
        "id": "ev-{seq}", "n": "{seq}", "fixed": 1, "nested": {"tags": ["t{seq}"]}}}, ctx)
    await src.start()
    await src.run()  # finite: returns
    assert ctx.events() == [
        {"id": f"ev-{i}", "n": i, "fixed": 1, "nested": {"tags": [f"t{i}"]}, "seq": i}
        for i in range(3)
    ]


async def test_generate_rate_paces_and_sleeps_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Ctx()
    src = make("generate", {"count": 21, "rate": 100}, ctx)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await src.run()
    assert loop.time() - t0 >= 0.19  # 21 events at 100/s: the last is due at 0.2 s
    real_sleep = asyncio.sleep
    sleeps: list[float] = []

    async def counting_sleep(delay: float, *args: Any) -> Any:
        sleeps.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(sources.asyncio, "sleep", counting_sleep)
    fast = make("generate", {"count": 5000, "rate": 50000}, Ctx())
    t0 = loop.time()
    await fast.run()
    assert loop.time() - t0 >= 0.09  # still paced: 5000 events at 50000/s take 0.1 s
    assert len(sleeps) < 200  # slept in ~5 ms ticks, not once per event


async def test_generate_forever_until_cancelled() -> None:
    ctx = Ctx()
    task = asyncio.create_task(make("generate", {}, ctx).run())
    await until(lambda: len(ctx.emitted) > 5000)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e["seq"] for e in ctx.events()[:3]] == [0, 1, 2]


async def test_file_source_lines_and_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("first\r\nsecond\n\nlast-without-newline")
    ctx = Ctx()
    src = make("file-source", {"path": str(path)}, ctx)
    await src.start()
    await src.run()
    await src.stop()
    assert ctx.events() == [{"line": "first"}, {"line": "second"}, {"line": ""},
                            {"line": "last-without-newline"}]

    path.write_text('{"a": 1}\n\nnot json\n[2]\n')
    ctx = Ctx()
    src = make("file-source", {"path": str(path), "format": "jsonl"}, ctx)
    await src.start()
    await src.run()
    await src.stop()
    assert ctx.events() == [{"a": 1}, [2]]
    [(raw, reason)] = ctx.rejected  # an error: counted and dead-lettered by the runtime
    assert raw == b"not json" and f"{path}:3 is not JSON" in reason
    assert ctx.logs[0][1]["line"] == 3


@pytest.mark.parametrize("name", ["events.jsonl", "events.NDJSON"])
async def test_file_source_reads_json_lines_files_as_json(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"a": 1}\n{"a": 2}\n')
    ctx = Ctx()
    src = make("file-source", {"path": str(path)}, ctx)
    await src.start()
    await src.run()
    await src.stop()
    assert ctx.events() == [{"a": 1}, {"a": 2}]
    ctx = Ctx()
    src = make("file-source", {"path": str(path), "format": "lines"}, ctx)  # said otherwise
    await src.start()
    await src.run()
    await src.stop()
    assert ctx.events() == [{"line": '{"a": 1}'}, {"line": '{"a": 2}'}]


async def test_file_source_missing_file_fails_at_start(tmp_path: Path) -> None:
    src = make("file-source", {"path": str(tmp_path / "nope")}, Ctx())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        await src.start()


async def test_file_source_follow_appends_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"n": 1}\n')
    ctx = Ctx()
    src = make("file-source", {"path": str(path), "format": "jsonl", "follow": True,
                               "poll_interval": 0.01}, ctx)
    await src.start()
    task = asyncio.create_task(src.run())
    try:
        await until(lambda: len(ctx.emitted) == 1)
        with path.open("a") as f:
            f.write('{"n": 2}\n{"n": ')  # a partial line waits for its end
            f.flush()
            await asyncio.sleep(0.05)
            assert ctx.events() == [{"n": 1}, {"n": 2}]
            f.write("3}\n")
        await until(lambda: len(ctx.emitted) == 3)
        path.write_text('{"n": 4}\n')  # truncated and rewritten: read from the start
        await until(lambda: len(ctx.emitted) == 4)
        assert ctx.events()[-1] == {"n": 4}
    finally:
        task.cancel()
        await src.stop()


async def http_request(port: int, raw: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Send raw HTTP bytes over a real socket; return every (status, JSON body) answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answers = []
    try:
        while True:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode().split("\r\n")
            status = int(lines[0].split()[1])
            if status == 100:
                continue
            length = next(int(h.split(":")[1]) for h in lines
                          if h.lower().startswith("content-length"))
            answers.append((status, json.loads(await reader.readexactly(length))))
            if "Connection: close" in lines:
                break
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()
    return answers


def post(body: bytes, path: str = "/ingest", close: bool = True, method: str = "POST") -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{conn}\r\n").encode() + body


async def test_http_source_accepts_posted_json() -> None:
    port = free_port()
    ctx = Ctx()
    src = make("http-source", {"port": port, "path": "/ingest"}, ctx)
    await src.start()
    task = asyncio.create_task(src.run())
    try:
        assert src.port == port
        assert await http_request(port, post(b'{"a": 1}')) == [(202, {"accepted": 1})]
        # keep-alive: two requests on one connection, the second an array
        both = post(b'{"b": 2}', close=False) + post(b'[{"c": 3}, {"d": 4}]')
        assert await http_request(port, both) == [(202, {"accepted": 1}), (202, {"accepted": 2})]
        chunked = (b"POST /ingest?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                   b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
                   b'4\r\n{"e"\r\n4\r\n: 5}\r\n0\r\n\r\n')
        assert await http_request(port, chunked) == [(202, {"accepted": 1})]
        assert ctx.events() == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}, {"e": 5}]

        assert (await http_request(port, post(b"nope")))[0][0] == 400
        assert (await http_request(port, post(b"[1, 2]")))[0][0] == 400
        assert (await http_request(port, post(b"{}", path="/other")))[0][0] == 404
        assert (await http_request(port, post(b"", method="GET")))[0][0] == 405
        assert len(ctx.emitted) == 5
    finally:
        task.cancel()
        await src.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # stop() closed the listener


async def test_http_source_refuses_oversized_bodies() -> None:
    ctx = Ctx()
    src = make("http-source", {"port": 0, "path": "/", "max_body_bytes": 10}, ctx)
    await src.start()
    try:
        assert src.port
        answers = await http_request(src.port, post(b'{"big": "xxxxxxxxxxxx"}', path="/"))
        assert answers[0][0] == 413 and not ctx.emitted
    finally:
        await src.stop()


async def test_nats_source_decodes_and_wraps_bodies(nc: Any) -> None:
    ctx = Ctx(nc)
    src = make("nats-source", {"subject": "in.>"}, ctx)
    await src.start()
    task = asyncio.create_task(src.run())
    try:
        await nc.publish("in.a", b'{"x": 1}')
        await nc.publish("in.b.c", b"plain text")
        await nc.publish("other", b'{"x": 2}')
        await nc.flush()
        await until(lambda: len(ctx.emitted) == 2)
        assert ctx.events() == [{"x": 1}, {"data": "plain text"}]
    finally:
        task.cancel()
        await src.stop()


async def test_nats_source_counts_what_its_full_queue_drops(nats_url: str) -> None:
    """A nats source flooded faster than it emits: what nats-py drops from the
    subscription's full queue reaches the replica's drop count (it was only logged)."""
    import nats

    from componentmanager.dataplane.accounting import DropRouter

    router, dropped = DropRouter(), []

    async def on_error(error: Exception) -> None:
        router.route(error)

    class Replica(Ctx):
        def count_drops_of(self, sub: Any) -> None:
            router.own(sub, dropped.append)

    conn = await nats.connect(nats_url, error_cb=on_error)
    try:
        src = make("nats-source", {"subject": "flood"}, Replica(conn))
        await src.start()  # subscribed; not running: nothing is taken off its queue
        src._sub._pending_queue._maxsize = 1000  # (nats-py: 512k messages; a smaller flood)
        for _ in range(3000):
            await conn.publish("flood", b"{}")
        await conn.flush()
        await until(lambda: sum(dropped) >= 1900, timeout=10)
        assert sum(dropped) + src._sub.pending_msgs == 3000
        await src.stop()
    finally:
        await conn.close()


async def test_nats_source_queue_group_splits_messages(nc: Any) -> None:
    ctxs = [Ctx(nc), Ctx(nc)]
    srcs = [make("nats-source", {"subject": "work", "queue": "q"}, c) for c in ctxs]
    tasks = []
    for s in srcs:
        await s.start()
        tasks.append(asyncio.create_task(s.run()))
    try:
        for i in range(50):
            await nc.publish("work", msgspec.json.encode({"i": i}))
        await until(lambda: sum(len(c.emitted) for c in ctxs) == 50)
        await asyncio.sleep(0.05)
        got = sorted(e["i"] for c in ctxs for e in c.events())
        assert got == list(range(50))  # each message exactly once across the group
    finally:
        for t in tasks:
            t.cancel()
        for s in srcs:
            await s.stop()


def test_nats_subjects_are_validated() -> None:
    with pytest.raises(ValidationError, match="invalid NATS subject"):
        validate("nats-source", {"subject": "a..b"})
    with pytest.raises(ValidationError, match="wildcards are not allowed"):
        validate("nats-sink", {"subject": "a.*"})
