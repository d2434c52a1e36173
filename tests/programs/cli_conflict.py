"""`flowctl` with a concurrent writer: just before the CLI writes a flow record (compare-
and-set on the KV revision it read), another write of that record lands first. The CLI's
write then loses deterministically, so a test can check what a user sees on a CAS
conflict. Usage: ``python cli_conflict.py <flowctl args...>``.
"""

from __future__ import annotations

import sys
from typing import Any

from flowstore.models import FlowRecord
from flowstore.store import FlowStore

_original = FlowStore.update
_raced = False


async def _update_after_someone_else(self: FlowStore, record: FlowRecord, **changes: Any
                                     ) -> FlowRecord:
    global _raced
    if not _raced:
        _raced = True
        await _original(self, await self.get(record.name))  # the other writer wins
    return await _original(self, record, **changes)


FlowStore.update = _update_after_someone_else  # type: ignore[method-assign]

if __name__ == "__main__":
    from cli.main import main

    sys.argv[0] = "flowctl"
    main()
