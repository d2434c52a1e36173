"""``--watch``: redraw a reading command until Ctrl+C, riding out NATS outages.

On a terminal the view is redrawn in place (rich Live); into a pipe or file a new view is
printed only when it changed, so ``flowctl get --watch > log`` records changes, as
``kubectl get -w`` does. When NATS goes away (a restart, a network cut) the last view
stays, a line says since when NATS is unreachable and why, and the command keeps trying
(the connection reconnects by itself); it ends only on Ctrl+C or SIGTERM (exit 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cli.errors import EXIT_NATS, other_error
from flowstore.nats import redact


def stop_event() -> asyncio.Event:
    """Set on Ctrl+C or SIGTERM: the normal end of --watch and --follow (exit 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def transient(exc: Exception) -> str | None:
    """Why NATS is unreachable for now, or None when ``exc`` is a real error."""
    sentence, code = other_error(exc)
    if code == EXIT_NATS or isinstance(exc, TimeoutError | ConnectionError):
        return sentence
    return None


async def watch(fetch: Callable[[], Awaitable[Any]], draw: Callable[[Any], None],
                interval: float, url: str) -> None:
    """Call ``fetch`` every ``interval`` seconds and ``draw`` what it returned."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from cli import output

    console = Console()
    stop = stop_event()
    down_since: float | None = None
    last_text = printed = ""
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    with live or contextlib.nullcontext():
        while not stop.is_set():
            note = ""
            try:
                data = await asyncio.wait_for(fetch(), max(5.0, interval * 3))
                down_since = None
                last_text = _render(draw, data, console.width if live else None, output)
            except Exception as exc:
                why = transient(exc)
                if why is None:
                    raise
                down_since = down_since or time.monotonic()
                down_for = time.monotonic() - down_since
                note = (f"NATS at {redact(url)} unreachable for {down_for:.0f}s ({why}); "
                        "retrying, Ctrl+C stops\n")
            if live is not None:
                live.update(Text.from_ansi(last_text + note), refresh=True)
            elif note:
                sys.stderr.write(note)
            elif last_text != printed:
                sys.stdout.write(last_text + "\n")
                sys.stdout.flush()
                printed = last_text
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def _render(draw: Callable[[Any], None], data: Any, width: int | None, output: Any) -> str:
    """What ``draw`` prints, as text; tables as wide as the terminal (``width``)."""
    import io

    buf = io.StringIO()
    output.FORCE_WIDTH = width
    try:
        with contextlib.redirect_stdout(buf):
            draw(data)
    finally:
        output.FORCE_WIDTH = None
    return buf.getvalue()
