"""Exactly-once rescale of a keyed node: what the replicas of its earlier counts passed.

A keyed node's replica keeps, in its commit, the floors of the events it passed (per
producer). After a rescale, the new replicas read the old partitions handed over to
them (:func:`flowstore.streams.handover_subjects`), and their producers, resumed from
their commits, may send again what the old replicas had passed: an event is passed when
the replica that owned its key under an earlier count passed it.

So a replica of a new count, before it takes anything, waits until every replica of
the count before has written its last record (``sealed``, at its stop; at most
:data:`HANDOVER_WAIT_S`, for a replica that died instead) and keeps their floors under
``<flow>.<node>.handover`` in ``flowctl_checkpoints``: ``{"partitions": <the new count>,
"generations": [{"partitions": n, "floors": [<replica 0's>, ...]}, ...]}`` (every
earlier count whose partitions may still hold events, oldest first). Decisions here are
pure (:func:`handover_from`); :func:`take_over` is the thin shell around them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.js.errors import KeyNotFoundError

from componentmanager.dataplane.partition import key_text, partition_of
from componentmanager.runners.commit import Floors

#: How long a replica of a new count waits for the old count's last records.
HANDOVER_WAIT_S = 15.0
WAIT_STEP_S = 0.2


def handover_key(flow: str, node: str) -> str:
    return f"{flow}.{node}.handover"


def handover_from(count: int, handover: Any, records: list[Any], final: bool
                  ) -> list[dict[str, Any]] | None:
    """The earlier counts' floors for replicas of ``count``, from the node's handover
    record and its replicas' records (index order, None where missing), or None while
    the count before is still writing (``final``: stop waiting, take them as they are).
    """
    before = handover.get("generations", []) if isinstance(handover, dict) else []
    if isinstance(handover, dict) and handover.get("partitions") == count:
        return list(before)  # kept by the first replica of this count
    first = records[0] if records else None
    old = first.get("partitions") if isinstance(first, dict) else None
    if not isinstance(old, int) or old == count:
        return list(before) if old == count else []  # no count before: nothing passed
    mine = records[:old]
    if not final and any(isinstance(r, dict) and r.get("partitions") == old
                         and not r.get("sealed") for r in mine):
        return None
    if not final and any(isinstance(r, dict) and r.get("partitions") != old for r in mine):
        return None  # another replica of this count wrote: it kept the handover first
    floors = [((r.get("commit") or {}).get("floors") or {})
              if isinstance(r, dict) and r.get("partitions") == old else {} for r in mine]
    earlier = list(before) if isinstance(handover, dict) and handover.get("partitions") == old \
        else []
    return [*earlier, {"partitions": old, "floors": floors}]


class Inherited:
    """Was an event passed by the replica that owned its key under an earlier count?"""

    def __init__(self, key: Callable[[Any], Any], generations: list[dict[str, Any]]) -> None:
        self._key = key
        self._generations = [(int(g["partitions"]), [Floors(f) for f in g["floors"]])
                             for g in generations]

    def __bool__(self) -> bool:
        return bool(self._generations)

    def passed(self, prefix: str, n: int, event: Any) -> bool:
        try:
            text: str | None = key_text(self._key(event))
        except Exception:
            text = None  # no key: partition 0 had it (and failed it)
        for partitions, floors in self._generations:
            owner = 0 if text is None else partition_of(text, partitions)
            if owner < len(floors) and floors[owner].passed(prefix, n):
                return True
        return False


async def take_over(state: Any, flow: str, node: str, count: int,
                    say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The earlier counts' floors for a replica of ``count`` (see the module doc);
    ``state`` is the replica's :class:`~componentmanager.runners.state.OperatorState`."""
    key = handover_key(flow, node)
    loop = asyncio.get_running_loop()
    deadline, waited = loop.time() + HANDOVER_WAIT_S, False
    while True:
        handover = await _get(state, key)
        first = await _get(state, f"{flow}.{node}.0")
        old = first.get("partitions") if isinstance(first, dict) else None
        wanted = old if isinstance(old, int) and old != count else 0
        records = [first, *[await _get(state, f"{flow}.{node}.{j}") for j in range(1, wanted)]]
        final = loop.time() >= deadline
        found = handover_from(count, handover, records, final)
        if found is not None:
            if wanted and not (isinstance(handover, dict) and handover.get("partitions") == count):
                await state.put(key, {"partitions": count, "generations": found})
                say(f"took over from {wanted} replica(s) before"
                    + (" (some had not written their last record: they may repeat)"
                       if final else ""))
            return found
        if not waited:
            say(f"waits for the {wanted} replica(s) before to write their last record")
            waited = True
        await asyncio.sleep(WAIT_STEP_S)


async def _get(state: Any, key: str) -> Any:
    try:
        return await state.read(key)
    except KeyNotFoundError:
        return None
