"""The `flowctl` typer app: global options and the flow lifecycle commands.

Reading commands live in :mod:`cli.observe`, process commands (agent, server, run) in
:mod:`cli.embedded`. Heavy modules (nats, pydantic models, the engine) are imported inside
the commands, so ``flowctl --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.errors import run
from cli.output import Format, info, show

if TYPE_CHECKING:
    from flowstore.nats import NatsOptions

app = typer.Typer(
    name="flowctl",
    help="Run data flows (sources -> processors -> sinks) over NATS.\n\n"
    "Quick start: flowctl run examples/hello.yaml --until-done",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, as kubectl's: rendering it with rich costs 0.1 s
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: Flow, node and agent names (flowstore.models.NAME_PATTERN): they become NATS subjects
#: and KV keys, so anything else is refused before connecting.
MAX_NAME_LENGTH = 63


def valid_name(kind: str) -> Callable[[str | None], str | None]:
    """A typer callback refusing a malformed ``kind`` name as a usage error (exit 2)."""

    def check(value: str | None) -> str | None:
        import re

        from flowstore.models import NAME_PATTERN

        if value is None or (len(value) <= MAX_NAME_LENGTH and re.fullmatch(NAME_PATTERN, value)):
            return value
        raise typer.BadParameter(
            f"{value!r} is not a valid {kind} name: use lowercase letters, digits and '-' "
            f"(a letter or digit first and last), at most {MAX_NAME_LENGTH} characters"
        )

    return check


OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, wide, json or yaml.")]
NameArg = Annotated[
    str, typer.Argument(help="The flow's name (metadata.name).", callback=valid_name("flow"))
]


@dataclass
class Globals:
    nats_url: str
    creds: str | None
    user: str | None
    password: str | None
    token: str | None
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    kv_replicas: int
    log_json: bool
    nats_url_given: bool = False

    def options(self) -> NatsOptions:
        from flowstore.nats import NatsOptions

        return NatsOptions(
            url=self.nats_url,
            user=self.user,
            password=self.password,
            token=self.token,
            creds=self.creds,
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            kv_replicas=self.kv_replicas,
        )

    def client_options(self) -> NatsOptions:
        """:meth:`options` of a command that uses a server (not one that starts its own):
        without --nats-url / NATS_URL, the server of the running `flowctl run`, if any."""
        if not self.nats_url_given:
            from cli.runrecord import running_url

            url = running_url()
            if url is not None:
                self.nats_url, self.nats_url_given = url, True
        return self.options()


G: Globals | None = None

#: Commands that only read and print, and the module of each. They log nothing, so they
#: skip structlog, and they import only their own module, not what they do not use (the
#: other commands, the component library, the validator: see tests/test_cli_imports.py):
#: kubectl and the nats CLI answer in 0.05-0.2 s.
READING = {"list": "observe", "get": "observe", "describe": "observe", "agents": "observe",
           "history": "observe", "status": "status"}


def globals_() -> Globals:
    assert G is not None
    return G


def _file_option(flag: str, help: str) -> Any:
    """An option naming a file that must exist (a typo is a usage error, exit 2)."""
    return typer.Option(flag, help=help, exists=True, dir_okay=False, readable=True)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


#: URL schemes nats-py speaks.
NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def _check_nats_url(value: str) -> str:
    """A URL (or a comma-separated list of cluster URLs) with a scheme NATS speaks."""
    for url in filter(None, (u.strip() for u in value.split(","))):
        scheme, sep, _ = url.partition("://")
        if sep and scheme.lower() not in NATS_SCHEMES:
            raise typer.BadParameter(
                f"{url!r} has the scheme {scheme}://, which NATS does not speak; use "
                f"nats://host:4222 (or tls://, ws://, wss://)")
    return value


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"flowctl {version('flowctl')}")
        except PackageNotFoundError:
            print("flowctl (not installed as a package)")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    nats_url: Annotated[
        str, typer.Option("--nats-url", envvar="NATS_URL", help="NATS server URL(s).",
                          callback=_check_nats_url)
    ] = "nats://127.0.0.1:4222",
    creds: Annotated[Path | None, typer.Option(
        "--creds", help="NATS credentials file.", envvar="NATS_CREDS", exists=True,
        dir_okay=False, readable=True)] = None,
    user: Annotated[str | None, typer.Option(help="NATS user.", envvar="NATS_USER")] = None,
    password: Annotated[str | None, typer.Option(
        help="NATS password (better: the NATS_PASSWORD environment variable).",
        envvar="NATS_PASSWORD", show_envvar=False)] = None,
    token: Annotated[str | None, typer.Option(
        help="NATS token (better: the NATS_TOKEN environment variable).",
        envvar="NATS_TOKEN", show_envvar=False)] = None,
    tls_ca: Annotated[Path | None, _file_option("--tls-ca", "CA certificate.")] = None,
    tls_cert: Annotated[Path | None, _file_option("--tls-cert", "Client cert.")] = None,
    tls_key: Annotated[Path | None, _file_option("--tls-key", "Client key.")] = None,
    kv_replicas: Annotated[
        int,
        typer.Option(
            "--kv-replicas",
            envvar="FLOWCTL_KV_REPLICAS",
            min=1,
            help="Replicas of buckets/streams (NATS cluster).",
        ),
    ] = 1,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as JSON lines.")] = False,
    _version: Annotated[bool, typer.Option("--version", help="Print the version and exit.",
                                           is_eager=True, callback=_print_version)] = False,
) -> None:
    """Global options apply to every command."""
    global G
    G = Globals(
        nats_url, _str(creds), user, password, token, _str(tls_ca), _str(tls_cert),
        _str(tls_key), kv_replicas, log_json,
    )
    source = ctx.get_parameter_source("nats_url")
    G.nats_url_given = getattr(source, "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    if not {"-h", "--help"} & set(sys.argv[1:]):  # help stays fast: no structlog import
        from cli.logging import configure

        configure(json_logs=log_json, structured=ctx.invoked_subcommand not in READING)


async def connect_nats(opts: NatsOptions | None = None, reconnect: bool = False) -> Any:
    """A NATS connection for a command (:func:`flowstore.nats.connect` fails fast);
    ``reconnect`` for commands that run until Ctrl+C (they ride out server restarts)."""
    from flowstore.nats import connect

    return await connect(opts or globals_().client_options(), reconnect=reconnect)


async def engine_session(reconnect: bool = False) -> Any:
    """A connected FlowEngine (use as ``async with engine_session() as engine``)."""
    from contextlib import asynccontextmanager

    from flowengine import FlowEngine

    @asynccontextmanager
    async def session():  # type: ignore[no-untyped-def]
        g = globals_()
        nc = await connect_nats(g.client_options(), reconnect=reconnect)
        try:
            yield await FlowEngine.open(nc, kv_replicas=g.kv_replicas)
        finally:
            await nc.close()

    return session()


def print_changes(changes: Any) -> None:
    for key in changes.added:
        info(f"  + config {key}")
    for key in changes.updated:
        info(f"  ~ config {key}")
    for key in changes.removed:
        info(f"  - config {key}")
    for key, reason in changes.pending.items():
        info(f"  ! replica {key} pending: {reason}")
    for key in getattr(changes, "not_stopped", []):
        info(f"  ! replica {key} still running (did not report stopped in time)")
    for stream in getattr(changes, "streams_removed", []):
        info(f"  - stream {stream}")
    for key in getattr(changes, "reset", []):
        info(f"  * config {key} reset: it starts over")


def _transition(action: str, name: str, output: Format, **kwargs: Any) -> None:
    """Run a lifecycle action; one that finds the flow already where it leads exits 0 and
    says so (``start`` on a running flow), as kubectl and systemctl do."""
    from flowengine.results import NOTHING_TO_DO
    from flowstore.errors import InvalidTransition

    async def go() -> None:
        async with await engine_session() as engine:
            try:
                result = await getattr(engine, action)(name, **kwargs)
            except InvalidTransition as exc:
                already = NOTHING_TO_DO.get((exc.action, exc.state))
                if already is None:
                    raise
                if not output.tabular:
                    show({"flow": name, "action": action, "state": exc.state,
                          "changed": False}, output)
                else:
                    print(f"flow/{name} is {already}; nothing to do")
                return
        if not output.tabular:
            show(result.to_dict(), output)
            return
        print_changes(result.changes)
        if result.changes.validation is not None:
            for warning in result.changes.validation.warnings:
                info(f"  warning: {warning}")
        target = "deleted" if action == "delete" else result.flow.state.value
        print(f"flow/{name} {result.previous.value} -> {target} (revision {result.flow.revision})")

    run(go())


@app.command()
def deploy(name: NameArg, output: OutputOpt = Format.table) -> None:
    """not_deployed -> deployed_stopped: write every component config (disabled).

    Example: flowctl deploy orders
    """
    _transition("deploy", name, output)


@app.command()
def start(name: NameArg, output: OutputOpt = Format.table) -> None:
    """deployed_stopped -> running: enable every component.

    Example: flowctl start orders
    """
    _transition("start", name, output)


@app.command()
def stop(name: NameArg, output: OutputOpt = Format.table) -> None:
    """running -> deployed_stopped: disable components in flow order, sources first.

    Example: flowctl stop orders
    """
    _transition("stop", name, output)


@app.command()
def undeploy(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", help="Stop first if running.")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """deployed_stopped -> not_deployed: delete every component config of the flow.

    Example: flowctl undeploy orders --force
    """
    _transition("undeploy", name, output, force=force)


@app.command()
def delete(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", help="Stop and undeploy first.")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Delete a flow (refused unless not_deployed, or with --force). History is kept.

    Example: flowctl delete orders --force
    """
    _transition("delete", name, output, force=force)


