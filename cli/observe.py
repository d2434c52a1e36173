"""Reading commands: get/list, describe, status, agents, components, history, logs.

Each builds JSON-ready data and hands it to :func:`cli.output.show`, so ``-o json`` and
``-o yaml`` carry everything the table shows and more.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated, Any

import typer

from cli.errors import fail, run
from cli.main import NameArg, OutputOpt, app, connect_nats, engine_session, valid_name
from cli.output import Format, age, info, show, table


def _flow_row(f: dict[str, Any]) -> list[Any]:
    return [f["name"], f["state"], len(f["spec"]["nodes"]), f["revision"], age(f["updated_at"])]


FLOW_COLUMNS = ["NAME", "STATE", "NODES", "REVISION", "UPDATED"]


@app.command("get")
def get_flows(
    name: Annotated[str | None, typer.Argument(help="One flow; all when omitted.",
                                               callback=valid_name("flow"))] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show flows: name, desired state, nodes, revision, last update.

    Example: flowctl get orders -o yaml
    """

    async def go() -> None:
        async with await engine_session() as engine:
            if name:
                flows = [await engine.flows.get(name)]
            else:
                flows = await engine.flows.list()
        data = [f.model_dump(mode="json") for f in flows]
        if name and output != Format.table:
            show(data[0], output)
        else:
            show(data, output, FLOW_COLUMNS, lambda d: [_flow_row(f) for f in d])

    run(go())


@app.command("list")
def list_flows(output: OutputOpt = Format.table) -> None:
    """List every flow.

    Example: flowctl list -o json
    """
    get_flows(None, output)


