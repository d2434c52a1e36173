"""The console's HTTP API (FastAPI; OpenAPI at ``/openapi.json``, docs at ``/docs``).

Everything a user does with ``flowctl`` reading commands is here as JSON: flows (list,
get with graph and status, apply a spec, validate, history, rollback), lifecycle actions,
status per replica, agents, dead letters, logs and changes as server-sent events. Control
(apply, actions, rollback) needs ``--allow-control`` and the bearer token
(:mod:`console.auth`). Errors are JSON ``{"detail": ...}`` with a fitting status: 404
unknown flow, 409 a transition or revision conflict, 422 invalid input, 503 NATS busy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as UrlPath
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from console import auth
from console.events import ChangeHub, log_events
from console.graph import layout
from console.series import KEEP_S, SAMPLE_S
from flowengine import deadletters
from flowengine.observe import in_flow_order
from flowengine.results import NOTHING_TO_DO, applicable_actions
from flowengine.since import parse_since
from flowstore.errors import FlowctlError, FlowNotFound, InvalidTransition, RevisionConflict
from flowstore.figures import by_node, node_figures
from flowstore.liveness import as_seen, silent_for
from flowstore.models import NAME_PATTERN, AgentRecord
from flowstore.store import read_all

STATIC = Path(__file__).parent / "static"
Name = Annotated[str, UrlPath(pattern=NAME_PATTERN, max_length=63)]
Action = Literal["deploy", "start", "stop", "undeploy"]


@dataclass
class Console:
    """What the API works with: one engine (one NATS connection) for every request."""

    engine: Any
    access: auth.Access
    hub: ChangeHub
    version: str = "0.1.0"


def create_app(console: Console) -> FastAPI:
    app = FastAPI(title="flowctl console API", version=console.version,
                  description="Flows, their state and their events, over NATS.")
    engine = console.engine

    def reader(authorization: Annotated[str | None, Header()] = None) -> None:
        _check(console.access, authorization, control=False)

    def controller(authorization: Annotated[str | None, Header()] = None) -> None:
        _check(console.access, authorization, control=True)

    read = [Depends(reader)]
    control = [Depends(controller)]

    @app.exception_handler(FlowctlError)
    async def flowctl_error(_: Request, exc: FlowctlError) -> JSONResponse:
        code = 404 if isinstance(exc, FlowNotFound) else 409 if isinstance(
            exc, InvalidTransition | RevisionConflict) else 422
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(TimeoutError)
    async def nats_busy(_: Request, exc: TimeoutError) -> JSONResponse:
        return JSONResponse({"detail": f"NATS did not answer in time ({exc})"},
                            status_code=503)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info", dependencies=read)
    async def info() -> dict[str, Any]:
        """What this console allows (the page shows buttons only when control is allowed)."""
        return {"version": console.version, "allow_control": console.access.allow_control,
                "reading_needs_token": console.access.reading_needs_token}

    @app.get("/api/flows", dependencies=read)
    async def list_flows() -> list[dict[str, Any]]:
        """Every flow with its desired and observed state."""
        out = []
        for record in await engine.flows.list():
            effective = await engine.effective_state(record.name)
            out.append({"name": record.name, "desired": record.state.value,
                        "observed": effective.observed.value, "revision": record.revision,
                        "nodes": len(record.spec.nodes), "delivery": record.spec.delivery,
                        "updated_at": record.updated_at,
                        "actions": applicable_actions(record.state.value)})
        return out

    @app.get("/api/flows/{name}", dependencies=read)
    async def get_flow(name: Name) -> dict[str, Any]:
        """A flow: its record, effective state, graph (for drawing), replica status, each
        node's figures (its replicas summed) and the lifecycle actions that apply now."""
        record = await engine.flows.get(name)
        status = await _status(engine, name, record)
        return {"flow": record.model_dump(mode="json"),
                "effective": (await engine.effective_state(name)).to_dict(),
                "graph": layout(record.spec), "status": status,
                "nodes": {node: node_figures(replicas)
                          for node, replicas in by_node(status).items()},
                "actions": applicable_actions(record.state.value)}

    @app.get("/api/flows/{name}/series", dependencies=read)
    async def series(name: Name) -> dict[str, Any]:
        """The flow's figures over the last minutes, one sample a second, oldest first:
        ``{t, nodes: {node: {rate_in, rate_out, lag, out_ports}}, ports: {"node.port":
        events/s}}``; new samples follow as ``event: sample`` on ``/api/events?flow=``,
        with each node's figures whole (state, reason, counters, as in ``GET
        /api/flows/{name}``)."""
        await engine.flows.get(name)  # 404 for an unknown flow
        return {"interval_s": SAMPLE_S, "keep_s": KEEP_S,
                "samples": console.hub.series.of(name)}

    @app.get("/api/flows/{name}/status", dependencies=read)
    async def flow_status(name: Name) -> list[dict[str, Any]]:
        """Replica records in flow order (counters, rate, lag, state, last error)."""
        return await _status(engine, name, await engine.flows.get(name))

    @app.get("/api/flows/{name}/history", dependencies=read)
    async def history(name: Name) -> list[dict[str, Any]]:
        """Every stored revision of the flow."""
        return [r.model_dump(mode="json") for r in await engine.flows.history(name)]

    @app.post("/api/validate", dependencies=read)
    async def validate(document: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Check a flow document (the flow file as JSON); nothing is written."""
        loaded, result = _validated(document)
        return {"name": loaded.name if loaded else None, **result.model_dump(mode="json")}

    @app.put("/api/flows/{name}", dependencies=control)
    async def apply(name: Name, document: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Create or update a flow from a flow document (validated first: 422 with the
        issues when invalid; nothing is written then)."""
        loaded, result = _validated(document)
        if loaded is None or result.status == "errors":
            raise HTTPException(422, {"message": "the flow is not valid",
                                      **result.model_dump(mode="json")})
        if loaded.name != name:
            raise HTTPException(422, f"the document names flow '{loaded.name}', not '{name}'")
        applied = await engine.apply(name, loaded.spec)
        return {"flow": applied.flow.model_dump(mode="json"), "created": applied.created,
                "changes": applied.changes.to_dict()}

    @app.post("/api/flows/{name}/actions/{action}", dependencies=control)
    async def act(name: Name, action: Action) -> dict[str, Any]:
        """deploy, start, stop or undeploy the flow; one that is already there answers
        ``{"changed": false}`` (200), as ``flowctl`` does."""
        record = await engine.flows.get(name)
        nothing = NOTHING_TO_DO.get((action, record.state.value))
        if nothing:
            return {"flow": name, "action": action, "changed": False,
                    "state": record.state.value, "message": nothing}
        return {**(await getattr(engine, action)(name)).to_dict(), "changed": True}

    @app.post("/api/flows/{name}/rollback", dependencies=control)
    async def rollback(name: Name, revision: Annotated[int | None, Query(ge=1)] = None
                       ) -> dict[str, Any]:
        """Restore the spec of ``revision`` (default: the one before the current)."""
        applied = await engine.rollback(name, revision)
        return {"flow": applied.flow.model_dump(mode="json"),
                "changes": applied.changes.to_dict()}

    @app.get("/api/agents", dependencies=read)
    async def agents() -> list[dict[str, Any]]:
        """Agents with labels, heartbeat age, liveness and load."""
        out, now = [], datetime.now(UTC)
        for entry in (await read_all(engine.agents)).values():
            record, _ = AgentRecord.parse(entry.value)
            if record is not None:
                out.append({**record.model_dump(mode="json"),
                            "age_s": round(record.age_s(now), 1),
                            "live": silent_for(record, now) is None})
        return sorted(out, key=lambda a: a["name"])

    @app.get("/api/flows/{name}/dlq", dependencies=read)
    async def dead_letter_counts(name: Name) -> dict[str, int]:
        """Dead letters kept per node."""
        return await engine.dead_letters(name)

    @app.get("/api/flows/{name}/dlq/{node}", dependencies=read)
    async def dead_letters(name: Name, node: Name,
                           limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
                           ) -> list[dict[str, Any]]:
        """A node's dead letters, oldest first."""
        return [letter.to_dict()
                async for letter in deadletters.read(engine.nc, name, node, limit)]

    @app.post("/api/flows/{name}/dlq/{node}/replay", dependencies=control)
    async def replay(name: Name, node: Name,
                     port: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                     limit: Annotated[int | None, Query(ge=1, le=1_000_000)] = None
                     ) -> dict[str, Any]:
        """Send a node's dead letters back into its input (``port``, default its first),
        oldest first, as ``flowctl dlq replay`` does; 409 when the flow cannot take them
        now (not deployed; at-most-once and not running) or the node has no input."""
        try:
            done = await deadletters.replay_node(engine, name, node, port, limit)
        except deadletters.ReplayRefused as exc:
            raise HTTPException(409, str(exc)) from None
        return {**done.to_dict(), "waiting": done.waiting}

    @app.get("/api/flows/{name}/logs", dependencies=read,
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def logs(name: Name, node: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                   since: Annotated[str | None, Query(
                       max_length=40, description="30s, 10m, 2h, 1d or an ISO 8601 time")]
                   = None,
                   follow: bool = False,
                   last_event_id: Annotated[int | None, Header(ge=0, le=2**63 - 1)] = None
                   ) -> StreamingResponse:
        """Stored log lines as server-sent events (``event: log``, the stream sequence as
        the id: a reconnecting client resumes after ``Last-Event-ID``), then new ones with
        ``follow``."""
        start = None
        if since is not None:
            try:
                start = parse_since(since, datetime.now(UTC))
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
        return _event_stream(log_events(engine.nc, name, node, last_event_id, start, follow))

    @app.get("/api/events", dependencies=read, response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(flow: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None
                     ) -> StreamingResponse:
        """Changes of flows, replica status and agents as server-sent events (``event:
        change``, data ``{bucket, key, op, value}``), from KV watches: no polling."""
        return _event_stream(console.hub.stream(flow))

    return app


def _check(access: auth.Access, authorization: str | None, control: bool) -> None:
    refused = auth.verdict(access, authorization, control)
    if refused is not None:
        status, reason = refused
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise HTTPException(status, reason, headers=headers)


def _event_stream(source: Any) -> StreamingResponse:
    return StreamingResponse(source, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _validated(document: dict[str, Any]) -> tuple[Any, Any]:
    from flowengine.validate import validate_loaded
    from flowstore.loader import FlowFileError, parse_flow_lenient

    try:
        loaded, problems = parse_flow_lenient(json.dumps(document), "<request>")
    except FlowFileError as exc:
        raise HTTPException(422, {"message": "not a flow document",
                                  "problems": [str(p) for p in exc.problems]}) from None
    return loaded, validate_loaded(loaded, problems)


async def _status(engine: Any, name: str, record: Any) -> list[dict[str, Any]]:
    statuses = in_flow_order(await engine.list_status(name), record.spec)
    agents, now = await engine.agent_records(), datetime.now(UTC)
    return [as_seen(s.model_dump(mode="json", by_alias=True, exclude_none=True),
                    agents.get(s.agent or ""), now) for s in statuses]
