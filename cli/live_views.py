"""Looking at a running flow live: ``flowctl tap`` (the events of one port) and
``flowctl top`` (every flow's nodes with their rates, lag and losses, redrawn).

``tap`` subscribes to the port's subject as one more reader (core NATS: it takes nothing
away from the flow, and sees only what passes while it runs); frames are unpacked, so it
prints one JSON event per line whatever the wire carried. A sink has no outputs: tapping
it shows what reaches it (its inputs). ``NODE.dlq`` shows dead letters as they happen.

``top`` sums each node's replicas (:func:`node_rows`, pure) from the same records as
``flowctl status``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from cli.errors import fail, run
from cli.main import NameArg, OutputOpt, app, engine_session
from cli.observe import reading
from cli.output import Format, info, show
from cli.status import status_data


def tap_subjects(cfg: Any, port: str | None) -> tuple[list[str], str]:
    """(subjects, what they are) to tap for a node's ``port`` (None: its outputs, or a
    sink's inputs); raises ValueError with the choices when the port does not exist."""
    from flowstore.models import dlq_subject

    if port == "dlq":
        return [dlq_subject(cfg.flow, cfg.node)], f"dead letters of '{cfg.node}'"
    _refuse_in_memory(cfg, port)
    if port is None:
        if cfg.outputs:
            return sorted(_sent(cfg, p) for p in cfg.outputs), f"outputs of '{cfg.node}'"
        subjects = sorted({s for subs in cfg.inputs.values() for s in subs})
        return subjects, f"what reaches '{cfg.node}' (a sink: its inputs)"
    if port in cfg.outputs:
        return [_sent(cfg, port)], f"'{cfg.node}' port {port}"
    if cfg.inputs.get(port):
        return sorted(cfg.inputs[port]), f"what reaches '{cfg.node}' on input {port}"
    ports = sorted({*cfg.outputs, *cfg.inputs, "dlq"})
    raise ValueError(f"node '{cfg.node}' has no port '{port}' (ports: {', '.join(ports)})")


def _refuse_in_memory(cfg: Any, port: str | None) -> None:
    """A fused node's port that feeds the next node in memory is never published, and
    neither is what reaches a node fed that way: say so (ValueError), with the fix."""
    nxt = cfg.fused_next
    if nxt is not None and ((port is None and list(cfg.outputs) == [cfg.fused_port])
                            or port == cfg.fused_port):
        raise ValueError(f"'{cfg.node}' port {cfg.fused_port} is passed to '{nxt}' in memory "
                         f"(they run fused: `flowctl describe {cfg.flow}`), never published; "
                         f"set `fuse: false` on '{nxt}' to tap it")
    head = cfg.fused_head
    if head is not None and ((port is None and not cfg.outputs) or port in cfg.inputs):
        raise ValueError(f"what reaches '{cfg.node}' comes from the node before it in memory "
                         f"(it runs fused after '{head}'), never published; set "
                         f"`fuse: false` on '{cfg.node}' to tap it")


def _sent(cfg: Any, port: str) -> str:
    """Where every event of an output port goes once: its subject, or (read by keyed
    nodes only, partitioned at the producer) all partitions of its first keyed reader."""
    if port in cfg.partitioned_only and cfg.keyed_outputs.get(port):
        return str(cfg.keyed_outputs[port][0].subjects)
    return str(cfg.outputs[port])


@app.command()
def tap(
    name: NameArg,
    target: Annotated[str, typer.Argument(metavar="NODE[.PORT]", help="The node, and "
                                          "optionally its port (default: its outputs).")],
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")]
    = None,
    output: OutputOpt = Format.table,
) -> None:
    """Print the live events of one node's port, one JSON event per line (frames
    unpacked), until Ctrl+C; it reads alongside the flow and takes nothing from it.

    Example: flowctl tap orders enrich.out --count 5
    """
    import re

    from flowstore.models import NAME_PATTERN

    node, _, port = target.partition(".")
    if not re.fullmatch(NAME_PATTERN, node) or (port and not re.fullmatch(r"[\w-]+", port)):
        raise typer.BadParameter(f"'{target}' is not NODE or NODE.PORT", param_hint="NODE")
    run(_tap(name, node, port or None, count, output))


