"""``flowctl server``: a NATS server with JetStream on, in the foreground, until Ctrl+C.

Without ``--config`` it is flowctl's embedded server
(:class:`flowstore.server.EmbeddedNats`) on ``--host``/``--port`` with ``--store-dir``.
With ``--config FILE`` (cluster nodes, accounts, TLS, ...) it runs
``nats-server -c FILE -js``: the file decides, and only the options given on the command
line (``--port``, ``--host``, ``--store-dir``) override it, as nats-server's own flags do.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import fail
from cli.main import app
from cli.output import info


@app.command()
def server(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Client port.")] = 4222,
    store_dir: Annotated[str | None, typer.Option(help="JetStream store directory.")] = None,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="A nats-server config file (passed as -c).",
                     exists=True, dir_okay=False, readable=True),
    ] = None,
) -> None:
    """Run the embedded nats-server (JetStream on) in the foreground.

    Example: flowctl server --port 4222 --store-dir ./nats-data
    (a cluster node: flowctl server --config node-a.conf)
    """
    from flowstore.server import EmbeddedNats

    def given(name: str, value: Any) -> Any:
        """With a config file, only what was typed overrides it."""
        if config is None:
            return value
        source = getattr(ctx.get_parameter_source(name), "name", "")
        return value if source == "COMMANDLINE" else None

    store = given("store_dir", store_dir)
    if config is None and store is None:
        store = str(Path.home() / ".flowctl" / "nats")
    srv = EmbeddedNats(
        port=given("port", port),
        store_dir=store,
        host=given("host", host),
        foreground=True,
        config=str(config) if config else None,
    )
    try:
        srv.start()
    except (RuntimeError, FileNotFoundError) as exc:
        fail(f"{exc} (its message is above)" if config else str(exc))
    where = f"config {config}" if config else f"JetStream store {store}"
    info(f"nats-server listening on {srv.url} ({where}); Ctrl+C stops it")
    assert srv.proc is not None
    code = _foreground(srv.proc)
    srv.stop()
    raise typer.Exit(0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code)


def _foreground(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the server, passing Ctrl+C and SIGTERM on to it; its exit code."""

    def forward(signum: int, _frame: Any) -> None:
        # Only pass the signal on: waiting inside a handler would deadlock with the
        # proc.wait() it interrupted.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return proc.wait()
