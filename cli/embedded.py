"""The one-command ``flowctl run``.

``run`` owns everything it starts (an embedded nats-server unless ``--nats-url`` is
given, one in-process agent per distinct placement of the flow, the flow itself) and
tears it all down in reverse order on Ctrl+C, SIGTERM or, with ``--until-done``, once
the flow is done (:mod:`cli.drain`). On Ctrl+C or SIGTERM the sources stop first and the
rest drains, bounded (:mod:`cli.interrupt`). It never touches a flow it did not create:
when a flow of that name exists on the server it refuses (``--name`` runs it under
another name), and at the end it stops, undeploys and deletes only the flow it created.
The end prints a summary per node, with what each node left unprocessed; the exit code
is 130 after Ctrl+C, 143 after SIGTERM, else 1 when an event failed, was dropped,
dead-lettered or left unprocessed, or a replica failed.

A run has an id, ``run-<pid>``. Its agents carry the label ``flowctl.run=<id>`` and the
flow it applies requires that label on every node (besides the node's own placement),
so with ``--nats-url`` no replica lands on another agent connected to the same server.
While it runs, its embedded server is recorded (:mod:`cli.runrecord`): ``flowctl list``,
``status``, ``logs``, ``ui`` ... given no ``--nats-url`` find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.agent import OrchestratorOpt
from cli.drain import (
    SUMMARY_COLUMNS,
    drained,
    endless_sources,
    left_over,
    left_sentence,
    outcome,
    reports_counters,
    still_held,
    unconfirmed,
)
from cli.errors import EXIT_FAILED, EXIT_USAGE, fail, run
from cli.interrupt import DRAIN_TIMEOUT_S, DrainOpt, Signals, drain
from cli.main import app, globals_, valid_name
from cli.output import info, spinner, table
from cli.programs import QuietOpt, show_program_line
from cli.runrecord import remove_record, write_record
from cli.ui import UiOpt, UiPortOpt, console_beside

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
        bool, typer.Option("--until-done", help="Exit once the flow is done: sources "
                           "finished, everything consumed, nothing pending.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --until-done: give up after N s.")] = 0,
    name: Annotated[
        str | None, typer.Option("--name", help="Run under this name, not metadata.name.",
                                 callback=valid_name("flow"))
    ] = None,
    allow_inline_code: Annotated[bool, typer.Option(
        "--allow-inline-code/--no-inline-code", help="Run inline `code:` (default: yes, "
        "your own machine).")] = True,
    commands: Annotated[bool, typer.Option(
        "--commands/--no-commands", help="Run `command:` and `image:` nodes (default: yes, "
        "your own machine).")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Agent logs.")] = False,
    quiet: QuietOpt = False,
    metrics_port: Annotated[int, typer.Option(
        "--metrics-port", min=0, max=65535, help="Serve the agent's Prometheus metrics on "
        "127.0.0.1:PORT (0: a free port, printed; more agents: PORT+1, ...).")] = 0,
    ui: UiOpt = False,
    ui_port: UiPortOpt = 8080,
    drain_timeout: DrainOpt = DRAIN_TIMEOUT_S,
    orchestrator: OrchestratorOpt = None,
) -> None:
    """The one-command mode: embedded NATS + agent, apply/deploy/start the flow, show
    status, sink output and the programs' output lines (\\[node.replica] first, on stderr;
    -q hides them); Ctrl+C (or --until-done) stops it, prints a summary per node
    and removes what the run created. Exit 1 when an event failed or was lost; after
    Ctrl+C (SIGTERM) the sources stop first, the rest drains (--drain-timeout), exit 130
    (143).

    Example: flowctl run examples/hello.yaml --until-done
    """
    if timeout and not until_done:
        raise typer.BadParameter("--timeout only applies with --until-done",
                                 param_hint="--timeout")
    quiet_agents(verbose)

    async def go() -> int:
        loaded = load_to_run(file, name)
        if until_done and not timeout:
            refuse_endless(loaded)
        async with Embedded(loaded, allow_inline_code, commands, metrics_port=metrics_port,
                            ui_port=ui_port if ui else None,
                            drain_timeout=drain_timeout, echo=not quiet,
                            orchestrator=orchestrator.value if orchestrator else None) as emb:
            code = await emb.watch(until_done, timeout)
        return code or emb.exit_code

    raise typer.Exit(run(go()))


def refuse_endless(loaded: Any) -> None:
    """``--until-done`` without ``--timeout`` of a flow that can never be done (a source
    that never finishes: :func:`cli.drain.endless_sources`) is a usage error (exit 2), at
    once, before anything starts: it would wait forever."""
    endless = endless_sources(loaded.spec)
    if endless:
        fail(f"--until-done: flow {loaded.name} would never be done: "
             f"{'; '.join(endless)}. Give it an end (a count, no follow), or add "
             "--timeout SECONDS to stop it after that long", EXIT_USAGE)


def quiet_agents(verbose: bool) -> None:
    """The embedded agents log only warnings unless ``--verbose``."""
    if not verbose:
        from cli.logging import configure

        configure(json_logs=globals_().log_json, level=logging.WARNING)


def load_to_run(file: Path, name: str | None) -> Any:
    """The flow of ``file``, checked (errors raise) as a flow that runs on this machine
    (a python module not found here is an error), under ``--name`` when given."""
    import dataclasses

    from cli.files import load_checked

    loaded = load_checked([str(file)], local=True)[0]
    return dataclasses.replace(loaded, name=name) if name else loaded


class Embedded:
    """Everything `flowctl run` starts, owned and torn down in reverse order."""

    def __init__(self, loaded: Any, allow_inline_code: bool, commands: bool = True,
                 command: str = "run", metrics_port: int | None = 0,
                 ui_port: int | None = None, drain_timeout: float = DRAIN_TIMEOUT_S,
                 echo: bool = True, orchestrator: str | None = None) -> None:
        self.command = command  # the command that runs it: run or dev (for messages)
        self.metrics_port = metrics_port  # None: no metrics
        self.ui_port = ui_port  # None: no console
        self.console: Any = None
        self.loaded = loaded
        self.name = loaded.name
        self.allow_inline_code = allow_inline_code
        self.echo = echo  # show the programs' output lines
        self.allowed = ("*",) if commands else ()  # programs and images, your machine
        self.server: Any = None
        self.record: Path | None = None  # where the other commands find the server
        self.agents: list[Any] = []
        self.agent_tasks: list[asyncio.Task[None]] = []
        self.stop_agents = asyncio.Event()
        self.signals = Signals()  # Ctrl+C, SIGTERM
        self.interrupted = self.signals.interrupted
        self.drain_timeout = drain_timeout
        self.orchestrator = orchestrator  # for nodes with both a program and an image
        self.engine: Any = None
        self.nc: Any = None
        self.run_id = run_id()
        self.created = False  # teardown removes only the flow this run created
        self.dead_letters_before: dict[str, int] = {}
        self.exit_code = 0

    async def __aenter__(self) -> Embedded:
        from cli.main import connect_nats
        from flowengine import FlowEngine
        from flowstore.errors import FlowctlError
        from flowstore.server import EmbeddedNats

        self.signals.install()
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
                    self.record = write_record(opts.url, self.name, self.command)
                self.nc = await connect_nats(opts)
                self.engine = await FlowEngine.open(self.nc, kv_replicas=opts.kv_replicas)
                await self._refuse_existing(opts.url)
                self._start_agents(placements, opts)
                try:
                    await asyncio.wait_for(_all_ready(self.agents, self.agent_tasks),
                                           READY_TIMEOUT_S)
                except TimeoutError:
                    raise FlowctlError(
                        f"the embedded agents were not ready within {READY_TIMEOUT_S:g}s "
                        f"(is NATS at {opts.url} slow or overloaded? --verbose shows their "
                        "logs)") from None
            await self._create_and_start(opts.url)
            if self.ui_port is not None:
                self.console = await console_beside(self.nc, self.ui_port)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _refuse_existing(self, url: str) -> None:
        from flowstore.errors import FlowctlError, FlowNotFound

        try:
            record = await self.engine.flows.get(self.name)
        except FlowNotFound:
            return
        raise FlowctlError(
            f"flow/{self.name} already exists on NATS at {url} ({record.state.value}, "
            f"revision {record.revision}); `flowctl {self.command}` never changes a flow it "
            f"did not create: run this file under another name with --name, or change that flow "
            f"with `flowctl apply -f` and `flowctl start`")

    async def _create_and_start(self, url: str) -> None:
        from flowstore.errors import FlowExists

        # Only this run's agents may take the flow's replicas (see the module doc).
        spec = pinned_to_run(self.loaded.spec, self.run_id)
        self.dead_letters_before = await self.engine.dead_letters(self.name)
        try:
            result = await self.engine.apply(self.name, spec)
        except FlowExists:  # created by someone else since the check
            await self._refuse_existing(url)
            raise
        self.created = True
        info(f"flow/{self.name} created (revision {result.flow.revision})")
        r = await self.engine.deploy(self.name)
        info(f"flow/{self.name} deployed: {len(r.changes.written)} component config(s)")
        await self.engine.start(self.name)
        info(f"flow/{self.name} started; Ctrl+C stops it")

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
                allow_commands=self.allowed,
                allow_images=self.allowed,
                orchestrator=self.orchestrator,  # type: ignore[arg-type]
                echo_output=show_program_line if self.echo else None,
                lead=True,
            )
            agent = Agent(settings, opts)
            if len(placements) > 1:
                where = ",".join(f"{k}={v}" for k, v in labels.items()) or "no labels"
                info(f"agent {settings.name} ({where})")
            if self.metrics_port is not None:
                port = self.metrics_port + i if self.metrics_port else 0
                try:
                    info(f"metrics of agent {settings.name}: "
                         f"{agent.serve_metrics('127.0.0.1', port)}")
                except OSError as exc:
                    info(f"no metrics: port {port} is not free ({exc.strerror or exc}); "
                         "pick another --metrics-port")
            self.agents.append(agent)
            self.agent_tasks.append(asyncio.create_task(agent.run(self.stop_agents)))

    async def watch(self, until_done: bool, timeout: float) -> int:
        """Until Ctrl+C/SIGTERM or, with ``until_done``, the flow is done; the exit code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        last_print = loop.time()
        judge = DoneJudge(self.loaded.spec) if until_done else None
        while not self.interrupted.is_set():
            if any(t.done() for t in self.agent_tasks):
                info("an embedded agent stopped unexpectedly")
                return EXIT_FAILED
            await asyncio.sleep(0.25)
            if judge is None and not sys.stderr.isatty():
                continue
            configs = await self.engine.list_configs(self.name)
            statuses = await self.engine.list_status(self.name)
            if sys.stderr.isatty() and loop.time() - last_print > 2:
                last_print = loop.time()
                info(_one_line(statuses) + (f"  ({judge.waiting})" if judge else ""))
            if judge is None:
                continue
            backlog = await self.engine.input_backlog(self.name)
            verdict = judge.look(configs, statuses, backlog)
            if verdict is not None:
                return verdict
            if deadline is not None and loop.time() > deadline:
                info(f"not done after {timeout:g}s: {judge.waiting}")
                return EXIT_FAILED
        info(f"interrupted ({self.signals.name}): stopping")
        return self.signals.exit_code

    async def __aexit__(self, *exc: object) -> None:
        with spinner("stopping"):
            summary = await self._stop_and_summarize()
            await self._teardown()
        if summary is not None:
            with contextlib.redirect_stdout(sys.stderr):
                table(SUMMARY_COLUMNS, summary.rows)
            if left := left_sentence(summary.left):
                info(f"flow/{self.name}: {left}")
            if failed := summary.sentence():
                info(f"flow/{self.name}: {failed} (REASON / LAST ERROR says why where a "
                     "node reports it; --verbose shows the agents' logs)")
            if not summary.ok:
                self.exit_code = EXIT_FAILED

    async def _stop_and_summarize(self) -> Any:
        """Stop the flow (sources first; after a signal, the rest drains first), then
        read what every node did and left."""
        if self.engine is None or not self.created:
            return None
        if self.interrupted.is_set() and self.drain_timeout > 0:
            await drain(self.engine, self.name, self.loaded.spec, self.drain_timeout,
                        self.signals.hurry)
        try:
            await self.engine.stop(self.name)
        except Exception as exc:
            info(f"could not stop flow/{self.name}: {exc or type(exc).__name__}")
        try:
            configs = await self.engine.list_configs(self.name)
            statuses = await self.engine.list_status(self.name)
            backlog = await self.engine.input_backlog(self.name)
            after = await self.engine.dead_letters(self.name)
        except Exception as exc:
            info(f"could not read the status of flow/{self.name}: {exc}")
            return None
        new = {n: k - self.dead_letters_before.get(n, 0) for n, k in after.items()}
        uncounted = {c.node for c in configs if not reports_counters(c)}
        for doubt in unconfirmed(self.loaded.spec, configs, statuses):
            info(f"warning: {doubt}")
            self.exit_code = EXIT_FAILED
        for held in still_held(configs, statuses):
            info(f"warning: {held}")
        return outcome(self.loaded.spec, statuses, {n: k for n, k in new.items() if k > 0},
                       uncounted, left_over(self.loaded.spec, configs, statuses, backlog))

    async def _teardown(self) -> None:
        if self.console is not None:
            await self.console.close()
        if self.engine is not None and self.created:
            try:
                await self.engine.delete(self.name, force=True)
                info(f"flow/{self.name} stopped, undeployed and deleted")
            except Exception as exc:
                info(f"could not remove flow/{self.name}: {exc or type(exc).__name__}")
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
            remove_record(self.record)
            await asyncio.to_thread(self.server.stop)


