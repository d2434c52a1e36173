"""The mqtt connector's broker connection, shared by its source and sink.

:class:`_Broker`: the ``url``'s host, port and TLS (``mqtts://``, ``ca_file``), the
client id per replica, the credentials (``${VAR}`` from the agent's environment, or
``password_file``), the aiomqtt client made from them, and the retrying of a broker that
is unreachable or goes away: a growing pause up to :data:`RETRY_MAX_S`, logged once per
:data:`SAY_EVERY_S`, shown as the replica's status reason. Config models: ``mqtt.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from componentmanager.component import Context

if TYPE_CHECKING:
    from componentmanager.components.connectors.mqtt import _Common

#: Pauses between connection attempts grow up to this.
RETRY_MAX_S = 10.0
RETRY_FIRST_S = 0.5
#: A broker that stays unreachable is said (log line) at most this often.
SAY_EVERY_S = 30.0


def _client_id(config: _Common, ctx: Context) -> str:
    if config.client_id:
        return config.client_id if not ctx.replica else f"{config.client_id}-{ctx.replica}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"flowctl-{ctx.flow}-{ctx.node}-{ctx.replica}")


def _secret(value: str | None, what: str) -> str | None:
    """A ``${VAR}`` from the agent's environment (an error names the variable only)."""
    if value is None:
        return None
    name = value[2:-1]
    if name not in os.environ:
        raise RuntimeError(f"mqtt {what}: undefined variable ${{{name}}} "
                           "(not set in the agent's environment)")
    return os.environ[name]


class _Broker:
    """Connection settings and the 'waiting' reporting of one mqtt node."""

    def __init__(self, config: _Common, ctx: Context) -> None:
        parts = urlsplit(config.url)
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname or ""
        self.port = parts.port or (8883 if self.tls else 1883)
        self.where = f"{self.host}:{self.port}"
        self.config, self.ctx = config, ctx
        self.client_id = _client_id(config, ctx)
        self.username = _secret(config.username, "username")
        self.password = _secret(config.password, "password")
        if config.password_file is not None:
            try:
                with open(config.password_file, encoding="utf-8") as fh:
                    self.password = fh.read().removesuffix("\n").removesuffix("\r")
            except OSError as exc:
                raise RuntimeError(f"mqtt password_file {config.password_file}: cannot read "
                                   f"it ({exc.strerror or type(exc).__name__})") from None
        self._failing_since: float | None = None
        self._said_at = 0.0
        self._attempts = 0
        self.delay = RETRY_FIRST_S

    def client(self, **kw: Any) -> Any:
        import aiomqtt  # the dependency loads only where an mqtt node runs

        tls = None
        if self.tls:
            tls = ssl.create_default_context(cafile=self.config.ca_file)
        protocol = (aiomqtt.ProtocolVersion.V5 if self.config.protocol == "5"
                    else aiomqtt.ProtocolVersion.V311)
        return aiomqtt.Client(
            self.host, self.port, identifier=self.client_id, username=self.username,
            password=self.password, protocol=protocol, keepalive=self.config.keepalive,
            tls_context=tls, timeout=10, **kw)

    def _set_note(self, note: str | None) -> None:
        if hasattr(self.ctx, "note"):  # the replica's status reason (in-process runner)
            with contextlib.suppress(Exception):
                self.ctx.note = note  # type: ignore[misc]

    def failed(self, exc: BaseException) -> float:
        """A connection attempt or connection failed: say so (once per SAY_EVERY_S) and
        return the pause before the next attempt."""
        now = time.monotonic()
        self._attempts += 1
        why = str(exc) or type(exc).__name__
        for secret in (self.username, self.password):  # never echoed, whatever the lib says
            if secret:
                why = why.replace(secret, "***")
        note = f"waiting: mqtt broker at {self.where}: {why}; retrying"
        self._set_note(note)
        if self._failing_since is None or now - self._said_at >= SAY_EVERY_S:
            since = "" if self._failing_since is None else (
                f" (for {now - self._failing_since:.0f} s, {self._attempts} attempts)")
            self.ctx.log(note + since)
            self._said_at = now
        if self._failing_since is None:
            self._failing_since = now
        delay = self.delay
        self.delay = min(self.delay * 2, RETRY_MAX_S)
        return delay

    def connected(self) -> None:
        if self._failing_since is not None:
            self.ctx.log(f"connected to the mqtt broker at {self.where} after "
                         f"{time.monotonic() - self._failing_since:.1f} s")
            self._set_note(None)
        self._failing_since, self._attempts, self.delay = None, 0, RETRY_FIRST_S
