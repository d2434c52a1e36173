"""When "since" is: ``30s``, ``10m``, ``1.5h``, ``2d`` ago, or an ISO 8601 time (UTC unless
it says). Pure; shared by ``flowctl logs --since`` and the console's ``?since=``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """The moment ``text`` names (ValueError with the accepted forms when none)."""
    found = _DURATION.match(text.strip())
    try:
        if found:
            return now - timedelta(seconds=float(found[1]) * _UNITS[found[2]])
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ValueError(f"'{text}' is neither a duration (30s, 10m, 2h, 1d) nor a time "
                         "(2026-11-25T10:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