def _status_rows(statuses: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for s in statuses:
        c = s.get("counters", {})
        rows.append([
            s["node"], s["replica"], s.get("agent") or "-", s["state"], c.get("in", 0),
            c.get("out", 0), c.get("filtered", 0), c.get("errors", 0), c.get("dropped", 0),
            _rate(s), (s.get("reason") or s.get("last_error") or "")[:100],
        ])
    return rows


def _rate(s: dict[str, Any]) -> str:
    """Average events/s since the replica started (in for sinks, else out)."""
    from datetime import datetime

    started, updated = s.get("started_at"), s.get("updated_at")
    if not started or not updated:
        return ""
    t0 = datetime.fromisoformat(started.replace("Z", "+00:00"))
    t1 = datetime.fromisoformat(updated.replace("Z", "+00:00"))
    secs = (t1 - t0).total_seconds()
    c = s.get("counters", {})
    n = c.get("out", 0) or c.get("in", 0)
    return f"{n / secs:.0f}/s" if secs > 0.5 else ""


def _stop_event() -> asyncio.Event:
    """Set on Ctrl+C or SIGTERM: the normal end of --watch and --follow (exit 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_interrupted() -> None:
    await _stop_event().wait()


STATUS_COLUMNS = ["NODE", "REPLICA", "AGENT", "STATE", "IN", "OUT", "FILTERED", "ERRORS",
                  "DROPPED", "RATE", "REASON / LAST ERROR"]


async def _status_data(engine: Any, name: str | None) -> list[dict[str, Any]]:
    names = [name] if name else [f.name for f in await engine.flows.list()]
    out = []
    for flow in names:
        eff = await engine.effective_state(flow)
        statuses = await engine.list_status(flow)
        out.append({
            "flow": flow,
            "effective": eff.to_dict(),
            "replicas": [s.model_dump(mode="json", by_alias=True) for s in statuses],
        })
    return out


def _print_status(data: list[dict[str, Any]]) -> None:
    for flow in data:
        eff = flow["effective"]
        print(f"flow/{flow['flow']}: {eff['observed']} (desired {eff['desired']}, "
              f"{eff['replicas']} replica(s))")
        for reason in eff.get("reasons", [])[:10]:
            print(f"  {reason}")
        if flow["replicas"]:
            table(STATUS_COLUMNS, _status_rows(flow["replicas"]))
        print()


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="One flow; all when omitted.",
                                               callback=valid_name("flow"))] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw live.")] = False,
    interval: Annotated[float, typer.Option(help="Redraw interval with --watch.")] = 1.0,
    output: OutputOpt = Format.table,
) -> None:
    """Observed state per replica (node, agent, state, counters, rate, last error)
    and each flow's effective state, from what agents report.

    Example: flowctl status orders --watch
    """

    async def go() -> None:
        async with await engine_session() as engine:
            if not watch:
                data = await _status_data(engine, name)
                if output != Format.table:
                    show(data[0] if name else data, output)
                else:
                    _print_status(data)
                return
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            console = Console()
            stop = _stop_event()
            with Live(console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    data = await _status_data(engine, name)
                    with console.capture() as cap:
                        _print_status(data)
                    live.update(Text.from_ansi(cap.get()), refresh=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)

    run(go())


@app.command()
def describe(name: NameArg, output: OutputOpt = Format.yaml) -> None:
    """The flow's spec, each node's config record and its observed status.

    Example: flowctl describe orders
    """

    async def go() -> None:
        async with await engine_session() as engine:
            flow = await engine.flows.get(name)
            configs = await engine.list_configs(name)
            statuses = await engine.list_status(name)
            eff = await engine.effective_state(name)
        by_node: dict[str, list[dict[str, Any]]] = {}
        for s in statuses:
            dumped = s.model_dump(mode="json", by_alias=True, exclude_none=True)
            by_node.setdefault(s.node, []).append(dumped)
        data = {
            "flow": flow.model_dump(mode="json"),
            "effective": eff.to_dict(),
            "nodes": [
                {
                    "config": c.model_dump(mode="json", exclude_none=True),
                    "status": by_node.get(c.node, []),
                }
                for c in configs
            ],
        }
        show(data, Format.yaml if output == Format.table else output)

    run(go())


@app.command()
def agents(output: OutputOpt = Format.table) -> None:
    """Agents with labels, heartbeat age, components, CPU, memory and data-loop lag (the
    longest stall of the loop its replicas run on, last heartbeat interval).

    Example: flowctl agents -o json
    """

    async def go() -> None:
        from flowstore import AgentRecord, read_all
        from flowstore.nats import AGENTS_BUCKET, open_bucket

        nc = await connect_nats()
        try:
            kv = await open_bucket(nc, AGENTS_BUCKET)
            entries = await read_all(kv)
        finally:
            await nc.close()
        records = [AgentRecord.from_json(e.value) for e in entries.values()]
        data = [
            {**r.model_dump(mode="json"), "live": r.is_live(), "age_s": round(r.age_s(), 1)}
            for r in sorted(records, key=lambda r: r.name)
        ]
        show(data, output, ["NAME", "HOST", "LABELS", "HEARTBEAT", "LIVE", "COMPONENTS",
                            "CPU%", "MEM MB", "LOOP LAG"], lambda d: [
            [a["name"], a["host"], ",".join(f"{k}={v}" for k, v in a["labels"].items()),
             f"{a['age_s']}s ago", "yes" if a["live"] else "NO", len(a["components"]),
             a["cpu_percent"], a["memory_mb"], f"{a.get('loop_lag_ms', 0):.0f} ms"]
            for a in d])

    run(go())


@app.command()
def components(
    type_name: Annotated[str | None, typer.Argument(help="One type, with its schema.")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """The component registry: types, roles, ports and config schemas (no server needed).

    Example: flowctl components filter -o json
    """
    from componentmanager import all_types

    types = [t for t in all_types() if type_name in (None, t.name)]
    if type_name and not types:
        fail(f"no component type '{type_name}' (see `flowctl components`)")
    data = [t.describe() for t in types]
    show(data, output, ["TYPE", "ROLE", "INPUTS", "OUTPUTS", "DESCRIPTION"], lambda d: [
        [t["type"], t["role"], ",".join(p["name"] for p in t["inputs"]),
         ",".join(p["name"] for p in t["outputs"]) + ("*" if t["dynamic_outputs"] else ""),
         t["description"]] for t in d])


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


@app.command()
def logs(
    name: NameArg,
    node: Annotated[str | None, typer.Argument(help="One node; all when omitted.",
                                               callback=valid_name("node"))] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to listen without --follow.")] = 2.0,
    output: OutputOpt = Format.table,
) -> None:
    """Component log lines that agents publish on flowctl.logs.<flow>.<node>
    (-o json: one JSON object per line, with flow, node, replica, agent, stream, ts).

    Example: flowctl logs orders big --follow
    """

    async def go() -> None:
        import json

        from flowstore.models import logs_subject

        nc = await connect_nats()

        async def on_msg(msg: Any) -> None:
            try:
                d = json.loads(msg.data)
                text = (f"{d['ts']} {d['node']}.{d['replica']}@{d['agent']} {d['line']}"
                        if output == Format.table else _one_record(d, output))
            except (ValueError, KeyError, TypeError):
                text = msg.data.decode("utf-8", "replace")
            print(text, flush=True)

        subject = logs_subject(name, node or "*")
        sub = await nc.subscribe(subject, cb=on_msg)
        try:
            await nc.flush()  # the subscription is in place: nothing published now is missed
            if follow:
                info(f"following {subject} (Ctrl+C stops)")
                await _until_interrupted()
            else:
                info(f"listening on {subject} for {wait:g}s")
                await asyncio.sleep(wait)
        finally:
            await sub.unsubscribe()
            await nc.close()

    run(go())


def _one_record(data: dict[str, Any], output: Format) -> str:
    """One streamed record: a JSON line, or a YAML document."""
    import json

    if output == Format.json:
        return json.dumps(data, separators=(",", ":"))
    import yaml

    return "---\n" + yaml.safe_dump(data, sort_keys=False).rstrip()