async def _tap(name: str, node: str, port: str | None, count: int | None,
               output: Format) -> None:
    from cli.live import stop_event
    from componentmanager.dataplane.wire import decode_frame, frame_count
    from flowstore.models import config_key

    async with await engine_session(reconnect=True) as engine:
        await engine.flows.get(name)  # an unknown flow says so (exit 1)
        configs = {c.key: c for c in await engine.list_configs(name)}
        cfg = configs.get(config_key(name, node))
        if cfg is None:
            nodes = ", ".join(sorted(c.node for c in configs.values())) or "none: not deployed"
            fail(f"flow/{name} has no deployed node '{node}' (nodes: {nodes})")
        try:
            subjects, what = tap_subjects(cfg, port)
        except ValueError as exc:
            fail(str(exc))
        stop, seen = stop_event(), 0
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg: Any) -> None:
            if not queue.full():
                queue.put_nowait(msg)

        subs = [await engine.nc.subscribe(s, cb=on_msg) for s in subjects]
        await engine.nc.flush()
        info(f"tapping {what}: {', '.join(subjects)} (Ctrl+C stops)")
        try:
            while not stop.is_set() and (count is None or seen < count):
                try:
                    msg = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    continue
                for event in decode_frame(msg.data, frame_count(msg.headers)):
                    print(_one(event, output), flush=True)
                    seen += 1
                    if count is not None and seen >= count:
                        break
        finally:
            for sub in subs:
                await sub.unsubscribe()


def _one(event: Any, output: Format) -> str:
    if output == Format.yaml:
        import yaml

        return "---\n" + yaml.safe_dump(event, sort_keys=False).rstrip()
    return json.dumps(event, separators=(",", ":"))


TOP_COLUMNS = ["FLOW", "NODE", "REPLICAS", "STATE", "IN/S", "OUT/S", "LAG", "IN", "OUT",
               "ERRORS", "DROPPED"]


def node_rows(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per node of every flow: its replicas summed (:func:`flowstore.figures.node_figures`);
    the node's state is its replicas' when they agree, else e.g. ``running 2/3``."""
    from flowstore.figures import by_node, node_figures

    rows: list[dict[str, Any]] = []
    for flow in data:
        for node, replicas in by_node(flow["replicas"]).items():  # already in flow order
            figures = node_figures(replicas)
            rows.append({"flow": flow["flow"], "node": node, **{k: figures[k] for k in (
                "replicas", "state", "rate_in", "rate_out", "lag", "in", "out", "errors",
                "dropped")}})
    return rows


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="Print one view and exit (as -o "
                                       "json/yaml always do).")] = False,
    interval: Annotated[float, typer.Option(help="Redraw interval, seconds.")] = 2.0,
    output: OutputOpt = Format.table,
) -> None:
    """A live view of every flow's nodes: state, events/s in and out, lag, errors and
    losses (the replicas of a node summed), redrawn until Ctrl+C.

    Example: flowctl top --interval 1
    """

    async def fetch(engine: Any) -> Any:
        return node_rows(await status_data(engine, None))

    def draw(rows: Any) -> None:
        show(rows, output, TOP_COLUMNS, lambda d: [
            [r["flow"], r["node"], r["replicas"], r["state"], f"{r['rate_in']:,.0f}",
             f"{r['rate_out']:,.0f}", f"{r['lag']:,}", r["in"], r["out"], r["errors"],
             r["dropped"]] for r in d])

    # -o json/yaml is for scripts: one document, not a stream of redraws
    reading(fetch, draw, not once and output.tabular, interval)
