"""The harness of the component tests: a real minimal context and how to build components.

:class:`Ctx` records what a component emits and logs; :func:`make` validates a config
with the type's model and constructs the class, as the agent does; :func:`lookup` finds a
type ("file-source" / "http-sink" pick the role of a shared name); :func:`until` waits for
a condition with a deadline. Shared by ``tests/test_components*.py``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from componentmanager import ComponentType, get_type


class Ctx:
    """A real, minimal runtime context: records what a component emits and logs."""

    def __init__(self, nc: Any = None, allow_inline_code: bool = False) -> None:
        self.flow, self.node, self.replica = "test-flow", "node-1", 0
        self.nc = nc
        self.allow_inline_code = allow_inline_code
        self.emitted: list[tuple[str, Any]] = []
        self.logs: list[tuple[str, dict[str, Any]]] = []
        self.filtered = 0
        self.written = 0
        self.rejected: list[tuple[bytes, str]] = []

    async def emit(self, port: str, event: Any) -> None:
        self.emitted.append((port, event))

    async def emit_batch(self, port: str, events: list[Any]) -> bool:
        self.emitted.extend((port, event) for event in events)
        return True

    def log(self, message: str, **fields: Any) -> None:
        self.logs.append((message, fields))

    async def resume_position(self) -> Any:
        return getattr(self, "resume_from", None)

    def advance(self, position: Any) -> None:
        self.position = position

    def count_filtered(self, count: int = 1) -> None:
        self.filtered += count

    exactly_once = False

    def event_id(self) -> str | None:
        return None

    def wrote(self, count: int = 1) -> None:
        self.written += count

    async def reject(self, data: bytes, reason: str) -> None:
        self.rejected.append((data, reason))

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
