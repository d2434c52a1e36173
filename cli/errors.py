"""The one place where errors become a sentence and an exit code.

0 ok, 1 failed/invalid, 2 usage, 3 cannot reach NATS. Nothing a user can cause ends
in a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from cli.output import err

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NATS = 0, 1, 2, 3

T = TypeVar("T")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err(message)
    raise SystemExit(code)


def nats_hint(url: str, reason: str) -> str:
    if any(w in reason.lower() for w in ("authorization", "authentication", "permission")):
        return (
            f"NATS at {url} refused the credentials ({reason}); check --user/--password, "
            "--token or --creds"
        )
    return (
        f"cannot reach NATS at {url} ({reason}); start one with `flowctl server` "
        "or point --nats-url / NATS_URL at yours"
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, mapping every known error to a message and exit code."""
    from nats.errors import ConnectionClosedError, NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    from flowengine.errors import ValidationFailed
    from flowstore.errors import FlowctlError
    from flowstore.loader import FlowFileError
    from flowstore.nats import NatsUnavailable

    try:
        return asyncio.run(coro)
    except NatsUnavailable as exc:
        fail(nats_hint(exc.url, exc.reason), EXIT_NATS)
    except (NatsTimeout, NoRespondersError, ConnectionClosedError) as exc:
        fail(f"lost NATS during the command ({type(exc).__name__}); is JetStream on?", EXIT_NATS)
    except FlowFileError as exc:
        fail(str(exc))
    except ValidationFailed as exc:
        fail(str(exc))
    except FlowctlError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    except Exception as exc:  # an agent refusing to start, etc.
        name = type(exc).__name__
        if name in ("AgentNameTaken", "AgentFenced"):
            fail(str(exc))
        raise
