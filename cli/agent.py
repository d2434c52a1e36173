"""``flowctl agent``: one per host, runs the component replicas assigned to it."""

from __future__ import annotations

import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.errors import fail, run
from cli.main import app, globals_, valid_name

if TYPE_CHECKING:
    import asyncio  # (imported where it runs: `flowctl --help` needs no event loop)


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{part}' is not k=v", param_hint="--labels")
        out[key] = value
    return out


def stop_on_signals(stop: asyncio.Event) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


class CutOffMode(StrEnum):
    external = "external"
    all = "all"
    none = "none"


class OrchestratorMode(StrEnum):
    process = "process"
    container = "container"


OrchestratorOpt = Annotated[OrchestratorMode | None, typer.Option(
    "--orchestrator", help="How a node that has both a program (binary/command) and an "
    "image runs: process or container (default: container). Other nodes run the one form "
    "they have.")]


@app.command()
def agent(
    name: Annotated[str, typer.Option("--name", help="Unique agent name.",
                                      callback=valid_name("agent"))],
    labels: Annotated[str, typer.Option(help="Labels k=v,k2=v2 for placement.")] = "",
    heartbeat: Annotated[float, typer.Option(help="Heartbeat interval, seconds.")] = 2.0,
    status_interval: Annotated[float, typer.Option(help="Status refresh, seconds.")] = 2.0,
    log_dir: Annotated[str | None, typer.Option(help="Component log files.")] = None,
    allow_inline_code: Annotated[
        bool, typer.Option("--allow-inline-code", help="Allow `python` nodes with code:.")
    ] = False,
    python_path: Annotated[
        list[Path] | None,
        typer.Option("--python-path", help="Directory to import `python` node modules "
                     "from (repeatable; PYTHONPATH works too).", file_okay=False),
    ] = None,
    allow_commands: Annotated[
        list[str] | None,
        typer.Option("--allow-commands", help="Run `command:` nodes whose executable "
                     "matches this glob (repeatable; '*' for any). None by default."),
    ] = None,
    stop_when_cut_off: Annotated[
        CutOffMode, typer.Option("--stop-when-cut-off", help="While cut off from NATS past "
                                 "the failover bound, stop: external (programs, containers, "
                                 "http sources), all, or none.")
    ] = CutOffMode.external,
    allow_images: Annotated[
        list[str] | None,
        typer.Option("--allow-images", help="Run `image:` nodes whose image matches this "
                     "glob (repeatable; '*' for any). None by default."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535,
                     help="Serve Prometheus metrics on this port (/metrics). Off by default."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics endpoint binds to.")
    ] = "0.0.0.0",
    orchestrator: OrchestratorOpt = None,
) -> None:
    """Run the agent: runs the component replicas assigned to NAME until Ctrl+C/SIGTERM.

    Programs and containers run only where allowed (--allow-commands, --allow-images);
    inline Python code only with --allow-inline-code. NATS waits are retried.

    Example: flowctl agent --name edge-1 --labels zone=a --allow-commands 'python3'
    """
    from componentmanager.agent import Agent, AgentSettings

    for directory in reversed(python_path or []):
        sys.path.insert(0, str(directory.resolve()))

    settings = AgentSettings(
        name=name, labels=_labels(labels), heartbeat=heartbeat,
        status_interval=status_interval, allow_inline_code=allow_inline_code,
        allow_commands=tuple(allow_commands or ()), allow_images=tuple(allow_images or ()),
        wait_for_nats=True, stop_when_cut_off=stop_when_cut_off.value,  # type: ignore[arg-type]
        metrics_port=metrics_port, metrics_host=metrics_host,
        orchestrator=orchestrator.value if orchestrator else None,  # type: ignore[arg-type]
    )
    if log_dir:
        settings.log_dir = log_dir

    async def go() -> None:
        import asyncio

        stop = asyncio.Event()
        stop_on_signals(stop)
        opts = globals_().options()
        the_agent = Agent(settings, opts)
        if metrics_port is not None:
            try:
                print(f"metrics: {the_agent.serve_metrics(metrics_host, metrics_port)}",
                      file=sys.stderr, flush=True)
            except OSError as exc:
                fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: "
                     f"{exc.strerror or exc}; pick another --metrics-port (0 picks a free one)")
        # `kill -USR1 <pid>`: every task of both loops with its stack, on stderr.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, the_agent.dump_tasks, sys.stderr)
        try:
            await the_agent.run(stop)
        finally:
            if the_agent.left_behind:  # said in the log with the stacks: never hang on exit
                sys.stderr.write(f"flowctl agent: stopped, but these steps did not finish: "
                                 f"{', '.join(the_agent.left_behind)}\n")
                sys.stderr.flush()
                sys.stdout.flush()
                # the stop asked for happened (0); a fenced agent fails as it would (1)
                os._exit(1 if the_agent.fenced else 0)

    run(go())

