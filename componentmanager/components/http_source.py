"""The built-in ``http`` source: a tiny HTTP/1.1 server whose POSTed JSON becomes events.

Each POSTed JSON object (or array of objects) is emitted on port ``out`` and answered
202 ``{"accepted": n}``; bad JSON is 400, a too-large body 413, another path 404, another
method 405, a failed emit 503. Keep-alive, chunked bodies and ``Expect: 100-continue`` are
supported. The type registers on import, like those in :mod:`.sources`; importing
:mod:`componentmanager.components` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from componentmanager.component import Component, Context
from componentmanager.components.sources import OUT
from componentmanager.dataplane.wire import encode
from componentmanager.registry import ComponentType, endless, register

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

    position_fields = ("host", "port", "path")

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
        too_large = self._too_large(events)
        if too_large:
            await self._respond(writer, 413, {"error": too_large}, False)
            return False
        try:
            for event in events:
                await self.ctx.emit("out", event)
        except Exception as exc:
            self.ctx.log("http source could not emit", error=str(exc))
            await self._respond(writer, 503, {"error": f"could not accept: {exc}"}, keep)
            return keep
        await self._respond(writer, 202, {"accepted": len(events)}, keep)
        return keep

    def _too_large(self, events: list[Any]) -> str | None:
        """Why the request cannot be taken whole (an event larger than NATS takes)."""
        limit = getattr(self.ctx, "max_event_bytes", None)
        if limit is None:
            return None
        for i, event in enumerate(events):
            size = len(encode(event))
            if size > limit:
                return (f"event {i} is {size:,} bytes; the largest event this flow can carry "
                        f"is {limit:,} bytes (the NATS server's max_payload)")
        return None

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


register(ComponentType(
    name="http", role="source", config_model=HttpSourceConfig, outputs=OUT,
    description="Receive events as POSTed JSON on a small built-in HTTP server.",
    impl="componentmanager.components.http_source:HttpSource",
    runs_forever=endless("it serves requests until stopped"),
    docs="POST a JSON object or an array of objects to http://host:port/path; each object "
         "is one event. Replies 202 {\"accepted\": n}, 400 for bad JSON, 404/405 otherwise.",
))
