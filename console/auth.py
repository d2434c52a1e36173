"""Who may do what with the console's API. Pure decisions; :mod:`console.api` applies them.

* Read-only unless started with ``--allow-control``; control then needs the bearer token
  (``--ui-token`` / ``FLOWCTL_UI_TOKEN``, or one generated and printed at start).
* Bound to loopback (127.0.0.1, ::1, localhost), reading needs no token: only this
  machine can reach it. Bound beyond it, a token is required to start at all, and every
  request must carry it.
* A token is compared in constant time and never echoed.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from flowstore.nats import is_loopback_host


class AccessRefused(Exception):
    """The console cannot start like this (the message says why and what to do)."""


@dataclass(frozen=True)
class Access:
    allow_control: bool
    token: str | None
    reading_needs_token: bool
    generated: bool = False  # the token was made up here: print it once


def plan(host: str, allow_control: bool, token: str | None) -> Access:
    beyond = not is_loopback_host(host)
    if beyond and not token:
        raise AccessRefused(
            f"serving on {host} reaches beyond this machine: give a token (--ui-token or "
            "FLOWCTL_UI_TOKEN) that every request must carry, or bind to 127.0.0.1")
    generated = allow_control and not token
    if generated:
        token = secrets.token_urlsafe(24)
    return Access(allow_control, token, beyond, generated)


def verdict(access: Access, authorization: str | None, control: bool) -> tuple[int, str] | None:
    """None when the request may go on, else (HTTP status, reason)."""
    if control and not access.allow_control:
        return 403, "this console is read-only (`flowctl ui --allow-control` allows control)"
    if control or access.reading_needs_token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given or not access.token \
                or not hmac.compare_digest(given.strip(), access.token):
            return 401, "a bearer token is required (Authorization: Bearer <token>)"
    return None
