"""``flowctl status``: observed state per replica and each flow's effective state, from
what agents report; ``--watch`` redraws it live (see :mod:`cli.live`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.main import OutputOpt, app, valid_name
from cli.observe import IntervalOpt, WatchOpt, reading
from cli.output import Format, age, show, table

STATUS_COLUMNS = ["NODE", "REPLICA", "AGENT", "STATE", "IN", "OUT", "FILTERED", "ERRORS",
                  "DROPPED", "IN/S", "OUT/S", "LAG", "REASON / LAST ERROR"]
STATUS_COLUMNS_WIDE = [*STATUS_COLUMNS[:-1], "REDELIVERED", "REPLAYED", "RESTARTS", "PID",
                       "REVISION", "UP", "REASON / LAST ERROR"]


def _counts(s: dict[str, Any]) -> list[Any]:
    c = s.get("counters", {})
    return [c.get(k, 0) for k in ("in", "out", "filtered", "errors", "dropped")]


def _status_rows(statuses: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["node"], s["replica"], s.get("agent") or "-", s["state"], *_counts(s),
             *live_figures(s), _reason(s)[:100]] for s in statuses]


def _reason(s: dict[str, Any]) -> str:
    """The reason or last error; what a stateful node holds (open windows, a join's
    waiting events) when it holds something and nothing else is to say."""
    said = s.get("reason") or s.get("last_error") or ""
    held = s.get("held") or 0
    return said or (f"holding {held:,} event(s)" if held else "")


def _status_rows_wide(statuses: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["node"], s["replica"], s.get("agent") or "-", s["state"], *_counts(s),
             *live_figures(s), s.get("counters", {}).get("redelivered", 0),
             s.get("counters", {}).get("replayed", 0), s.get("restarts", 0), s.get("pid") or "-",
             s.get("flow_revision") or "-", age(s.get("started_at")), _reason(s)]
            for s in statuses]


def live_figures(s: dict[str, Any]) -> list[str]:
    """IN/S, OUT/S (over the agent's last few seconds) and LAG (messages waiting for the
    node's inputs); ``-`` where the replica does not run or its agent cannot tell."""
    active = s.get("state") in ("running", "degraded", "starting")  # not "unknown"
    rate, lag = s.get("rate") or {}, s.get("lag") or {}
    figures = [f"{rate[k]:,.0f}" if active and k in rate else "-" for k in ("in", "out")]
    return [*figures, f"{sum(lag.values()):,}" if active and lag else "-"]


async def status_data(engine: Any, name: str | None) -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    from cli.observe import say_broken
    from flowengine.observe import in_flow_order
    from flowstore.liveness import as_seen

    names = [name] if name else [f.name for f in await engine.flows.list()]
    say_broken("flowctl_flows", engine.flows.broken if not name else {})
    out = []
    for flow in names:
        eff = await engine.effective_state(flow)
        record = await engine.flows.get(flow)
        statuses = in_flow_order(await engine.list_status(flow), record.spec)
        # agents read after the statuses: a replica is never judged by an older heartbeat
        agents, now = await engine.agent_records(), datetime.now(UTC)
        out.append({
            "flow": flow,
            "effective": eff.to_dict(),
            "replicas": [as_seen(s.model_dump(mode="json", by_alias=True),
                                 agents.get(s.agent or ""), now) for s in statuses],
        })
    return out


def _print_status(data: list[dict[str, Any]], wide: bool) -> None:
    for flow in data:
        eff = flow["effective"]
        print(f"flow/{flow['flow']}: {eff['observed']} (desired {eff['desired']}, "
              f"{eff['replicas']} replica(s))")
        for reason in eff.get("reasons", [])[:10]:
            print(f"  {reason}")
        if flow["replicas"]:
            if wide:
                table(STATUS_COLUMNS_WIDE, _status_rows_wide(flow["replicas"]))
            else:
                table(STATUS_COLUMNS, _status_rows(flow["replicas"]))
        print()


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="One flow; all when omitted.",
                                               callback=valid_name("flow"))] = None,
    watch: WatchOpt = False,
    interval: IntervalOpt = 1.0,
    output: OutputOpt = Format.table,
) -> None:
    """Observed state per replica (node, agent, state, counters, rate, last error)
    and each flow's effective state, from what agents report.

    Example: flowctl status orders --watch
    """

    async def fetch(engine: Any) -> Any:
        return await status_data(engine, name)

    def draw(data: Any) -> None:
        if output.tabular:
            _print_status(data, output == Format.wide)
        else:
            show(data[0] if name else data, output)

    reading(fetch, draw, watch, interval)
