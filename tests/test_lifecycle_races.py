"""Two lifecycle actions racing on one flow, from two engines on separate connections.

Whatever the interleaving, when both have returned (one may fail with RevisionConflict or
InvalidTransition) the config keys match the flow record that won: not_deployed (or a
deleted flow) -> no config keys; deployed_stopped -> every key, all disabled; running ->
every key, all enabled. Each test runs many rounds with staggered starts, against a real
nats-server. Also: the bucket snapshots all of this relies on stay complete under writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from flowengine import ConfigsNotConverged, FlowEngine
from flowstore.errors import FlowNotFound, InvalidTransition, RevisionConflict
from flowstore.models import FlowState
from flowstore.nats import STATUS_BUCKET, NatsOptions, connect, open_bucket
from flowstore.store import read_all
from tests.lifecycle_context import FLOW, add_agent, configs, spec

ROUNDS = 24
KEYS = ["demo.gen", "demo.keep", "demo.out"]
#: How a losing action may fail; anything else is a bug.
LOST = (RevisionConflict, InvalidTransition, FlowNotFound)


pytestmark = pytest.mark.usefixtures("lifecycle_types")


@pytest.fixture
async def engines(nats_opts: NatsOptions) -> AsyncIterator[tuple[FlowEngine, FlowEngine]]:
    clients = [await connect(nats_opts), await connect(nats_opts)]
    try:
        first, second = [await FlowEngine.open(c) for c in clients]
        await add_agent(clients[0], "agent-1")
        yield first, second
    finally:
        for client in clients:
            await client.close()


async def _reset(engine: FlowEngine, state: FlowState) -> None:
    """The flow ``demo`` in ``state``, whatever the previous round left."""
    with contextlib.suppress(FlowNotFound):
        await engine.delete("demo", force=True)
    await engine.apply("demo", spec())
    if state != FlowState.NOT_DEPLOYED:
        await engine.deploy("demo")
    if state == FlowState.RUNNING:
        await engine.start("demo")


async def _after(delay: float, call: Callable[[], Awaitable[Any]]) -> Any:
    await asyncio.sleep(delay)
    return await call()


async def _consistent(engine: FlowEngine, nc: Any) -> tuple[str, dict[str, bool]]:
    """The record's state and the configs' enabled flags; asserts that they agree."""
    try:
        state = (await engine.flows.get("demo")).state.value
    except FlowNotFound:
        state = "deleted"
    enabled = {k: bool(v["enabled"]) for k, v in (await configs(nc)).items()}
    if state in ("deleted", "not_deployed"):
        assert enabled == {}, f"{state} flow with configs left: {enabled}"
    else:
        want = state == "running"
        assert enabled == dict.fromkeys(KEYS, want), f"{state} flow with configs {enabled}"
    return state, enabled


async def _race(engines: tuple[FlowEngine, FlowEngine], nc: Any, initial: FlowState,
                first: Callable[[FlowEngine], Awaitable[Any]],
                second: Callable[[FlowEngine], Awaitable[Any]]) -> set[str]:
    """ROUNDS rounds of ``first`` on one engine racing ``second`` (started a little later
    each round) on the other; returns the final states seen."""
    one, two = engines
    finals = set()
    for i in range(ROUNDS):
        await _reset(one, initial)
        delay = (i % 8) * 0.003
        results = await asyncio.gather(first(one), _after(delay, lambda: second(two)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, LOST):
                raise result
        state, _ = await _consistent(one, nc)
        finals.add(state)
    return finals


async def test_start_racing_undeploy(engines: tuple[FlowEngine, FlowEngine], nc: Any) -> None:
    finals = await _race(engines, nc, FlowState.DEPLOYED_STOPPED,
                         lambda e: e.start("demo"), lambda e: e.undeploy("demo"))
    assert finals <= {"running", "not_deployed"}


async def test_undeploy_racing_start(engines: tuple[FlowEngine, FlowEngine], nc: Any) -> None:
    finals = await _race(engines, nc, FlowState.DEPLOYED_STOPPED,
                         lambda e: e.undeploy("demo"), lambda e: e.start("demo"))
    assert finals <= {"running", "not_deployed"}


async def test_deploy_racing_undeploy(engines: tuple[FlowEngine, FlowEngine], nc: Any) -> None:
    # From deployed_stopped: deploy only gets through once undeploy flipped the record.
    finals = await _race(engines, nc, FlowState.DEPLOYED_STOPPED,
                         lambda e: e.undeploy("demo"), lambda e: e.deploy("demo"))
    assert finals <= {"deployed_stopped", "not_deployed"}


async def test_deploy_racing_delete(engines: tuple[FlowEngine, FlowEngine], nc: Any) -> None:
    finals = await _race(engines, nc, FlowState.NOT_DEPLOYED,
                         lambda e: e.deploy("demo"), lambda e: e.delete("demo"))
    assert finals <= {"deployed_stopped", "deleted"}


@pytest.mark.parametrize("stop_first", [False, True])
async def test_apply_racing_stop(engines: tuple[FlowEngine, FlowEngine], nc: Any,
                                 stop_first: bool) -> None:
    calls = [lambda e: e.apply("demo", spec()), lambda e: e.stop("demo")]
    if stop_first:
        calls.reverse()
    finals = await _race(engines, nc, FlowState.RUNNING, *calls)
    assert finals == {"deployed_stopped"}  # apply of the same spec never writes the record


@pytest.mark.parametrize("stop_first", [False, True])
async def test_changed_apply_racing_stop(engines: tuple[FlowEngine, FlowEngine], nc: Any,
                                         stop_first: bool) -> None:
    changed = spec(FLOW.replace("x > 1", "x > 2"))
    calls = [lambda e: e.apply("demo", changed), lambda e: e.stop("demo")]
    if stop_first:
        calls.reverse()
    finals = await _race(engines, nc, FlowState.RUNNING, *calls)
    assert finals <= {"running", "deployed_stopped"}


async def test_stop_racing_forced_undeploy(engines: tuple[FlowEngine, FlowEngine],
                                           nc: Any) -> None:
    finals = await _race(engines, nc, FlowState.RUNNING,
                         lambda e: e.stop("demo"), lambda e: e.undeploy("demo", force=True))
    assert finals <= {"deployed_stopped", "not_deployed"}


async def test_a_lost_action_reports_the_conflict(engines: tuple[FlowEngine, FlowEngine],
                                                  nc: Any) -> None:
    """Exactly one of two racing starts wins; the loser raises, nothing is left half-done."""
    one, two = engines
    for _ in range(8):
        await _reset(one, FlowState.DEPLOYED_STOPPED)
        results = await asyncio.gather(one.start("demo"), two.start("demo"),
                                       return_exceptions=True)
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(lost) == 1 and isinstance(lost[0], RevisionConflict | InvalidTransition)
        assert not isinstance(lost[0], ConfigsNotConverged)
        assert await _consistent(one, nc) == ("running", dict.fromkeys(KEYS, True))


async def test_bucket_snapshots_are_complete_while_others_write(nc: Any) -> None:
    """Every action decides from read_all snapshots; one missing a key (nats-py's watcher
    could report "no more values" with values in flight) or one leaving a consumer
    behind (a KV stream allows about a thousand) would undo the guarantees above."""
    kv = await open_bucket(nc, STATUS_BUCKET)
    keys = {f"demo.n.{i}" for i in range(3)}
    for key in keys:
        await kv.put(key, b"{}")
    writing = True

    async def writer() -> None:
        i = 0
        while writing:
            i += 1
            await kv.put(f"demo.n.{i % 3}", b"{}")
            await kv.put(f"other.n.{i % 20}", b"{}")

    task = asyncio.create_task(writer())
    try:
        incomplete = 0
        for _ in range(1100):
            incomplete += set(await read_all(kv, "demo.*.*")) != keys
    finally:
        writing = False
        await task
    assert incomplete == 0
    await kv.delete("demo.n.0")
    assert set(await read_all(kv, "demo.>")) == keys - {"demo.n.0"}
    assert await read_all(kv, "nothing.>") == {}
