"""``flowctl status``: observed state per replica and each flow's effective state, from
what agents report; ``--watch`` redraws it live (see :mod:`cli.live`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from cli.main import OutputOpt, app, valid_name
from cli.observe import IntervalOpt, WatchOpt, reading
from cli.output import Format, age, show, table

STATUS_COLUMNS = ["NODE", "REPLICA", "AGENT", "STATE", "IN", "OUT", "FILTERED", "ERRORS",
                  "DROPPED", "RATE", "REASON / LAST ERROR"]
STATUS_COLUMNS_WIDE = [*STATUS_COLUMNS[:-1], "REDELIVERED", "RESTARTS", "PID", "REVISION",
                       "UP", "REASON / LAST ERROR"]


def _counts(s: dict[str, Any]) -> list[Any]:
    c = s.get("counters", {})
    return [c.get(k, 0) for k in ("in", "out", "filtered", "errors", "dropped")]


def _status_rows(statuses: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["node"], s["replica"], s.get("agent") or "-", s["state"], *_counts(s),
             _rate(s), (s.get("reason") or s.get("last_error") or "")[:100]]
            for s in statuses]


def _status_rows_wide(statuses: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["node"], s["replica"], s.get("agent") or "-", s["state"], *_counts(s),
             _rate(s), s.get("counters", {}).get("redelivered", 0), s.get("restarts", 0),
             s.get("pid") or "-",
             s.get("flow_revision") or "-", age(s.get("started_at")),
             s.get("reason") or s.get("last_error") or ""]
            for s in statuses]


def _rate(s: dict[str, Any]) -> str:
    """Average events/s since the replica started (in for sinks, else out)."""
    started, updated = s.get("started_at"), s.get("updated_at")
    if not started or not updated or s.get("state") not in ("running", "degraded"):
        return ""
    t0 = datetime.fromisoformat(started.replace("Z", "+00:00"))
    t1 = datetime.fromisoformat(updated.replace("Z", "+00:00"))
    secs = (t1 - t0).total_seconds()
    c = s.get("counters", {})
    n = c.get("out", 0) or c.get("in", 0)
    return f"{n / secs:.0f}/s" if secs > 0.5 else ""


async def _status_data(engine: Any, name: str | None) -> list[dict[str, Any]]:
    from cli.observe import say_broken

    names = [name] if name else [f.name for f in await engine.flows.list()]
    say_broken("flowctl_flows", engine.flows.broken if not name else {})
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
        return await _status_data(engine, name)

    def draw(data: Any) -> None:
        if output.tabular:
            _print_status(data, output == Format.wide)
        else:
            show(data[0] if name else data, output)

    reading(fetch, draw, watch, interval)
