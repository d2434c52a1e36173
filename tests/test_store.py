"""FlowStore against a real nats-server: CRUD, compare-and-set under concurrency, history, watch."""

from __future__ import annotations

import asyncio
import json

import pytest

from flowstore import (
    FlowExists,
    FlowNotFound,
    FlowSpec,
    FlowState,
    FlowStore,
    RevisionConflict,
    RevisionNotFound,
    open_bucket,
)
from flowstore.models import Node
from flowstore.nats import FLOWS_BUCKET, NatsOptions, NatsUnavailable, connect


def spec(*ids: str) -> FlowSpec:
    return FlowSpec(nodes=[Node(id=i, type="generate") for i in ids])


async def test_create_get_list_delete(nc) -> None:
    store = await FlowStore.open(nc)
    created = await store.create("alpha", spec("a"))
    await store.create("beta", spec("b"))
    assert created.revision == 1 and created.kv_revision > 0
    with pytest.raises(FlowExists):
        await store.create("alpha", spec("x"))
    got = await store.get("alpha")
    assert got.spec == spec("a") and got.state == FlowState.NOT_DEPLOYED
    assert [f.name for f in await store.list()] == ["alpha", "beta"]
    # The value a user sees with `nats kv get` is one line of JSON.
    raw = (await store.kv.get("alpha")).value
    assert b"\n" not in raw and json.loads(raw)["name"] == "alpha"
    await store.delete(got)
    with pytest.raises(FlowNotFound):
        await store.get("alpha")
    assert [f.name for f in await store.list()] == ["beta"]
    # A deleted name can be created again; its revisions go on after the old ones.
    assert (await store.create("alpha", spec("z"))).revision == 2


async def test_stale_update_raises_conflict_and_writes_nothing(nc) -> None:
    store = await FlowStore.open(nc)
    first = await store.create("f", spec("a"))
    second = await store.update(first, spec=spec("b"))
    assert second.revision == 2
    with pytest.raises(RevisionConflict):
        await store.update(first, state=FlowState.RUNNING)
    current = await store.get("f")
    assert current.spec == spec("b") and current.state == FlowState.NOT_DEPLOYED
    with pytest.raises(RevisionConflict):
        await store.delete(first)
    assert (await store.get("f")).revision == 2


async def test_racing_writers_exactly_one_wins(nats_opts: NatsOptions) -> None:
    """Many clients on separate connections race on one revision, repeatedly."""
    clients = [await connect(nats_opts) for _ in range(8)]
    try:
        stores = [await FlowStore.open(c) for c in clients]
        await stores[0].create("race", spec("a"))
        for round_no in range(5):
            reads = [await s.get("race") for s in stores]
            assert len({r.kv_revision for r in reads}) == 1

            async def write(i: int, store: FlowStore, record) -> int:
                await store.update(record, spec=spec(f"w{i}"))
                return i

            results = await asyncio.gather(
                *(write(i, s, r) for i, (s, r) in enumerate(zip(stores, reads, strict=True))),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, int)]
            losers = [r for r in results if isinstance(r, RevisionConflict)]
            assert len(winners) == 1 and len(losers) == 7, results
            final = await stores[0].get("race")
            assert final.revision == round_no + 2
            assert final.spec == spec(f"w{winners[0]}")
    finally:
        for c in clients:
            await c.close()


async def test_retry_after_conflict_loses_no_update(nats_opts: NatsOptions) -> None:
    """Read-modify-write with retry: N concurrent increments all land."""
    clients = [await connect(nats_opts) for _ in range(4)]
    try:
        stores = [await FlowStore.open(c) for c in clients]
        await stores[0].create("counter", FlowSpec(labels={"n": "0"}))

        async def increment(store: FlowStore) -> None:
            for _ in range(5):
                while True:
                    rec = await store.get("counter")
                    n = int(rec.spec.labels["n"]) + 1
                    try:
                        await store.update(rec, spec=FlowSpec(labels={"n": str(n)}))
                        break
                    except RevisionConflict:
                        continue

        await asyncio.gather(*(increment(s) for s in stores))
        final = await stores[0].get("counter")
        assert final.spec.labels["n"] == "20"
        assert final.revision == 21
    finally:
        for c in clients:
            await c.close()


async def test_history_and_revision_lookup(nc) -> None:
    store = await FlowStore.open(nc)
    rec = await store.create("h", spec("a"))
    rec = await store.update(rec, spec=spec("b"))
    rec = await store.update(rec, state=FlowState.DEPLOYED_STOPPED)
    assert rec.revision == 2  # revisions count spec changes, not state changes
    history = await store.history("h")
    assert [r.revision for r in history] == [1, 2]  # each as last written
    assert history[0].spec == spec("a") and history[1].state == FlowState.DEPLOYED_STOPPED
    assert (await store.at_revision("h", 2)).spec == spec("b")
    assert (await store.previous_spec("h", rec)).spec == spec("a")
    rec = await store.update(rec, spec=spec("a"))  # back to a: the previous spec is b
    assert (await store.previous_spec("h", rec)).spec == spec("b")
    with pytest.raises(RevisionNotFound):
        await store.at_revision("h", 9)
    with pytest.raises(FlowNotFound):
        await store.history("nope")


async def test_watch_sees_current_then_changes_and_deletes(nc) -> None:
    store = await FlowStore.open(nc)
    rec = await store.create("w", spec("a"))
    seen: list[tuple[str, int | None]] = []
    got_three = asyncio.Event()

    async def consume() -> None:
        async for ev in store.watch():
            seen.append((ev.name, ev.flow.revision if ev.flow else None))
            if len(seen) == 3:
                got_three.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.2)
        rec = await store.update(rec, spec=spec("b"))
        await store.delete(rec)
        await asyncio.wait_for(got_three.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [("w", 1), ("w", 2), ("w", None)]


async def test_existing_bucket_with_other_settings_is_used(nc) -> None:
    from nats.js.api import KeyValueConfig

    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket=FLOWS_BUCKET, history=3))
    kv = await open_bucket(nc, FLOWS_BUCKET)
    assert (await kv.status()).history == 3
    store = FlowStore(kv)
    await store.create("kept", spec("a"))
    assert (await store.get("kept")).name == "kept"


async def test_unreachable_server_fails_fast() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(NatsUnavailable) as err:
        await connect(NatsOptions(url="nats://127.0.0.1:1"))
    assert loop.time() - t0 < 2.0
    assert "nats://127.0.0.1:1" in str(err.value)
