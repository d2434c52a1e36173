"""An at-most-once source waits until every replica downstream runs before it emits
(core NATS keeps nothing for a consumer that is not there yet). What lives here: that
wait, over the status records; not the source itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from flowstore.models import ComponentConfig, status_key
from flowstore.nats import STATUS_BUCKET, open_bucket


async def wait_for_downstream(nc: Any, cfg: ComponentConfig, stopping: Callable[[], bool],
                              waiting_for: Callable[[list[str]], None]) -> None:
    """Poll the status of every replica in ``cfg.downstream`` until each runs (or is
    degraded); ``waiting_for`` hears which are still awaited, and [] once none is."""
    keys = [status_key(cfg.flow, node, r)
            for node, count in cfg.downstream.items() for r in range(count)]
    if not keys:
        return
    kv = await open_bucket(nc, STATUS_BUCKET)
    waiting: list[str] = keys
    while waiting and not stopping():
        still = []
        for key in waiting:
            try:
                entry = await kv.get(key)
                ok = entry.value is not None and (b'"state":"running"' in entry.value
                                                  or b'"state":"degraded"' in entry.value)
            except Exception:
                ok = False
            if not ok:
                still.append(key)
        if still:
            waiting_for(still)
        waiting = still
        if waiting:
            await asyncio.sleep(0.1)
    waiting_for([])
