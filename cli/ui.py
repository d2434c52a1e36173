"""``flowctl ui``: the web console and HTTP API (:mod:`console`) for a NATS server's flows."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.errors import EXIT_USAGE, fail, run
from cli.main import app, connect_nats, globals_
from cli.output import info


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind (beyond 127.0.0.1 needs a "
                                      "token).")] = "127.0.0.1",
    allow_control: Annotated[bool, typer.Option(
        "--allow-control", help="Allow apply, deploy/start/stop/undeploy and rollback "
        "(with the bearer token).")] = False,
    token: Annotated[str | None, typer.Option(
        "--ui-token", envvar="FLOWCTL_UI_TOKEN", show_envvar=True,
        help="Bearer token for control (and for everything beyond 127.0.0.1); generated "
        "and printed when control is allowed without one.")] = None,
) -> None:
    """Serve the web console and its HTTP API (OpenAPI at /openapi.json) until Ctrl+C.
    Read-only unless --allow-control. (--token is NATS's, as everywhere.)

    Example: flowctl ui --port 8080 --allow-control
    """
    from console.auth import AccessRefused, plan

    try:
        access = plan(host, allow_control, token)
    except AccessRefused as exc:
        fail(str(exc), EXIT_USAGE)
    run(serve_console(host, port, access))


async def serve_console(host: str, port: int, access: object) -> None:
    from cli.live import stop_event
    from console.server import ConsoleServer

    nc = await connect_nats(reconnect=True)
    server = ConsoleServer(nc, host, port, access,  # type: ignore[arg-type]
                           kv_replicas=globals_().kv_replicas)
    try:
        try:
            url = await server.start()
        except OSError as exc:
            fail(f"cannot serve the console on {host}:{port}: {exc.strerror or exc}; "
                 "pick another --port (0 picks a free one)")
        say_where(url, access)
        await stop_event().wait()
    finally:
        await server.close()
        await nc.close()


def say_where(url: str, access: object) -> None:
    info(f"console: {url} (API: {url}openapi.json; Ctrl+C stops)")
    if getattr(access, "generated", False):
        token = getattr(access, "token", "")
        info(f"control token (send as Authorization: Bearer ...): {token}")
        info(f"open with the token: {url}#token={token}")
    elif getattr(access, "allow_control", False):
        info("control allowed with the token you gave")
    else:
        info("read-only (start with --allow-control to deploy/start/stop from it)")


UiOpt = Annotated[bool, typer.Option(
    "--ui", help="Also serve the web console (read-only) on 127.0.0.1 and print its URL.")]
UiPortOpt = Annotated[int, typer.Option(
    "--ui-port", min=0, max=65535, help="The console's port with --ui (0: a free one).")]


async def console_beside(nc: object, port: int) -> object | None:
    """The read-only console of a `run` or `dev` (their flow's lifecycle is theirs);
    None, said on screen, when the port is taken."""
    from console.auth import plan
    from console.server import ConsoleServer

    server = ConsoleServer(nc, "127.0.0.1", port, plan("127.0.0.1", False, None))
    try:
        url = await server.start()
    except OSError as exc:
        await server.close()
        info(f"no console: port {port} is not free ({exc.strerror or exc}); pick --ui-port")
        return None
    info(f"console: {url} (read-only)")
    return server