@app.command()
def rollback(
    name: NameArg,
    revision: Annotated[int | None, typer.Option(
        "--revision", "-r", help="Revision to restore (default: the previous spec).")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Apply the spec of an earlier revision (default: the previous one) as a new revision.

    Example: flowctl rollback orders --revision 2
    """

    async def go() -> None:
        async with await engine_session() as engine:
            before = await engine.flows.get(name)
            result = await engine.rollback(name, revision)
        if not output.tabular:
            show({"flow": name, "revision": result.flow.revision, "from_revision": revision,
                  "previous_revision": before.revision, "changes": result.changes.to_dict()},
                 output)
            return
        print_changes(result.changes)
        what = (f"the spec of revision {revision}" if revision is not None
                else f"the spec before revision {before.revision}")
        print(f"flow/{name} rolled back to {what} (now revision {result.flow.revision})")

    run(go())


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"


@app.command()
def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh, fish or powershell.")]
               ) -> None:
    """Print the shell completion script (commands and options; flow names are not completed).

    Example: flowctl completion bash > ~/.local/share/bash-completion/completions/flowctl
    """
    from typer._completion_shared import get_completion_script

    print(get_completion_script(prog_name="flowctl", complete_var="_FLOWCTL_COMPLETE",
                                shell=shell.value))


@app.command()
def schema() -> None:
    """Print the JSON schema of the flow file format (for editor completion).

    Example: flowctl schema > flow.schema.json
    """
    import json

    from flowstore.flowfile import flow_file_schema

    print(json.dumps(flow_file_schema(), indent=2))


def register_commands(args: list[str]) -> None:
    """Import the command modules, each registering its commands; a reading command (no
    help asked) only its own."""
    from cli.argv import subcommand

    reading = READING.get(subcommand(args) or "")
    if reading and not {"-h", "--help"} & set(args) and "_FLOWCTL_COMPLETE" not in os.environ:
        import importlib

        importlib.import_module(f"cli.{reading}")
        return
    from cli import agent, dev, dlq, embedded, files, live_views, logs, observe, server, status, ui  # noqa: F401  (each registers its commands)


def main() -> None:
    from cli.argv import hoist_globals
    from cli.errors import quiet_broken_pipe

    args = hoist_globals(sys.argv[1:])
    register_commands(args)
    if "_FLOWCTL_COMPLETE" in os.environ:  # a shell asking for completions
        from typer._completion_classes import completion_init

        completion_init()
        app(prog_name="flowctl")
        return
    try:
        app(args=args, prog_name="flowctl")
    except BrokenPipeError:
        quiet_broken_pipe()
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            quiet_broken_pipe()


if __name__ == "__main__":
    main()
