"""Reading commands: get/list, describe, agents, components, history (status is in
:mod:`cli.status`, logs in :mod:`cli.logs`).

Each builds JSON-ready data and hands it to :func:`cli.output.show`, so ``-o json`` and
``-o yaml`` carry everything the table shows and more.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from cli.errors import fail, run
from cli.main import NameArg, OutputOpt, app, engine_session, valid_name
from cli.output import Format, age, info, show, table


def _flow_row(f: dict[str, Any]) -> list[Any]:
    return [f["name"], f["state"], len(f["spec"]["nodes"]), f["revision"], age(f["updated_at"])]


def _flow_row_wide(f: dict[str, Any]) -> list[Any]:
    spec = f["spec"]
    return [f["name"], f["state"], len(spec["nodes"]), f["revision"],
            f.get("deployed_revision") or "-", spec.get("delivery", ""),
            age(f["updated_at"]), spec.get("description") or ""]


FLOW_COLUMNS = ["NAME", "STATE", "NODES", "REVISION", "UPDATED"]
FLOW_COLUMNS_WIDE = ["NAME", "STATE", "NODES", "REVISION", "DEPLOYED", "DELIVERY", "UPDATED",
                     "DESCRIPTION"]

def say_broken(bucket: str, broken: dict[str, str]) -> None:
    """One line per value that is not a record: skipped, never fatal."""
    for key, why in sorted(broken.items()):
        info(f"warning: skipped {bucket} key {key!r}: not a flowctl record ({why}); "
             f"remove it with: nats kv del {bucket} {key}")


WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="Redraw live until Ctrl+C.")]
IntervalOpt = Annotated[float, typer.Option(help="Redraw interval with --watch, seconds.")]


#: A reading command that connected but got no answer (a cluster electing the leader of
#: a bucket after losing a node) asks again for up to this long.
READ_RETRY_S = 20.0


def reading(fetch: Any, draw: Any, watch: bool, interval: float) -> None:
    """Fetch once and draw, or (``--watch``) redraw until Ctrl+C, riding out NATS outages.
    Once connected, a fetch without an answer is retried for :data:`READ_RETRY_S`."""
    from cli.errors import other_error

    def unanswered(exc: Exception) -> str | None:
        """A request that got no answer in time (worth asking again), with why."""
        if isinstance(exc, TimeoutError) or type(exc).__name__ in (
                "TimeoutError", "FlushTimeoutError", "ConnectionReconnectingError",
                "StaleConnectionError"):
            return other_error(exc)[0]
        return None

    async def once() -> None:
        async with await engine_session(reconnect=watch) as engine:
            if not watch:
                draw(await fetch(engine))
                return
            from cli.live import watch as live
            from cli.main import globals_

            await live(lambda: fetch(engine), draw, interval, globals_().nats_url)

    async def go() -> None:
        deadline = asyncio.get_running_loop().time() + READ_RETRY_S
        told = False
        while True:
            try:
                return await once()
            except Exception as exc:
                why = unanswered(exc)
                if why is None or asyncio.get_running_loop().time() > deadline:
                    raise
                if not told:
                    told = True
                    info(f"NATS did not answer ({why}); asking again for up to "
                         f"{READ_RETRY_S:g}s")
            await asyncio.sleep(1.0)

    run(go())


@app.command("get")
def get_flows(
    name: Annotated[str | None, typer.Argument(help="One flow; all when omitted.",
                                               callback=valid_name("flow"))] = None,
    output: OutputOpt = Format.table,
    watch: WatchOpt = False,
    interval: IntervalOpt = 2.0,
) -> None:
    """Show flows: name, desired state, nodes, revision, last update.

    -o yaml prints a flow file that `flowctl apply -f` takes back unchanged.

    Example: flowctl get orders -o yaml > orders.yaml
    """

    async def fetch(engine: Any) -> Any:
        flows = [await engine.flows.get(name)] if name else await engine.flows.list()
        say_broken("flowctl_flows", engine.flows.broken)
        return [f.model_dump(mode="json") for f in flows]

    def draw(data: Any) -> None:
        if not output.tabular:
            from flowstore.flowfile import flow_document

            documents = [flow_document(f) for f in data]
            show(documents[0] if name else documents, output)
        else:
            show(data, output, FLOW_COLUMNS, lambda d: [_flow_row(f) for f in d],
                 wide=(FLOW_COLUMNS_WIDE, lambda d: [_flow_row_wide(f) for f in d]))

    reading(fetch, draw, watch, interval)


@app.command("list")
def list_flows(output: OutputOpt = Format.table, watch: WatchOpt = False,
               interval: IntervalOpt = 2.0) -> None:
    """List every flow.

    Example: flowctl list -o wide
    """
    get_flows(None, output, watch, interval)


@app.command()
def describe(name: NameArg, output: OutputOpt = Format.yaml) -> None:
    """The flow's spec, its plan (which nodes run fused, which edges stay apart and
    why), each node's config record and its observed status.

    Example: flowctl describe orders
    """

    async def go() -> None:
        async with await engine_session() as engine:
            flow = await engine.flows.get(name)
            configs = await engine.list_configs(name)
            statuses = await engine.list_status(name)
            eff = await engine.effective_state(name)
            agents = await engine.agent_records()
        from datetime import UTC, datetime

        from flowengine.plan import describe_plan, fusion_plan
        from flowstore.liveness import as_seen

        now = datetime.now(UTC)
        by_node: dict[str, list[dict[str, Any]]] = {}
        for s in statuses:  # as `status` shows it: unknown while its agent is silent
            dumped = s.model_dump(mode="json", by_alias=True, exclude_none=True)
            by_node.setdefault(s.node, []).append(as_seen(dumped, agents.get(s.agent or ""),
                                                          now))
        data = {
            "flow": flow.model_dump(mode="json"),
            "effective": eff.to_dict(),
            "plan": describe_plan(fusion_plan(flow.spec)),
            "nodes": [
                {
                    "config": c.model_dump(mode="json", exclude_none=True),
                    "status": by_node.get(c.node, []),
                }
                for c in configs
            ],
        }
        show(data, Format.yaml if output.tabular else output)

    run(go())


AGENT_COLUMNS = ["NAME", "HOST", "LABELS", "HEARTBEAT", "LIVE", "COMPONENTS", "CPU%",
                 "MEM MB", "LOOP LAG"]


def _agent_row(a: dict[str, Any]) -> list[Any]:
    return [a["name"], a["host"], ",".join(f"{k}={v}" for k, v in a["labels"].items()),
            f"{a['age_s']}s ago", "yes" if a["live"] else "NO", len(a["components"]),
            a["cpu_percent"], a["memory_mb"], f"{a.get('loop_lag_ms', 0):.0f} ms"]


def _agent_row_wide(a: dict[str, Any]) -> list[Any]:
    return [*_agent_row(a), a["pid"], a["version"], age(a["started_at"]),
            ",".join(a["components"])]


@app.command()
def agents(output: OutputOpt = Format.table, watch: WatchOpt = False,
           interval: IntervalOpt = 2.0) -> None:
    """Agents with labels, heartbeat age, components, CPU, memory and data-loop lag (the
    longest stall of the loop its replicas run on, last heartbeat interval).

    Example: flowctl agents -o wide --watch
    """

    async def fetch(engine: Any) -> Any:
        from datetime import UTC, datetime

        from flowstore import AgentRecord, read_all
        from flowstore.liveness import silent_for

        records, broken = [], {}
        for key, entry in (await read_all(engine.agents)).items():
            record, why = AgentRecord.parse(entry.value)
            if record is None:
                broken[key] = why
            else:
                records.append(record)
        say_broken("flowctl_agents", broken)
        now = datetime.now(UTC)
        return [
            {**r.model_dump(mode="json"), "live": silent_for(r, now) is None,
             "age_s": round(r.age_s(now), 1)}
            for r in sorted(records, key=lambda r: r.name)
        ]

    def draw(data: Any) -> None:
        show(data, output, AGENT_COLUMNS, lambda d: [_agent_row(a) for a in d],
             wide=([*AGENT_COLUMNS, "PID", "VERSION", "UP", "REPLICAS"],
                   lambda d: [_agent_row_wide(a) for a in d]))

    reading(fetch, draw, watch, interval)


@app.command()
def components(
    type_name: Annotated[str | None, typer.Argument(help="One type, with its schema.")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """The component registry: types, roles, ports and config schemas (no server needed).

    Example: flowctl components filter -o json
    """
    from componentmanager import all_types
    from componentmanager.docgen import config_fields

    types = [t for t in all_types() if type_name in (None, t.name)]
    if type_name and not types:
        fail(f"no component type '{type_name}' (see `flowctl components`)")
    data = [t.describe() for t in types]
    show(data, output, ["TYPE", "ROLE", "INPUTS", "OUTPUTS", "DESCRIPTION"], lambda d: [
        [t["type"], t["role"], ",".join(p["name"] for p in t["inputs"]),
         ",".join(p["name"] for p in t["outputs"]) + ("*" if t["dynamic_outputs"] else ""),
         t["description"]] for t in d])
    if type_name and output.tabular:  # one type: what goes under its config:
        for described in data:
            print(f"\nconfig of {described['type']} ({described['role']}):")
            table(["FIELD", "TYPE", "DEFAULT", "DESCRIPTION"],
                  config_fields(described["config_schema"]))


@app.command()
def history(name: NameArg, output: OutputOpt = Format.table) -> None:
    """Every stored revision of a flow (roll back with `flowctl rollback`).

    Example: flowctl history orders
    """

    async def go() -> None:
        async with await engine_session() as engine:
            records = await engine.flows.history(name)
        data = [r.model_dump(mode="json") for r in records]
        show(data, output, ["REVISION", "STATE", "NODES", "UPDATED"], lambda d: [
            [r["revision"], r["state"], len(r["spec"]["nodes"]), r["updated_at"]] for r in d])

    run(go())
