"""Ctrl+C and SIGTERM in ``flowctl run`` and ``flowctl dev``: stop the sources, let the
rest drain (bounded), then stop, say what was left and exit 128 + the signal.

The first signal ends the run's watch. Before the flow is stopped, its sources are
stopped alone (:meth:`~flowengine.lifecycle.FlowEngine.stop_sources`) and the other
nodes get up to ``--drain-timeout`` seconds to take in and finish what the sources
emitted (judged as ``--until-done`` judges done, with stopped sources counting as
finished); a second signal ends that wait at once. Then the flow stops as usual (in
waves) and the summary's LEFT column and a sentence name, per node, what it had not
processed (:func:`cli.drain.left_over`), which deleting the flow deletes. The exit code
is 130 after SIGINT and 143 after SIGTERM, whatever else happened (the summary says
what failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated, Any

import typer

from cli.output import info

#: How long the rest of a flow may drain after Ctrl+C or SIGTERM, by default (seconds).
DRAIN_TIMEOUT_S = 5.0

DrainOpt = Annotated[float, typer.Option(
    "--drain-timeout", min=0, metavar="SECONDS",
    help="On Ctrl+C or SIGTERM the sources stop first and the rest of the flow gets up "
    "to SECONDS to finish what they emitted (0: no wait; Ctrl+C again: stop now); the "
    "summary names per node what was left unprocessed (LEFT). Exit 130 after Ctrl+C, "
    "143 after SIGTERM.")]


class Signals:
    """SIGINT and SIGTERM of a run: the first sets :attr:`interrupted` (and is kept in
    :attr:`signum`), a later one sets :attr:`hurry` (no more draining)."""

    def __init__(self) -> None:
        self.interrupted = asyncio.Event()
        self.hurry = asyncio.Event()
        self.signum: int | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if self.signum is None:
            self.signum = sig
            self.interrupted.set()
        else:
            self.hurry.set()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "no signal"

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a command the signal ended."""
        return 128 + (self.signum or 0)


async def drain(engine: Any, name: str, spec: Any, timeout: float,
                hurry: asyncio.Event) -> None:
    """Stop the sources of the running flow ``name``, then wait until the rest has
    finished what they emitted, at most ``timeout`` seconds (or until ``hurry``). Says
    what it did; never raises (the stop that follows stops whatever still runs)."""
    from cli.embedded import DoneJudge

    if not spec.connections:  # nothing flows through flowctl (programs wired by their own
        return                # environment): the stop that follows goes in dependency order
    loop = asyncio.get_running_loop()
    info(f"stopping the sources of flow/{name}; the rest gets up to {timeout:g}s to "
         "finish what they emitted (Ctrl+C again: stop now)")
    try:
        stopped = await engine.stop_sources(name)
    except Exception as exc:
        info(f"could not stop the sources of flow/{name}: {exc or type(exc).__name__}")
        return
    if stopped.changes.not_stopped:
        info("still running after the stop's wait: " + ", ".join(stopped.changes.not_stopped))
    began = loop.time()
    judge = DoneJudge(spec, sources_stopped=True)
    while not hurry.is_set():
        try:
            configs = await engine.list_configs(name)
            statuses = await engine.list_status(name)
            backlog = await engine.input_backlog(name)
        except Exception as exc:
            info(f"could not read the status of flow/{name} while draining: {exc}")
            return
        verdict = judge.look(configs, statuses, backlog)
        if verdict == 0:
            info(f"flow/{name} drained in {loop.time() - began:.1f}s")
            return
        if verdict is not None:  # a replica failed: it will not drain
            return
        left = began + timeout - loop.time()
        if left <= 0:
            info(f"flow/{name} not drained after {timeout:g}s ({judge.waiting}); stopping")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), min(0.25, left))
    info(f"flow/{name}: stopping without draining further")
