"""``flowctl logs``: component log lines and event failures, read from where NATS keeps them
(the FLOWCTL_LOGS stream), then followed live.

Agents publish every component log line (stdout/stderr of programs and containers,
``ctx.log`` of in-process components), every event failure (once per interval per kind of
failure, with the event id, plus a count of the others) and what the agent says about a
replica (``replica failed: ...``) on ``flowctl.logs.<flow>.<node>.<replica>``; the stream
keeps them for a few days within a size limit (README, "Operating a flow"). Without
``--follow`` the command prints what is stored and exits; with it, it goes on printing
new lines until Ctrl+C. The choices (parsing ``--since``, matching ``--grep``, rendering
a line) are pure functions below.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from cli.errors import run
from cli.main import NameArg, OutputOpt, app, connect_nats, valid_name
from cli.output import Format, info


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: see :func:`flowengine.since.parse_since` (a usage error when bad)."""
    from flowengine.since import parse_since as parse

    try:
        return parse(text, now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None


def compile_grep(text: str | None) -> re.Pattern[str] | None:
    if text is None:
        return None
    try:
        return re.compile(text)
    except (re.error, OverflowError, RecursionError) as exc:
        raise typer.BadParameter(f"'{text}' is not a regular expression: {exc}",
                                 param_hint="--grep") from None


def render(record: dict[str, Any], output: Format) -> str:
    """One stored line as the user asked for it (a record that is not ours: as is)."""
    if output == Format.json:
        return json.dumps(record, separators=(",", ":"))
    if output == Format.yaml:
        import yaml

        return "---\n" + yaml.safe_dump(record, sort_keys=False).rstrip()
    try:
        where = f"{record['node']}.{record['replica']}@{record['agent']}"
        stream = record.get("stream", "stdout")
        tag = "" if stream in ("stdout", "stderr") else f"[{stream}] "
        event = f" (event {record['event_id']})" if record.get("event_id") else ""
        return f"{record['ts']} {where} {tag}{record['line']}{event}"
    except (KeyError, TypeError):
        return json.dumps(record)


def nothing_shown(flow: str, node: str | None, start: datetime | None,
                  pattern: re.Pattern[str] | None) -> str:
    """What to say when no line was printed (on stderr; the exit code stays 0: an empty
    log is an answer, not a failure): which lines there were none of, since when."""
    what = f"flow/{flow}" + (f" node {node}" if node else "")
    matching = f" matching {pattern.pattern!r}" if pattern is not None else ""
    since = (f" since {start.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}" if start is not None
             else " in what NATS keeps (FLOWCTL_LOGS)")
    return (f"no log lines of {what}{matching}{since}: lines appear when a component "
            "prints or logs, an event fails or a replica fails (--follow waits for them)")


def decode(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"line": data.decode("utf-8", "replace")}


@app.command()
def logs(
    name: NameArg,
    node_arg: Annotated[str | None, typer.Argument(
        metavar="[NODE]", help="One node (same as --node); all when omitted.",
        callback=valid_name("node"))] = None,
    node: Annotated[str | None, typer.Option("--node", "-n", help="One node.",
                                             callback=valid_name("node"))] = None,
    since: Annotated[str | None, typer.Option(
        help="Only lines since then: 30s, 10m, 2h, 1d or a time (2026-11-25T10:00:00Z). "
        "Default: everything kept.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new "
                                         "lines until Ctrl+C.")] = False,
    grep: Annotated[str | None, typer.Option(
        help="Only lines matching this regular expression.")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Component log lines and event failures of a flow, kept by NATS (FLOWCTL_LOGS):
    what is stored, then (--follow) new lines as they come.

    Example: flowctl logs orders --node enrich --since 10m --grep timeout --follow
    """
    if node and node_arg and node != node_arg:
        raise typer.BadParameter(f"two nodes given: '{node_arg}' and '{node}'",
                                 param_hint="--node")
    start = parse_since(since, datetime.now(UTC)) if since else None
    pattern = compile_grep(grep)
    run(_read(name, node or node_arg, start, follow, pattern, output))


async def _read(flow: str, node: str | None, start: datetime | None, follow: bool,
                pattern: re.Pattern[str] | None, output: Format) -> None:
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    from flowstore.models import logs_subject
    from flowstore.streams import LOGS_STREAM

    subject = logs_subject(flow, node or "*", "*")

    shown = 0

    def show(data: bytes) -> None:
        nonlocal shown
        text = render(decode(data), output)
        if pattern is None or pattern.search(text):
            print(text, flush=True)
            shown += 1

    nc = await connect_nats(reconnect=follow)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(LOGS_STREAM)
            stored = True
        except NotFoundError:
            stored = False
            info("no logs are kept on this server yet (FLOWCTL_LOGS appears with the first "
                 "deploy or agent of this version)")
        to_come = stored and start is not None and start > datetime.now(UTC)
        if to_come:
            stored = False  # nothing was kept after a time still to come
        if stored:
            config = (ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                     opt_start_time=start.isoformat().replace("+00:00", "Z"))
                      if start else ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            sub = await js.subscribe(subject, stream=LOGS_STREAM, ordered_consumer=True,
                                     config=config)
            # Messages may be pushed before consumer_info answers: nothing is there only
            # when nothing is pending and nothing was delivered; then each message says
            # how many more there are.
            state = await sub.consumer_info()
            more = bool(state.num_pending) or bool(state.delivered and
                                                  state.delivered.consumer_seq)
            while more:
                msg = await sub.next_msg(timeout=10)
                show(msg.data)
                more = bool(msg.metadata.num_pending)
            if not follow:
                await sub.unsubscribe()
                if not shown:
                    await _say_why_none(nc, flow, nothing_shown(flow, node, start, pattern))
                return
        else:
            if not follow:
                if to_come:
                    info(nothing_shown(flow, node, start, pattern))
                return
            sub = await nc.subscribe(subject)
        info(f"following {subject} (Ctrl+C stops)")
        from cli.live import stop_event

        stop = stop_event()
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            show(msg.data)
    finally:
        await nc.close()


async def _say_why_none(nc: object, flow: str, otherwise: str) -> None:
    """Nothing printed: say that a flow does not exist (a typo?), ``otherwise``
    otherwise."""
    from flowstore.errors import FlowNotFound
    from flowstore.store import FlowStore

    try:
        await (await FlowStore.open(nc)).get(flow)  # type: ignore[arg-type]
    except FlowNotFound:
        info(f"no flow/{flow} (its logs would still show here if it had been deleted)")
        return
    except Exception:  # a hint only
        pass
    info(otherwise)
