"""The built-in component library, driven through the Component API with a real context.

NATS-backed types run against the real server from conftest; the http types talk over
real local sockets. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydantic import ValidationError

from componentmanager import Component, ComponentType, all_types, get_type
from componentmanager.components import sources

# ------------------------------------------------------------------------------ harness


class Ctx:
    """A real, minimal runtime context: records what a component emits and logs."""

    def __init__(self, nc: Any = None, allow_inline_code: bool = False) -> None:
        self.flow, self.node, self.replica = "test-flow", "node-1", 0
        self.nc = nc
        self.allow_inline_code = allow_inline_code
        self.emitted: list[tuple[str, Any]] = []
        self.logs: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, port: str, event: Any) -> None:
        self.emitted.append((port, event))

    def log(self, message: str, **fields: Any) -> None:
        self.logs.append((message, fields))

    def events(self, port: str = "out") -> list[Any]:
        return [e for p, e in self.emitted if p == port]


def validate(type_name: str, config: dict[str, Any]) -> Any:
    ctype = lookup(type_name)
    assert ctype is not None, type_name
    return ctype.config_model.model_validate(config)


def lookup(type_name: str) -> ComponentType:
    """A type by name; "file-source" / "http-sink" pick the role of a shared name."""
    name, _, role = type_name.rpartition("-")
    found = get_type(name, role) if role in ("source", "sink") else get_type(type_name)
    assert found is not None, type_name
    return found


def make(type_name: str, config: dict[str, Any], ctx: Ctx) -> Any:
    """Validate ``config`` with the type's model and construct its class, as the agent does."""
    return lookup(type_name).load_class()(validate(type_name, config), ctx)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- registry

EXPECTED = {
    "generate": "source", "file-source": "source", "http-source": "source",
    "nats-source": "source", "filter": "processor", "transform": "processor",
    "route": "processor", "batch": "processor", "python": "processor", "stdout": "sink",
    "file-sink": "sink", "http-sink": "sink", "nats-sink": "sink", "kv": "sink",
}


def test_every_builtin_is_registered_with_complete_metadata() -> None:
    types = {(t.name, t.role): t for t in all_types()}
    assert len(types) == len(EXPECTED)
    for qualified, role in EXPECTED.items():
        name = qualified.removesuffix(f"-{role}")
        ctype = types[(name, role)]
        assert ctype.role == role
        assert ctype.description and ctype.docs
        assert issubclass(ctype.load_class(), Component)
        assert ctype.config_model.model_config.get("extra") == "forbid"
        for field_name, field in ctype.config_model.model_fields.items():
            assert field.description, f"{name}.{field_name} has no description"
        if role == "source":
            assert [p.name for p in ctype.outputs] == ["out"] and not ctype.inputs
        else:
            assert [(p.name, p.required) for p in ctype.inputs] == [("in", True)]
        if role == "sink":
            assert not ctype.outputs
        ctype.describe()  # JSON schema renders


def test_unknown_config_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        validate("filter", {"where": "x", "wher": "y"})


# ------------------------------------------------------------------------------ sources


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
    assert src.dropped == 1 and ctx.logs[0][1]["line"] == 3


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


# --------------------------------------------------------------------------- processors


async def test_filter_keeps_matching_events_from_any_input_port() -> None:
    ctx = Ctx()
    f = make("filter", {"where": "level == 'error' and code >= 500"}, ctx)
    for port, event in [("in", {"level": "error", "code": 503}), ("in", {"level": "info"}),
                        ("in-2", {"level": "error", "code": 500}), ("in", {"code": 501})]:
        await f.process(port, event)
    assert ctx.emitted == [("out", {"level": "error", "code": 503}),
                           ("out", {"level": "error", "code": 500})]
    assert f.dropped == 2


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


async def test_route_all_first_default_and_drop() -> None:
    config = {"routes": {"big": "amount > 100", "eu": "region == 'eu'"}, "default": "rest"}
    ctx = Ctx()
    r = make("route", config, ctx)
    for e in [{"amount": 500, "region": "eu"}, {"amount": 5, "region": "eu"}, {"amount": 1}]:
        await r.process("in", e)
    assert [(p, e["amount"]) for p, e in ctx.emitted] == [
        ("big", 500), ("eu", 500), ("eu", 5), ("rest", 1)]

    ctx = Ctx()
    r = make("route", {**config, "mode": "first", "default": None}, ctx)
    for e in [{"amount": 500, "region": "eu"}, {"amount": 1}]:
        await r.process("in", e)
    assert [(p, e["amount"]) for p, e in ctx.emitted] == [("big", 500)]
    assert r.dropped == 1
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
    assert ctx.events() == [{"part": "a"}, {"part": "b"}] and p.dropped == 1
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
    with pytest.raises(TypeError, match="does not define a callable process"):
        await make("python", {"code": "x = 1"}, Ctx(allow_inline_code=True)).start()


@pytest.mark.parametrize("bad", [{}, {"code": "def process(e): return e",
                                      "function": "m:f"}, {"code": "def process(:"},
                                 {"function": "not a path"}])
def test_python_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate("python", bad)


# -------------------------------------------------------------------------------- sinks


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

        receiver.status = 500
        with pytest.raises(RuntimeError, match="answered 500"):
            await s.process("in", {"a": 2})
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(ConnectionError, match="failed"):
        await make("http-sink", {"url": url, "timeout": 1}, Ctx()).process("in", {})
    with pytest.raises(ValidationError):
        validate("http-sink", {"url": "file:///etc/passwd"})


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
    with pytest.raises(ValueError, match="is null"):
        await s.process("in", {"name": "no id"})
    with pytest.raises(ValueError, match="not a valid KV key"):
        await again.process("in", {"name": "has space"})

