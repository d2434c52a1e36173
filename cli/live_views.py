"""Looking at a running flow live: ``flowctl tap`` (the events of one port) and
``flowctl top`` (every flow's nodes with their rates, lag and losses, redrawn).

``tap`` subscribes to the port's subject as one more reader (core NATS: it takes nothing
away from the flow, and sees only what passes while it runs); frames are unpacked, so it
prints one JSON event per line whatever the wire carried. A port passed on in memory
(fused nodes) is never published: while the tap runs, the node publishes a copy of it for
the tap alone (:mod:`componentmanager.dataplane.taps`). A sink has no outputs: tapping
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


def tap_subjects(cfg: Any, port: str | None, configs: dict[str, Any] | None = None
                 ) -> tuple[list[str], str]:
    """(subjects, what they are) to tap for a node's ``port`` (None: its outputs, or a
    sink's inputs); raises ValueError with the choices when the port does not exist. A
    port passed on in memory (fused) is tapped on its :func:`~flowstore.names.tap_subject`
    (see :func:`tapping`); ``configs`` (the flow's, by key) find the node before a fed one."""
    from flowstore.models import dlq_subject

    if port == "dlq":
        return [dlq_subject(cfg.flow, cfg.node)], f"dead letters of '{cfg.node}'"
    fed = _fed_from(cfg, port, configs or {})
    if fed is not None:
        role = "a sink: its inputs, " if not cfg.outputs else ""
        return [fed], f"what reaches '{cfg.node}' ({role}passed in memory: copied while tapped)"
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


def _fed_from(cfg: Any, port: str | None, configs: dict[str, Any]) -> str | None:
    """The tap subject of what a node fed in memory receives (its inputs, or a sink's
    default), None for any other port."""
    from flowstore.models import config_key
    from flowstore.names import tap_subject

    head = cfg.fused_head
    if head is None or not ((port is None and not cfg.outputs) or port in cfg.inputs):
        return None
    chain = list(cfg.fused)
    before = configs.get(config_key(cfg.flow, chain[chain.index(cfg.node) - 1]))
    if before is None or before.fused_port is None:
        return None
    return tap_subject(cfg.flow, before.node, before.fused_port)


def tapping(subjects: list[str]) -> list[str]:
    """What ``flowctl tap`` renews while it runs: the watch of each tapped in-memory port."""
    from flowstore.names import tapping_of

    return [t for t in map(tapping_of, subjects) if t is not None]


def _sent(cfg: Any, port: str) -> str:
    """Where every event of an output port goes once: its subject, or (read by keyed
    nodes only, partitioned at the producer) all partitions of its first keyed reader; a
    port passed on in memory (fused): its tap subject."""
    from flowstore.names import tap_subject

    if port == cfg.fused_port and cfg.fused_next is not None:
        return tap_subject(cfg.flow, cfg.node, port)
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
            subjects, what = tap_subjects(cfg, port, configs)
        except ValueError as exc:
            fail(str(exc))
        renew = tapping(subjects)
        stop, seen = stop_event(), 0
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg: Any) -> None:
            if not queue.full():
                queue.put_nowait(msg)

        subs = [await engine.nc.subscribe(s, cb=on_msg) for s in subjects]
        await engine.nc.flush()
        renewing = asyncio.create_task(_renew(engine.nc, renew)) if renew else None
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
            if renewing is not None:
                renewing.cancel()
            for sub in subs:
                await sub.unsubscribe()


async def _renew(nc: Any, subjects: list[str]) -> None:
    """Keep the agents copying the tapped in-memory ports (see dataplane.taps)."""
    from componentmanager.dataplane.taps import TAP_RENEW_S

    while True:
        for subject in subjects:
            await nc.publish(subject, b"")
        await asyncio.sleep(TAP_RENEW_S)


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
