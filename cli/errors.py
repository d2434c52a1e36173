"""The one place where errors become a sentence and an exit code.

0 ok, 1 failed/invalid, 2 usage, 3 cannot reach NATS. Nothing a user can cause ends
in a traceback: flowctl's own errors, NATS and JetStream errors, timeouts and anything
left over become one ``error: ...`` line on stderr.

For developers: with ``FLOWCTL_DEBUG=1`` in the environment, every error that is not one
of flowctl's own sentences (NATS and JetStream errors, timeouts, bugs) is re-raised, so
Python prints its traceback (exit 1).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from cli.output import err

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NATS = 0, 1, 2, 3

T = TypeVar("T")

#: nats-py errors that mean the connection (or JetStream behind it) is gone or silent.
_LOST_NATS = (
    "ConnectionClosedError", "NoServersError", "StaleConnectionError", "UnexpectedEOF",
    "ConnectionReconnectingError", "ConnectionDrainingError", "FlushTimeoutError",
    "TimeoutError", "AuthorizationError", "SecureConnFailedError",
    "SecureConnRequiredError", "SecureConnWantedError",
)
#: ... and those that mean the server runs without JetStream.
_NO_JETSTREAM = ("NoRespondersError", "ServiceUnavailableError")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err(message)
    raise SystemExit(code)


def debug() -> bool:
    """``FLOWCTL_DEBUG=1``: re-raise errors that are not flowctl's own (tracebacks)."""
    return os.environ.get("FLOWCTL_DEBUG", "").strip().lower() in ("1", "true", "yes")


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


def _bucket_note(exc: BaseException) -> tuple[str, int] | None:
    """(bucket, replicas) from the note :func:`flowstore.nats.open_bucket` adds to the
    error of a bucket it could not create (and nobody else did), else None."""
    import re

    for note in getattr(exc, "__notes__", []):
        found = re.fullmatch(r"creating KV bucket (\S+) with (\d+) replica\(s\)", note)
        if found:
            return found[1], int(found[2])
    return None


def _reason(exc: BaseException) -> str:
    """What a nats-py error says, without its ``nats: `` prefix and class-name noise."""
    description = getattr(exc, "description", None)
    if description:
        return str(description)
    if hasattr(exc, "err_code"):  # a JetStream APIError without a description
        return type(exc).__name__
    text = str(exc).strip().removeprefix("nats:").strip()
    for noise in (f"JetStream.{type(exc).__name__}", f"{type(exc).__name__}:"):
        text = text.removeprefix(noise).strip()
    return text or type(exc).__name__


def own_error(exc: BaseException) -> tuple[str, int] | None:
    """flowctl's own errors: (sentence, exit code), or None for anything else."""
    from flowengine.errors import ValidationFailed
    from flowstore.errors import FlowctlError
    from flowstore.located import FlowFileError
    from flowstore.nats import NatsUnavailable

    if isinstance(exc, NatsUnavailable):
        return nats_hint(exc.url, exc.reason), EXIT_NATS
    if isinstance(exc, FlowctlError):
        return str(exc), exc.exit_code
    if isinstance(exc, FlowFileError | ValidationFailed):
        return str(exc), EXIT_FAILED
    if type(exc).__name__ in ("AgentNameTaken", "AgentFenced"):  # componentmanager.agent
        return str(exc), EXIT_FAILED
    return None


def other_error(exc: Exception) -> tuple[str, int]:
    """Every other error as (sentence, exit code): NATS and JetStream ones, timeouts, bugs."""
    from nats.errors import Error as NatsError
    from nats.js.errors import APIError

    name = type(exc).__name__
    created = _bucket_note(exc)
    if isinstance(exc, APIError) and created is not None:
        bucket, replicas = created
        sentence = (f"cannot create bucket {bucket} with {replicas} "
                    f"replica{'s' if replicas != 1 else ''}: {_reason(exc)}")
        if replicas > 1:
            sentence += (f"; a single server supports --kv-replicas 1 ({replicas} replicas "
                         f"need a JetStream cluster of at least {replicas} servers)")
        return sentence, EXIT_FAILED
    if isinstance(exc, NatsError) and name in _NO_JETSTREAM:
        return (f"NATS answered but JetStream did not ({name}); start the server with "
                "JetStream on (`flowctl server`, or nats-server -js)"), EXIT_NATS
    if isinstance(exc, NatsError) and name in _LOST_NATS:
        reason = _reason(exc)
        detail = name if reason == name else f"{name}: {reason}"
        return (f"lost NATS during the command ({detail}); is the server up with "
                "JetStream on?"), EXIT_NATS
    if isinstance(exc, APIError):
        return f"NATS JetStream refused the request: {_reason(exc)}", EXIT_FAILED
    if isinstance(exc, NatsError):
        return f"NATS refused the request ({name}): {_reason(exc)}", EXIT_FAILED
    if isinstance(exc, ConnectionError):
        return f"lost NATS during the command ({name}: {exc})", EXIT_NATS
    if isinstance(exc, TimeoutError):
        return f"timed out ({str(exc) or 'no answer in time'})", EXIT_FAILED
    return (f"unexpected error {name}: {exc} (run with FLOWCTL_DEBUG=1 for the traceback)",
            EXIT_FAILED)


def quiet_broken_pipe() -> NoReturn:
    """The reader of stdout went away (``flowctl status | head -2``): that is a normal
    end, exit 0 without a word (stdout is pointed at /dev/null so Python's final flush
    does not complain)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(EXIT_OK)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, mapping every error to one sentence and an exit code."""
    import typer
    from typer.exceptions import TyperException

    try:
        import asyncio  # here: `flowctl --help` needs no event loop

        return asyncio.run(coro)
    except BrokenPipeError:
        quiet_broken_pipe()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    except (typer.Exit, typer.Abort, TyperException):
        raise  # typer's own ways out (an exit code, a usage error)
    except Exception as exc:
        known = own_error(exc)
        if known is not None:
            fail(*known)
        if debug():
            raise
        fail(*other_error(exc))
