"""Rendering for reading commands: ``-o table`` (rich), ``-o json``, ``-o yaml``.

Every reading command builds plain JSON-ready data first, then calls :func:`show`; the
table view is a projection of that same data, so json/yaml never lose information.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Format(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"

    @property
    def tabular(self) -> bool:
        """table or wide: text for people, not data."""
        return self in (Format.table, Format.wide)


#: Set by ``--watch`` on a terminal: tables drawn into a buffer get the terminal's width.
FORCE_WIDTH: int | None = None

Rows = Callable[[Any], list[Sequence[Any]]]


def show(
    data: Any,
    fmt: Format,
    columns: Sequence[str] | None = None,
    rows: Rows | None = None,
    title: str | None = None,
    wide: tuple[Sequence[str], Rows] | None = None,
) -> None:
    """Print ``data`` in ``fmt``; for tables, ``rows(data)`` gives one row per item;
    ``-o wide`` uses ``wide`` (columns, rows) when given, else the table."""
    if fmt == Format.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif fmt == Format.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    elif fmt == Format.wide and wide is not None:
        table(wide[0], wide[1](data), title)
    else:
        assert columns is not None and rows is not None
        table(columns, rows(data), title)


def table(columns: Sequence[str], rows: list[Sequence[Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for i, col in enumerate(columns):
        last = i == len(columns) - 1  # only the last (free text) column may fold
        t.add_column(col, overflow="fold", no_wrap=not last)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console = Console(soft_wrap=True, width=FORCE_WIDTH)
    if FORCE_WIDTH is None and not console.is_terminal:  # a pipe or file: never folded
        console = Console(soft_wrap=True, width=1000)
    console.on_broken_pipe = _reader_gone  # type: ignore[method-assign]
    console.print(t)


def _reader_gone() -> None:
    """rich's own handling of a closed pipe exits 1; the reader going away (`| head`)
    is a normal end: exit 0, quietly."""
    from cli.errors import quiet_broken_pipe

    quiet_broken_pipe()


def age(ts: str | None) -> str:
    """'3s', '5m', '2h', '4d' since an ISO timestamp."""
    if not ts:
        return ""
    then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    secs = max(0.0, (datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit}"
    return f"{secs:.0f}s" if secs >= 10 else f"{secs:.1f}s"


def _redacted(message: str) -> str:
    from flowstore.nats import redact

    return redact(message)


def err(message: str) -> None:
    """An error line on stderr (URL secrets hidden)."""
    sys.stderr.write(f"error: {_redacted(message)}\n")


def info(message: str) -> None:
    """A line for people on stderr (URL secrets hidden)."""
    sys.stderr.write(_redacted(message) + "\n")


@contextlib.contextmanager
def spinner(message: str) -> Iterator[None]:
    """A rich spinner on stderr while a long wait lasts; nothing when stderr is no TTY."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
