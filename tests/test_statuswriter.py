"""The agent's status writer over a real nats-server: a record is written when what it
says changes (or every REWRITE_S), not at every refresh of an idle replica."""

from __future__ import annotations

from componentmanager.agent import statuswriter
from componentmanager.agent.statuswriter import StatusWriter
from flowstore.models import ReplicaState, ReplicaStatus
from flowstore.nats import STATUS_BUCKET, open_bucket


async def test_an_unchanged_record_is_not_written_again_until_its_rewrite(
        nc, monkeypatch) -> None:
    kv = await open_bucket(nc, STATUS_BUCKET)
    writer = StatusWriter(kv, "a1")
    status = ReplicaStatus(flow="sw", node="out", replica=0, state=ReplicaState.RUNNING,
                           agent="a1")
    assert await writer.write(status)
    first = (await kv.get(status.key)).revision
    again = status.model_copy(update={"updated_at": "2030-01-01T00:00:00Z"})
    assert await writer.write(again)  # says the same: nothing written
    assert (await kv.get(status.key)).revision == first
    busy = status.model_copy(deep=True)
    busy.counters.in_ = 5
    assert await writer.write(busy)  # says something new: written
    second = (await kv.get(status.key)).revision
    assert second > first
    monkeypatch.setattr(statuswriter, "REWRITE_S", 0.0)
    assert await writer.write(busy)  # the same, but due again
    assert (await kv.get(status.key)).revision > second


async def test_a_replica_that_moved_away_never_covers_its_new_owners_record(nc) -> None:
    kv = await open_bucket(nc, STATUS_BUCKET)
    assigned = {"sw.gen.0": "a2"}  # the config names a2 now
    old = StatusWriter(kv, "a1", owns=lambda key: assigned.get(key) == "a1")
    new = StatusWriter(kv, "a2", owns=lambda key: assigned.get(key) == "a2")
    done = ReplicaStatus(flow="sw", node="gen", replica=0, state=ReplicaState.COMPLETED,
                         agent="a2")
    assert await new.write(done)
    late = ReplicaStatus(flow="sw", node="gen", replica=0, state=ReplicaState.STOPPED,
                         agent="a1")
    assert not await old.write(late)  # its first write, after it left: fenced
    got, _ = ReplicaStatus.parse((await kv.get(done.key)).value)
    assert got is not None and (got.agent, got.state) == ("a2", ReplicaState.COMPLETED)
    # a write of the old agent that landed anyway is taken back by the owner
    await kv.put(done.key, late.to_json())
    again = done.model_copy(deep=True)
    again.counters.out = 1
    assert await new.write(again)
    got, _ = ReplicaStatus.parse((await kv.get(done.key)).value)
    assert got is not None and got.agent == "a2"
