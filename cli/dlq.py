"""``flowctl dlq``: list, show, replay and purge a flow's dead letters (the I/O and the
rules are in :mod:`flowengine.deadletters`; this module parses and prints)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.errors import fail, run
from cli.main import NameArg, OutputOpt, app, engine_session, valid_name
from cli.output import Format, info, show

dlq_app = typer.Typer(
    name="dlq", no_args_is_help=True,
    help="Dead letters of a flow: events a node failed, kept in FLOWCTL_DLQ (7 days or "
    "256 MiB, also after undeploy) until replayed or purged.\n\n"
    "Example: flowctl dlq replay orders enrich")
app.add_typer(dlq_app)

NodeArg = Annotated[str, typer.Argument(help="The node whose dead letters.",
                                        callback=valid_name("node"))]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="At most this many (oldest first).")]


@dlq_app.command("list")
def list_(name: NameArg, output: OutputOpt = Format.table) -> None:
    """Dead letters kept per node of a flow.

    Example: flowctl dlq list orders
    """
    async def go() -> None:
        async with await engine_session() as engine:
            found = await engine.dead_letters(name)
        data = [{"node": node, "dead_letters": n} for node, n in sorted(found.items())]
        if output.tabular and not data:
            info(f"flow/{name} has no dead letters")
            return
        show(data, output, ["NODE", "DEAD LETTERS"],
             lambda d: [[r["node"], r["dead_letters"]] for r in d])

    run(go())


@dlq_app.command("show")
def show_(name: NameArg, node: NodeArg, limit: LimitOpt = None,
          output: OutputOpt = Format.table) -> None:
    """A node's dead letters: when, why, the event id and the event.

    Example: flowctl dlq show orders enrich --limit 10 -o json
    """
    from flowengine import deadletters

    async def go() -> None:
        async with await engine_session() as engine:
            letters = [letter.to_dict()
                       async for letter in deadletters.read(engine.nc, name, node, limit)]
        if output.tabular and not letters:
            info(f"flow/{name} node '{node}' has no dead letters")
            return
        show(letters, output, ["SEQ", "TIME", "EVENT ID", "ERROR", "EVENT"], _rows)

    run(go())


def _rows(letters: list[dict[str, Any]]) -> list[list[Any]]:
    import json

    return [[d["seq"], d["time"], d["event_id"] or "-", d["error"],
             json.dumps(d["event"], separators=(",", ":"))[:200]] for d in letters]


@dlq_app.command()
def replay(
    name: NameArg,
    node: NodeArg,
    port: Annotated[str | None, typer.Option(help="The input port (default: the first).")]
    = None,
    limit: LimitOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Send a node's dead letters back into its input (after a fix), oldest first; each
    is removed from the dead letters once its publish is confirmed.

    Example: flowctl dlq replay orders enrich
    """
    from flowengine import deadletters

    async def go() -> None:
        async with await engine_session() as engine:
            try:
                done = await deadletters.replay_node(engine, name, node, port, limit)
            except deadletters.ReplayRefused as exc:
                fail(str(exc))
        if done.replayed and done.waiting:
            info(f"note: flow/{name} is stopped: the replayed events wait in its stream "
                 f"until `flowctl start {name}` (an undeploy now would discard them)")
        if output.tabular:
            print(f"flow/{name}: replayed {done.replayed} dead letter(s) of '{node}' into "
                  f"{done.subject}" + ("; they show in its REPLAYED count" if done.replayed
                                       else ""))
        else:
            show(done.to_dict(), output)

    run(go())


@dlq_app.command()
def purge(
    name: NameArg,
    node: Annotated[str | None, typer.Argument(help="One node; every node when omitted.",
                                               callback=valid_name("node"))] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Delete dead letters for good (one node's, or the whole flow's).

    Example: flowctl dlq purge orders enrich
    """
    from flowengine import deadletters

    async def go() -> None:
        async with await engine_session() as engine:
            gone = await deadletters.purge(engine.nc, name, node)
        where = f"node '{node}'" if node else "every node"
        if output.tabular:
            print(f"flow/{name}: purged {gone} dead letter(s) of {where}")
        else:
            show({"flow": name, "node": node, "purged": gone}, output)

    run(go())
