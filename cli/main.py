"""The `flowctl` typer app: global options and the flow lifecycle commands.

Reading commands live in :mod:`cli.observe`, process commands (agent, server, run) in
:mod:`cli.embedded`. Heavy modules (nats, pydantic models, the engine) are imported inside
the commands, so ``flowctl --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
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


OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml.")]
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


G: Globals | None = None


def globals_() -> Globals:
    assert G is not None
    return G


def _file_option(flag: str, help: str) -> Any:
    """An option naming a file that must exist (a typo is a usage error, exit 2)."""
    return typer.Option(flag, help=help, exists=True, dir_okay=False, readable=True)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@app.callback()
def main_options(
    ctx: typer.Context,
    nats_url: Annotated[
        str, typer.Option("--nats-url", envvar="NATS_URL", help="NATS server URL.")
    ] = "nats://127.0.0.1:4222",
    creds: Annotated[Path | None, _file_option("--creds", "NATS credentials file.")] = None,
    user: Annotated[str | None, typer.Option(help="NATS user.")] = None,
    password: Annotated[str | None, typer.Option(help="NATS password.")] = None,
    token: Annotated[str | None, typer.Option(help="NATS token.")] = None,
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

        configure(json_logs=log_json)


async def connect_nats(opts: NatsOptions | None = None) -> Any:
    """A NATS connection for a command (:func:`flowstore.nats.connect` fails fast)."""
    from flowstore.nats import connect

    return await connect(opts or globals_().options())


async def engine_session() -> Any:
    """A connected FlowEngine (use as ``async with engine_session() as engine``)."""
    from contextlib import asynccontextmanager

    from flowengine import FlowEngine

    @asynccontextmanager
    async def session():  # type: ignore[no-untyped-def]
        g = globals_()
        nc = await connect_nats(g.options())
        try:
            yield await FlowEngine.open(nc, kv_replicas=g.kv_replicas)
        finally:
            await nc.close()

    return session()


def _print_changes(changes: Any) -> None:
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


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="A flow file (YAML or JSON).")],
    output: OutputOpt = Format.table,
) -> None:
    """Check a flow file without touching NATS; exit 1 on errors.

    Example: flowctl validate examples/hello.yaml -o json
    """
    from flowengine import validate as check
    from flowstore import load_flow

    async def go() -> int:
        loaded = load_flow(file)
        result = check(loaded.spec, source=loaded.source, name=loaded.name)
        data = result.to_dict()
        if output != Format.table:
            show(data, output)
        else:
            for issue in [*result.errors, *result.warnings]:
                print(f"{file}: {issue}")
            print(f"{file}: {result.status} ({len(result.errors)} error(s), "
                  f"{len(result.warnings)} warning(s))")
        return 0 if result.ok else 1

    raise typer.Exit(run(go()))


@app.command()
def apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="The flow file to apply.")],
    output: OutputOpt = Format.table,
) -> None:
    """Validate a flow file, then create or update the flow; prints its revision.

    Example: flowctl apply -f examples/hello.yaml
    """
    from flowengine import ValidationFailed
    from flowengine import validate as check
    from flowstore import load_flow

    async def go() -> None:
        loaded = load_flow(file)
        # Check locally first: errors then point at lines of the file.
        checked = check(loaded.spec, source=loaded.source, name=loaded.name)
        if not checked.ok:
            raise ValidationFailed(checked, loaded.name)
        async with await engine_session() as engine:
            result = await engine.apply(loaded.name, loaded.spec)
        flow, changes = result.flow, result.changes
        if output != Format.table:
            show({"flow": flow.name, "created": result.created, "revision": flow.revision,
                  "state": flow.state.value, "changes": changes.to_dict()}, output)
            return
        verb = "created" if result.created else ("configured" if changes.spec_changed
                                                  else "unchanged")
        print(f"flow/{flow.name} {verb} (revision {flow.revision}, {flow.state.value})")
        if changes.validation is not None:
            for warning in changes.validation.warnings:
                info(f"  warning: {warning}")
        _print_changes(changes)

    run(go())


def _transition(action: str, name: str, output: Format, **kwargs: Any) -> None:
    async def go() -> None:
        async with await engine_session() as engine:
            result = await getattr(engine, action)(name, **kwargs)
        if output != Format.table:
            show(result.to_dict(), output)
            return
        _print_changes(result.changes)
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
    revision: Annotated[int, typer.Option("--revision", "-r", help="Revision to restore.")],
    output: OutputOpt = Format.table,
) -> None:
    """Apply the spec of an earlier revision as a new revision.

    Example: flowctl rollback orders --revision 2
    """

    async def go() -> None:
        async with await engine_session() as engine:
            result = await engine.rollback(name, revision)
        if output != Format.table:
            show({"flow": name, "revision": result.flow.revision, "from_revision": revision,
                  "changes": result.changes.to_dict()}, output)
            return
        _print_changes(result.changes)
        print(f"flow/{name} rolled back to the spec of revision {revision} "
              f"(now revision {result.flow.revision})")

    run(go())


@app.command()
def schema() -> None:
    """Print the JSON schema of the flow file format (for editor completion).

    Example: flowctl schema > flow.schema.json
    """
    import json

    from flowstore.flowfile import flow_file_schema

    print(json.dumps(flow_file_schema(), indent=2))


def main() -> None:
    from cli import agent, embedded, observe, server  # noqa: F401  (register commands)

    app()


if __name__ == "__main__":
    main()
