"""An agent's clean stop, in bounded steps (SIGTERM, Ctrl+C, fencing).

Every step has a time bound. A step that overruns it (a reconcile that waits on a frozen
server, a watcher whose unsubscribe never returns, a thread that does not end) is said in
the log once, with the name of the step and the stacks of the agent's tasks, and left
behind: the next steps still run, so the replicas are stopped, the agent's record is
removed and the process exits (``flowctl agent`` ends the process even if a step left
behind still holds the event loop; the exit code stays 0: the stop that was asked for
happened). An agent never hangs on its way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import structlog

from componentmanager.agent.keeping import REPLICA_STOP_TIMEOUT_S
from componentmanager.agent.tasks import TasksLeftBehind, end_tasks

if TYPE_CHECKING:
    from componentmanager.agent.agent import Agent

log = structlog.get_logger("flowctl.agent")

#: Bounds of the steps, seconds: past nats-py's own request timeout (5 s), so a server
#: that cannot be reached fails a step (said once) rather than overrunning it.
STEP_S = 12.0
QUICK_STEP_S = 7.0


class Steps:
    """Runs the steps of a shutdown; remembers the ones left behind."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.abandoned: list[str] = []

    async def run(self, name: str, work: Awaitable[Any], bound: float = STEP_S) -> None:
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=bound)
        if not done:
            task.cancel()
            self._left(name, f"did not finish within {bound:g} s", [task])
            return
        error = None if task.cancelled() else task.exception()
        if isinstance(error, TasksLeftBehind):
            self._left(name, f"tasks did not end: {error}", list(error.tasks))
        elif error is not None:
            log.warning("shutdown step failed", step=name, error=repr(error))

    def _left(self, name: str, why: str, stuck: list[asyncio.Task[Any]]) -> None:
        """Say once where the step hangs (its own stack first, then every task's)."""
        stacks = io.StringIO()
        with contextlib.suppress(Exception):
            for task in stuck:
                task.print_stack(limit=12, file=stacks)
            self.agent.dump_tasks(stacks)
        self.abandoned.append(name)
        log.error("shutdown step left behind", step=name, why=why,
                  tasks=stacks.getvalue()[:6000])


async def _reconcile_finished(agent: Agent) -> None:
    async with agent._reconcile_lock:
        pass


async def shut_down(agent: Agent) -> list[str]:
    """Stop every replica cleanly, write final statuses, remove the agent's record, close
    its connections. Returns the names of the steps left behind (none when all is well)."""
    log.info("agent stopping", agent=agent.agent_name, replicas=len(agent.replicas))
    t0 = time.monotonic()
    steps = Steps(agent)
    agent._closing = True
    agent._dirty.set()
    # a reconcile may be stopping a replica (bounded by REPLICA_STOP_TIMEOUT_S): let it
    await steps.run("wait for the reconcile in progress", _reconcile_finished(agent),
                    REPLICA_STOP_TIMEOUT_S + STEP_S)
    tasks, agent._tasks = list(agent._tasks), []
    await steps.run("stop the agent's tasks", end_tasks(tasks, QUICK_STEP_S),
                    QUICK_STEP_S + 1)
    await steps.run("close the config watch", agent.view.close(), QUICK_STEP_S)
    # each replica's stop is bounded by its runner: this bound is only a last resort
    await steps.run("stop the replicas", agent._stop_in_flow_order(
        [(k, "agent shutting down") for k in agent.replicas]), 120)
    if agent.data is not None:
        await steps.run("close the data loop", agent.data.close(), 12)
    # Heartbeats go on until the replicas are stopped: a slow stop must not look like
    # a dead agent whose replicas the leader moves while they still run.
    if agent._heartbeat_task is not None:
        await steps.run("stop the heartbeat", end_tasks([agent._heartbeat_task], 3), 4)
    await steps.run("write the final statuses", agent.status.close())
    if agent._watchdog is not None and "stop the replicas" not in steps.abandoned:
        # our containers are gone: it has nothing to do (else it removes them once the
        # agent process has ended)
        watchdog = agent._watchdog
        watchdog.terminate()
        await steps.run("end the container watchdog", asyncio.to_thread(watchdog.wait),
                        QUICK_STEP_S)
    if agent.leader is not None:
        await steps.run("resign the leadership", agent.leader.resign(), QUICK_STEP_S)
    if not agent.fenced:
        await steps.run("remove the agent's record", agent.agents_kv.delete(
            agent.agent_name, last=agent._agent_rev), QUICK_STEP_S)
    await steps.run("flush", agent.nc.flush(timeout=2), 3)
    await steps.run("close the connection", agent.nc.close(), QUICK_STEP_S)
    if agent.metrics is not None:
        metrics, agent.metrics = agent.metrics, None
        await steps.run("stop serving metrics", asyncio.to_thread(metrics.close), 7)
    log.info("agent stopped", agent=agent.agent_name, seconds=round(time.monotonic() - t0, 2),
             **({"left_behind": steps.abandoned} if steps.abandoned else {}))
    return steps.abandoned
