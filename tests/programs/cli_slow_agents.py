"""`flowctl` whose embedded agents never report ready, with a short start-up limit: a
test can check what `flowctl run` says when its agents are not ready in time (one
sentence, exit 1, everything it started stopped). Usage: ``python cli_slow_agents.py
run FLOW``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import cli.embedded


async def _never_ready(agents: list[Any], tasks: list[Any]) -> None:
    await asyncio.Event().wait()


cli.embedded._all_ready = _never_ready  # type: ignore[assignment]
cli.embedded.READY_TIMEOUT_S = 0.5

if __name__ == "__main__":
    from cli.main import main

    sys.argv[0] = "flowctl"
    main()
