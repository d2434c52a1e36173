"""The user function of examples/enrich.yaml.

The ``python`` processor imports ``enrich:enrich`` (``module:function``). `flowctl run`
puts the flow file's directory on the import path, so this module, kept next to the flow
file, is found. For a long-running agent use ``flowctl agent --python-path DIR`` (or
PYTHONPATH). The function takes one event and returns an event, a list of events, or
None to drop it; it may also be ``async def``.
"""

from __future__ import annotations

from typing import Any

TIERS = ("bronze", "silver", "gold")


def enrich(event: dict[str, Any]) -> dict[str, Any] | None:
    seq = int(event["seq"])
    if event.get("user") == "bot":
        return None  # dropped: counted, never forwarded
    return {**event, "tier": TIERS[seq % len(TIERS)], "score": seq * seq}
