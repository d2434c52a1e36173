"""Process commands: ``flowctl agent`` and the one-command ``flowctl run``
(``flowctl server`` is in :mod:`cli.server`).

``run`` owns everything it starts (an embedded nats-server unless ``--nats-url`` is
given, one in-process agent per distinct placement of the flow, the flow itself) and
tears it all down in reverse order on Ctrl+C, SIGTERM or, with ``--until-done``, once
every source has completed and every node has consumed what its upstreams produced.

A run has an id, ``run-<pid>``. Its agents carry the label ``flowctl.run=<id>`` and the
flow it applies requires that label on every node (besides the node's own placement),
so with ``--nats-url`` no replica lands on another agent connected to the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import EXIT_FAILED, run
from cli.main import app, globals_, valid_name
from cli.output import info, spinner, table


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{part}' is not k=v", param_hint="--labels")
        out[key] = value
    return out


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@app.command()
def agent(
    name: Annotated[str, typer.Option("--name", help="Unique agent name.",
                                      callback=valid_name("agent"))],
    labels: Annotated[str, typer.Option(help="Labels k=v,k2=v2 for placement.")] = "",
    heartbeat: Annotated[float, typer.Option(help="Heartbeat interval, seconds.")] = 2.0,
    status_interval: Annotated[float, typer.Option(help="Status refresh, seconds.")] = 2.0,
    log_dir: Annotated[str | None, typer.Option(help="Component log files.")] = None,
    allow_inline_code: Annotated[
        bool, typer.Option("--allow-inline-code", help="Allow `python` nodes with code:.")
    ] = False,
    python_path: Annotated[
        list[Path] | None,
        typer.Option("--python-path", help="Directory to import `python` node modules "
                     "from (repeatable; PYTHONPATH works too).", file_okay=False),
    ] = None,
) -> None:
    """Run the agent: runs the component replicas assigned to NAME until Ctrl+C/SIGTERM.

    Example: flowctl agent --name edge-1 --labels zone=a,gpu=false --python-path ./flows
    """
    from componentmanager.agent import Agent, AgentSettings

    for directory in reversed(python_path or []):
        sys.path.insert(0, str(directory.resolve()))

    settings = AgentSettings(
        name=name, labels=_labels(labels), heartbeat=heartbeat,
        status_interval=status_interval, allow_inline_code=allow_inline_code,
    )
    if log_dir:
        settings.log_dir = log_dir

    async def go() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        opts = globals_().options()
        the_agent = Agent(settings, opts)
        # `kill -USR1 <pid>`: every task of both loops with its stack, on stderr.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, the_agent.dump_tasks, sys.stderr)
        await the_agent.run(stop)

    run(go())


#: The label every agent of a `flowctl run` carries and every node of its flow requires.
RUN_LABEL = "flowctl.run"
#: How long the embedded agents may take to connect and report ready.
READY_TIMEOUT_S = 15.0


def run_id() -> str:
    return f"run-{os.getpid()}"


def pinned_to_run(spec: Any, run: str) -> Any:
    """``spec`` with every node's placement also requiring ``flowctl.run=<run>``; a node's
    own labels and agent name are kept (the run starts an agent of that name)."""
    from flowstore.models import Placement

    nodes = []
    for node in spec.nodes:
        p = node.placement
        placement = Placement(agent=p.agent if p else None,
                              labels={**(p.labels if p else {}), RUN_LABEL: run})
        nodes.append(node.model_copy(update={"placement": placement}))
    return spec.model_copy(update={"nodes": nodes})


def _placements(spec: Any) -> list[tuple[str | None, dict[str, str]]]:
    """One (agent name, labels) per distinct placement in the flow, plus an unlabelled
    default agent when some node has no placement (or the flow has no nodes)."""
    found: list[tuple[str | None, dict[str, str]]] = []
    if not spec.nodes or any(n.placement is None for n in spec.nodes):
        found.append((None, {}))
    for node in spec.nodes:
        p = node.placement
        if p is not None and (p.agent, p.labels) not in found:
            found.append((p.agent, dict(p.labels)))
    return found


@app.command("run")
def run_flow(
    file: Annotated[Path, typer.Argument(help="The flow file to run.")],
    until_done: Annotated[
        bool, typer.Option("--until-done", help="Exit when sources finished and drained.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --until-done: give up after N s.")] = 0,
    allow_inline_code: Annotated[bool, typer.Option("--allow-inline-code")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Agent logs.")] = False,
) -> None:
    """The one-command mode: embedded NATS + agent, apply/deploy/start the flow, show
    status and sink output; Ctrl+C (or --until-done) stops, undeploys, shuts all down.

    Example: flowctl run examples/hello.yaml --until-done
    """
    from cli.logging import configure
    from flowengine import ValidationFailed
    from flowengine import validate as check
    from flowstore import load_flow

    if not verbose:
        configure(json_logs=globals_().log_json, level=logging.WARNING)

    async def go() -> int:
        loaded = load_flow(file)
        checked = check(loaded.spec, source=loaded.source, name=loaded.name)
        if not checked.ok:
            raise ValidationFailed(checked, loaded.name)
        # `python` nodes import `module:function`: modules next to the flow file resolve.
        sys.path.insert(0, str(file.resolve().parent))
        async with Embedded(loaded, allow_inline_code) as emb:
            return await emb.watch(until_done, timeout)

    raise typer.Exit(run(go()))


class Embedded:
    """Everything `flowctl run` starts, owned and torn down in reverse order."""

    def __init__(self, loaded: Any, allow_inline_code: bool) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.allow_inline_code = allow_inline_code
        self.server: Any = None
        self.agents: list[Any] = []
        self.agent_tasks: list[asyncio.Task[None]] = []
        self.stop_agents = asyncio.Event()
        self.interrupted = asyncio.Event()
        self.engine: Any = None
        self.nc: Any = None
        self.run_id = run_id()
        self.applied = False  # teardown undeploys only what this run applied

    async def __aenter__(self) -> Embedded:
        from cli.main import connect_nats
        from flowengine import FlowEngine
        from flowstore.errors import FlowctlError
        from flowstore.server import EmbeddedNats

        _stop_on_signals(self.interrupted)
        g = globals_()
        opts = g.options()
        placements = _placements(self.loaded.spec)
        try:
            with spinner(f"starting NATS and {len(placements)} agent(s)"):
                if not g.nats_url_given:
                    try:
                        self.server = await asyncio.to_thread(EmbeddedNats().start)
                    except (RuntimeError, FileNotFoundError) as exc:
                        raise FlowctlError(f"cannot start the embedded nats-server: {exc}"
                                           ) from exc
                    opts.url = self.server.url
                    info(f"embedded nats-server on {opts.url}")
                self.nc = await connect_nats(opts)
                self.engine = await FlowEngine.open(self.nc, kv_replicas=opts.kv_replicas)
                self._start_agents(placements, opts)
                try:
                    await asyncio.wait_for(_all_ready(self.agents, self.agent_tasks),
                                           READY_TIMEOUT_S)
                except TimeoutError:
                    raise FlowctlError(
                        f"the embedded agents were not ready within {READY_TIMEOUT_S:g}s "
                        f"(is NATS at {opts.url} slow or overloaded? --verbose shows their "
                        "logs)") from None
            # Only this run's agents may take the flow's replicas (see the module doc).
            spec = pinned_to_run(self.loaded.spec, self.run_id)
            result = await self.engine.apply(self.name, spec)
            self.applied = True
            info(f"flow/{self.name} applied (revision {result.flow.revision})")
            record = await self.engine.flows.get(self.name)
            if record.state == "running":
                await self.engine.stop(self.name)
                record = await self.engine.flows.get(self.name)
            if record.state == "not_deployed":
                r = await self.engine.deploy(self.name)
                info(f"flow/{self.name} deployed: {len(r.changes.written)} component config(s)")
            await self.engine.start(self.name)
            info(f"flow/{self.name} started; Ctrl+C stops it")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _start_agents(self, placements: list[tuple[str | None, dict[str, str]]],
                      opts: Any) -> None:
        from componentmanager.agent import Agent, AgentSettings

        for i, (agent_name, labels) in enumerate(placements):
            settings = AgentSettings(
                name=agent_name or f"{self.run_id}-{i}",
                labels={**labels, RUN_LABEL: self.run_id},
                heartbeat=1.0,
                status_interval=0.5,
                # An agent reconciles first after a config change or a resync: with an
                # empty config bucket that is one resync interval, so keep it short.
                resync_interval=0.5,
                allow_inline_code=self.allow_inline_code,
                lead=True,
            )
            agent = Agent(settings, opts)
            if len(placements) > 1:
                where = ",".join(f"{k}={v}" for k, v in labels.items()) or "no labels"
                info(f"agent {settings.name} ({where})")
            self.agents.append(agent)
            self.agent_tasks.append(asyncio.create_task(agent.run(self.stop_agents)))

    async def watch(self, until_done: bool, timeout: float) -> int:
        from cli.drain import drained

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        last_print = loop.time()
        stable = 0
        while not self.interrupted.is_set():
            if any(t.done() for t in self.agent_tasks):
                info("an embedded agent stopped unexpectedly")
                return EXIT_FAILED
            await asyncio.sleep(0.25)
            if not until_done and not sys.stderr.isatty():
                continue
            configs = await self.engine.list_configs(self.name)
            statuses = await self.engine.list_status(self.name)
            if sys.stderr.isatty() and loop.time() - last_print > 2:
                last_print = loop.time()
                info(_one_line(statuses))
            if until_done:
                done, failed = drained(self.loaded.spec, configs, statuses)
                stable = stable + 1 if done else 0
                if failed:
                    self.final = statuses
                    info("a replica failed: " + "; ".join(failed))
                    return EXIT_FAILED
                if stable >= 3:
                    self.final = statuses
                    return 0
                if deadline is not None and loop.time() > deadline:
                    info(f"not done after {timeout:g}s")
                    self.final = statuses
                    return EXIT_FAILED
        info("interrupted: stopping")
        return 0

    async def __aexit__(self, *exc: object) -> None:
        with spinner("stopping"):
            await self._teardown()
        final = getattr(self, "final", None)
        if final:
            rows = [[s.node, s.replica, s.agent or "-", s.state.value, s.counters.in_,
                     s.counters.out, s.counters.filtered, s.counters.errors,
                     s.counters.dropped, s.reason or s.last_error or ""] for s in final]
            with contextlib.redirect_stdout(sys.stderr):
                table(["NODE", "REPLICA", "AGENT", "STATE", "IN", "OUT", "FILTERED", "ERRORS",
                       "DROPPED", "REASON / LAST ERROR"], rows)

    async def _teardown(self) -> None:
        if self.engine is not None and self.applied:
            try:
                await self.engine.undeploy(self.name, force=True)
                info(f"flow/{self.name} stopped and undeployed")
            except Exception as exc:
                info(f"could not undeploy flow/{self.name}: {exc or type(exc).__name__}")
        self.stop_agents.set()
        if self.agent_tasks:
            _, late = await asyncio.wait(self.agent_tasks, timeout=45)
            for task in late:  # never hang on exit: abandon an agent that will not stop
                info("an embedded agent did not stop in time; abandoning it")
                task.cancel()
            await asyncio.gather(*self.agent_tasks, return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)


async def _all_ready(agents: list[Any], tasks: list[asyncio.Task[None]]) -> None:
    while not all(a.ready.is_set() for a in agents):
        for t in tasks:
            if t.done():
                t.result()  # raises what stopped it
                raise RuntimeError("an embedded agent stopped during start-up")
        await asyncio.sleep(0.05)


def _one_line(statuses: list[Any]) -> str:
    parts = [f"{s.node}.{s.replica}:{s.state.value} in={s.counters.in_} out={s.counters.out}"
             for s in statuses]
    return "  ".join(parts)
