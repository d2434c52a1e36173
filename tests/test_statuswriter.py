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
