"""Built-in sources: ``generate``, ``file``, ``http`` and ``nats``; each emits on port ``out``.

A source's ``run()`` returns when it is finished (``generate`` with a ``count``, ``file``
without ``follow``) and otherwise runs until it is cancelled; ``stop()`` releases what
``start()`` opened (it is safe to call even when ``start()`` failed half-way).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from componentmanager.component import Component, Context
from componentmanager.registry import ComponentType, Port, register

OUT = (Port("out", description="the events this source produces"),)
PACE_TICK_S = 0.005  # a paced generator sleeps once per this much of its schedule
YIELD_EVERY = 1000  # an unpaced generator yields to the event loop this often


def decode_body(data: bytes) -> Any:
    """A JSON message body as an event; a body that is not JSON becomes ``{"data": text}``."""
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {"data": data.decode("utf-8", "replace")}


# ------------------------------------------------------------------------------ generate


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int | None = Field(
        default=None, ge=0, description="How many events to emit; null (the default) = forever."
    )
    rate: float | None = Field(
        default=None, gt=0, description="Events per second; null = as fast as possible."
    )
    template: dict[str, Any] = Field(
        default_factory=dict,
        description='The JSON object every event starts from. In string values (nested too) '
        '"{seq}" is replaced by the sequence number; a value that is exactly "{seq}" becomes '
        "the number itself. The field seq is always set to the sequence number (0, 1, ...).",
    )


def _template(value: Any) -> Callable[[int], Any]:
    """Compile a template value once into a function of the sequence number."""
    if isinstance(value, str):
        if value == "{seq}":
            return lambda seq: seq
        if "{seq}" in value:
            parts = value.split("{seq}")
            return lambda seq: str(seq).join(parts)
        return lambda seq: value
    if isinstance(value, dict):
        items = [(k, _template(v)) for k, v in value.items()]
        return lambda seq: {k: f(seq) for k, f in items}
    if isinstance(value, list):
        fns = [_template(v) for v in value]
        return lambda seq: [f(seq) for f in fns]
    return lambda seq: value


class GenerateSource(Component):
    """Emits ``count`` events (or forever) built from ``template``, paced to ``rate``."""

    def __init__(self, config: GenerateConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: GenerateConfig = config
        self._build = _template(config.template)

    def make_event(self, seq: int) -> dict[str, Any]:
        event = self._build(seq)
        event["seq"] = seq
        return event

    async def run(self) -> None:
        count, rate, emit = self.config.count, self.config.rate, self.ctx.emit
        loop = asyncio.get_running_loop()
        begin = loop.time()
        seq = 0
        while count is None or seq < count:
            if rate is not None:
                ahead = begin + seq / rate - loop.time()
                if ahead >= PACE_TICK_S:  # sleep per batch, never per event at high rates
                    await asyncio.sleep(ahead)
                elif ahead < -1.0:  # fell behind by over a second: don't burst to catch up
                    begin = loop.time() - seq / rate
            elif seq and seq % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            await emit("out", self.make_event(seq))
            seq += 1


# ---------------------------------------------------------------------------------- file


class FileSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="The file to read.")
    format: Literal["lines", "jsonl"] = Field(
        default="lines",
        description='lines: each line becomes {"line": text}; jsonl: each line is one JSON '
        "event (blank lines are skipped, invalid ones logged and skipped).",
    )
    follow: bool = Field(
        default=False,
        description="Keep reading lines appended later (like tail -f; survives truncation "
        "and rotation) instead of finishing at the end of the file.",
    )
    poll_interval: float = Field(
        default=0.25, gt=0, description="Seconds between checks for new data when following."
    )


class FileSource(Component):
    """Reads a text file line by line (blocking reads happen in a worker thread)."""

    CHUNK = 1 << 16

    def __init__(self, config: FileSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: FileSourceConfig = config
        self._fh: Any = None
        self.lineno = 0
        self.dropped = 0

    async def start(self) -> None:
        try:
            self._fh = open(self.config.path, "rb")  # noqa: SIM115 - closed in stop()
        except FileNotFoundError:
            raise FileNotFoundError(f"file source: {self.config.path} does not exist") from None

    async def run(self) -> None:
        pending = b""
        while True:
            chunk = await asyncio.to_thread(self._fh.read, self.CHUNK)
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    await self._emit_line(line)
                continue
            if not self.config.follow:
                if pending:
                    await self._emit_line(pending)
                return
            if self._replaced():
                if pending:
                    await self._emit_line(pending)
                    pending = b""
                self._fh.close()
                self._fh = open(self.config.path, "rb")  # noqa: SIM115
                continue
            await asyncio.sleep(self.config.poll_interval)

    def _replaced(self) -> bool:
        """True when the path now names another file (rotation) or was truncated."""
        try:
            st = os.stat(self.config.path)
        except FileNotFoundError:
            return False  # rotated away and not recreated yet: keep waiting
        cur = os.fstat(self._fh.fileno())
        return (st.st_ino, st.st_dev) != (cur.st_ino, cur.st_dev) or st.st_size < self._fh.tell()

    async def _emit_line(self, raw: bytes) -> None:
        self.lineno += 1
        text = raw.decode("utf-8", "replace").removesuffix("\r")
        if self.config.format == "lines":
            await self.ctx.emit("out", {"line": text})
            return
        if not text.strip():
            return
        try:
            event = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            self.dropped += 1
            self.ctx.log("skipping a line that is not JSON", line=self.lineno, error=str(exc))
            return
        await self.ctx.emit("out", event)

    async def stop(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------------------------- http

_REASONS = {202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


class HttpSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 = all).")
    port: int = Field(
        default=8080, ge=0, le=65535, description="TCP port to listen on (0 = any free port)."
    )
    path: str = Field(
        default="/", pattern=r"^/", description="URL path that accepts POSTs; others get 404."
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Larger request bodies are refused (413)."
    )


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpSource(Component):
    """A tiny HTTP/1.1 server: each POSTed JSON object (or array of objects) is emitted,
    then answered 202 ``{"accepted": n}``. Keep-alive, chunked bodies and
    ``Expect: 100-continue`` are supported. Replicas on one host share the port
    (SO_REUSEPORT) where the OS allows it."""

    def __init__(self, config: HttpSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: HttpSourceConfig = config
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port: int | None = None  # the bound port, known after start()

    async def start(self) -> None:
        reuse = hasattr(socket, "SO_REUSEPORT") and self.config.port != 0
        self._server = await asyncio.start_server(
            self._serve, self.config.host, self.config.port, reuse_port=reuse or None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.ctx.log("http source listening", host=self.config.host, port=self.port,
                     path=self.config.path)

    async def run(self) -> None:
        await asyncio.Event().wait()  # serves until cancelled

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed the connection
        except asyncio.LimitOverrunError:
            await self._respond(writer, 431, {"error": "headers too large"}, False)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            await self._respond(writer, 400, {"error": "malformed request line"}, False)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        try:
            body = await self._body(reader, writer, headers)
            if target.split("?", 1)[0] != self.config.path:
                raise _HttpError(404, f"no such path: use {self.config.path}")
            if method != "POST":
                raise _HttpError(405, "only POST is accepted")
            events = self._decode(body)
        except _HttpError as exc:
            keep = keep and exc.status not in (400, 413)
            await self._respond(writer, exc.status, {"error": str(exc)}, keep)
            return keep
        try:
            for event in events:
                await self.ctx.emit("out", event)
        except Exception as exc:
            self.ctx.log("http source could not emit", error=str(exc))
            await self._respond(writer, 503, {"error": f"could not accept: {exc}"}, keep)
            return keep
        await self._respond(writer, 202, {"accepted": len(events)}, keep)
        return keep

    async def _body(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    headers: dict[str, str]) -> bytes:
        limit = self.config.max_body_bytes
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            length = 0 if chunked else int(headers.get("content-length", "0"))
        except ValueError:
            raise _HttpError(400, "bad Content-Length") from None
        if length > limit or length < 0:
            raise _HttpError(413, f"body larger than {limit} bytes")
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not chunked:
            return await reader.readexactly(length)
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, "bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return bytes(body)
            body += await reader.readexactly(size + 2)
            del body[-2:]
            if len(body) > limit:
                raise _HttpError(413, f"body larger than {limit} bytes")

    @staticmethod
    def _decode(body: bytes) -> list[dict[str, Any]]:
        try:
            value = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise _HttpError(400, f"body is not JSON: {exc}") from None
        events = value if isinstance(value, list) else [value]
        if not all(isinstance(e, dict) for e in events):
            raise _HttpError(400, "body must be a JSON object or an array of objects")
        return events

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any],
                       keep: bool) -> None:
        data = msgspec.json.encode(body)
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n")
        if status == 405:
            head += "Allow: POST\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()


# ---------------------------------------------------------------------------------- nats


def check_subject(subject: str, wildcards: bool) -> str:
    """Validate a NATS subject (``wildcards``: ``*`` and a final ``>`` allowed)."""
    tokens = subject.split(".")
    if not subject or any(not t or any(c.isspace() for c in t) for t in tokens):
        raise ValueError(f"invalid NATS subject {subject!r}: empty token or whitespace")
    for i, token in enumerate(tokens):
        wild = token in ("*", ">")
        if wild and not wildcards:
            raise ValueError(f"wildcards are not allowed in subject {subject!r}")
        if (token == ">" and i != len(tokens) - 1) or (not wild and ("*" in token or ">" in token)):
            raise ValueError(f"invalid wildcard in subject {subject!r}")
    return subject


class NatsSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(description="Subject to subscribe to; wildcards * and > are allowed.")
    queue: str | None = Field(
        default=None,
        description="Queue group: replicas sharing it split the messages. Without one every "
        "replica receives every message.",
    )

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_subject(value, wildcards=True)


class NatsSource(Component):
    """Subscribes through ``ctx.nc``; JSON bodies are emitted decoded, others as ``{"data"}``."""

    def __init__(self, config: NatsSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: NatsSourceConfig = config
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.ctx.nc.subscribe(self.config.subject, queue=self.config.queue or "")

    async def run(self) -> None:
        async for msg in self._sub.messages:
            await self.ctx.emit("out", decode_body(msg.data))

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


_MOD = "componentmanager.components.sources"

register(ComponentType(
    name="generate", role="source", config_model=GenerateConfig, outputs=OUT,
    description="Generate events from a template, optionally paced and counted.",
    impl=f"{_MOD}:GenerateSource",
    docs="Emits {**template, seq: n} for n = 0, 1, ...; count: null runs forever. "
         '"{seq}" inside template strings is replaced by n. rate paces to events/s '
         "(sleeping per batch, not per event). Finishes after count events.",
))
register(ComponentType(
    name="file", role="source", config_model=FileSourceConfig, outputs=OUT,
    description="Read a file as text lines or JSON lines, optionally following it.",
    impl=f"{_MOD}:FileSource",
    docs='format lines emits {"line": text}; jsonl emits each decoded line. Without follow '
         "the source finishes at the end of the file; with follow it waits for more.",
))
register(ComponentType(
    name="http", role="source", config_model=HttpSourceConfig, outputs=OUT,
    description="Receive events as POSTed JSON on a small built-in HTTP server.",
    impl=f"{_MOD}:HttpSource",
    docs="POST a JSON object or an array of objects to http://host:port/path; each object "
         "is one event. Replies 202 {\"accepted\": n}, 400 for bad JSON, 404/405 otherwise.",
))
register(ComponentType(
    name="nats", role="source", config_model=NatsSourceConfig, outputs=OUT,
    description="Subscribe to a NATS subject and emit each message.",
    impl=f"{_MOD}:NatsSource",
    docs='JSON bodies are emitted decoded; other bodies as {"data": text}. Set queue to '
         "split messages between replicas.",
))