class DoneJudge:
    """Applies :func:`cli.drain.drained` over successive looks: done must hold three looks
    in a row (or, with nodes judged only by silence, counters unchanged for
    :attr:`QUIET_S`); a failed replica ends the run at once."""

    QUIET_S = 3.0

    def __init__(self, spec: Any, sources_stopped: bool = False) -> None:
        self.spec = spec
        self.sources_stopped = sources_stopped  # see drained()
        self.stable = 0
        self.waiting = "starting"
        self.told_unjudged = False
        self.last_counters: Any = None
        self.quiet_since = 0.0

    def look(self, configs: list[Any], statuses: list[Any],
             backlog: dict[str, int]) -> int | None:
        """None: not done yet; else the exit code."""
        progress = drained(self.spec, configs, statuses, backlog, self.sources_stopped)
        if progress.failed:
            info("a replica failed: " + "; ".join(progress.failed))
            return EXIT_FAILED
        self.waiting = progress.waiting or "draining"
        self.stable = self.stable + 1 if progress.done else 0
        if self.stable < 3:
            return None
        if not progress.unjudged:
            return 0
        if not self.told_unjudged:
            self.told_unjudged = True
            info(f"{', '.join(progress.unjudged)} report no counters (at-most-once): "
                 f"done once nothing moved for {self.QUIET_S:g}s")
        counters = [(s.node, s.replica, s.counters.in_, s.counters.out) for s in statuses]
        now = asyncio.get_running_loop().time()
        if counters != self.last_counters:
            self.last_counters, self.quiet_since = counters, now
        return 0 if now - self.quiet_since >= self.QUIET_S else None


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
