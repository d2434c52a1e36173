"""NATS connection options and the names and settings of every bucket, defined once.

Every package connects through :func:`connect` with a :class:`NatsOptions`, and opens
buckets through :func:`open_bucket`, so URL/credential handling and bucket settings live
here and nowhere else. :func:`delete_flow_stream` removes the JetStream stream of an
at-least-once flow (agents create it; the flow engine deletes it on undeploy).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from flowstore.connection import SupervisedClient
from flowstore.models import stream_name

DEFAULT_URL = "nats://127.0.0.1:4222"

FLOWS_BUCKET = "flowctl_flows"
CONFIG_BUCKET = "flowctl_config"
STATUS_BUCKET = "flowctl_status"
AGENTS_BUCKET = "flowctl_agents"
LEADER_BUCKET = "flowctl_leader"
CHECKPOINTS_BUCKET = "flowctl_checkpoints"
#: Object store of the operator states too large for one KV value (see runners/state.py).
STATE_OBJECTS_BUCKET = "flowctl_state"

#: Agent records vanish on their own this long after the last heartbeat.
AGENT_RECORD_TTL_S = 60.0
#: The leader lease expires unless renewed within this many seconds.
LEADER_LEASE_TTL_S = 4.0

_BUCKET_SETTINGS: dict[str, dict[str, Any]] = {
    FLOWS_BUCKET: {"history": 64, "description": "flowctl flows: key = flow name"},
    CONFIG_BUCKET: {"history": 5, "description": "flowctl per-component configs: <flow>.<node>"},
    STATUS_BUCKET: {"history": 1, "description": "flowctl replica status: <flow>.<node>.<replica>"},
    AGENTS_BUCKET: {
        "history": 1,
        "ttl": AGENT_RECORD_TTL_S,
        "description": "flowctl agents: key = agent name, refreshed by heartbeats",
    },
    CHECKPOINTS_BUCKET: {
        "history": 1,
        "description": "flowctl source positions and operator state: <flow>.<node>.<replica>",
    },
    LEADER_BUCKET: {
        "history": 1,
        "ttl": LEADER_LEASE_TTL_S,
        "description": "flowctl leader lease: the agent that places replicas",
    },
}


_URL_SECRET = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*)"
                         r"(?::(?P<password>[^@/\s]*))?@")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact(text: str) -> str:
    """``text`` with the secrets of URLs hidden: ``nats://user:***@host``, and the token
    of ``nats://TOKEN@host`` as ``nats://***@host``. Every URL a message or log line
    shows goes through here."""

    def hide(m: re.Match[str]) -> str:
        if m["password"] is not None:
            return f"{m['scheme']}{m['user']}:***@"
        return f"{m['scheme']}***@"

    return _URL_SECRET.sub(hide, text)


class NatsUnavailable(Exception):
    """The NATS server cannot be reached; carries the URL (secrets hidden) for the
    user-facing message."""

    def __init__(self, url: str, reason: str) -> None:
        url, reason = redact(url), redact(reason)
        super().__init__(f"cannot reach NATS at {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass
class NatsOptions:
    """How to reach NATS. Built from CLI flags or the environment (``NATS_URL``)."""

    url: str = field(default_factory=lambda: os.environ.get("NATS_URL", DEFAULT_URL))
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    kv_replicas: int = 1
    connect_timeout: float = 1.0

    def env(self) -> dict[str, str]:
        """The environment an external component needs to connect the same way."""
        out = {"NATS_URL": self.url, "FLOWCTL_KV_REPLICAS": str(self.kv_replicas)}
        for key, value in (
            ("NATS_USER", self.user),
            ("NATS_PASSWORD", self.password),
            ("NATS_TOKEN", self.token),
            ("NATS_CREDS", self.creds),
            ("NATS_TLS_CA", self.tls_ca),
            ("NATS_TLS_CERT", self.tls_cert),
            ("NATS_TLS_KEY", self.tls_key),
        ):
            if value:
                out[key] = value
        return out

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> NatsOptions:
        """The inverse of :meth:`env`: what an external component uses."""
        e = os.environ if environ is None else environ
        return cls(
            url=e.get("NATS_URL", DEFAULT_URL),
            user=e.get("NATS_USER"),
            password=e.get("NATS_PASSWORD"),
            token=e.get("NATS_TOKEN"),
            creds=e.get("NATS_CREDS"),
            tls_ca=e.get("NATS_TLS_CA"),
            tls_cert=e.get("NATS_TLS_CERT"),
            tls_key=e.get("NATS_TLS_KEY"),
            kv_replicas=int(e.get("FLOWCTL_KV_REPLICAS") or 1),
        )

    def servers(self) -> list[str]:
        """``url`` may list several servers of a cluster, comma-separated."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def _tls(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx


async def probe(opts: NatsOptions) -> None:
    """Fail at once when no server listens at the URL(s) (nats-py keeps retrying a refused
    first connect until its timeout). Raises :class:`NatsUnavailable` when no address
    accepts a TCP connection; anything else (TLS, auth, a slow server) is left to the real
    connect."""
    reasons = []
    for url in opts.servers():
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            return  # websocket or something unusual: let nats-py judge it
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, parts.port or 4222),
                opts.connect_timeout,
            )
        except TimeoutError:
            reasons.append("timed out")
        except ConnectionRefusedError:
            reasons.append("connection refused")
        except socket.gaierror:
            reasons.append(f"unknown host {parts.hostname}")
        except OSError as exc:
            reasons.append((exc.strerror or type(exc).__name__).lower())
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
    if reasons:
        raise NatsUnavailable(opts.url, "; ".join(dict.fromkeys(reasons)))


async def connect(
    opts: NatsOptions, *, name: str = "flowctl", reconnect: bool = False, **extra: Any
) -> NatsClient:
    """Connect once, failing fast with :class:`NatsUnavailable` when nobody answers.

    ``reconnect=True`` is for long-running processes (agents): after the first successful
    connect they ride out server restarts forever.
    """

    nc = SupervisedClient()

    async def _logged(exc: Exception) -> None:
        if reconnect:  # long-running: say what happens, once per interval
            nc.note(f"error {type(exc).__name__}", f"NATS connection {name}: "
                    f"{type(exc).__name__}: {redact(str(exc))}")

    await probe(opts)
    kwargs: dict[str, Any] = {
        "servers": opts.servers(),
        "name": name,
        "connect_timeout": opts.connect_timeout,
        "allow_reconnect": reconnect,
        "max_reconnect_attempts": -1 if reconnect else 0,
        "reconnect_time_wait": 0.5,
        "error_cb": _logged,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
    }
    if opts.user:
        kwargs["user"], kwargs["password"] = opts.user, opts.password
    if opts.token:
        kwargs["token"] = opts.token
    if opts.creds:
        kwargs["user_credentials"] = opts.creds
    tls = opts._tls()
    if tls is not None:
        kwargs["tls"] = tls
    kwargs.update(extra)
    try:
        # nats-py keeps retrying a refused first connect; bound it ourselves.
        await asyncio.wait_for(nc.connect(**kwargs), opts.connect_timeout + 0.5)
    except TimeoutError:
        raise NatsUnavailable(opts.url, "connection refused or timed out") from None
    except Exception as exc:  # nats-py raises several unrelated types here
        reason = str(exc) or type(exc).__name__
        raise NatsUnavailable(opts.url, reason) from exc
    if reconnect:
        nc.supervise(name)
    return nc


async def open_bucket(nc: NatsClient, bucket: str, *, replicas: int = 1) -> KeyValue:
    """Open ``bucket``, creating it with its settings on first use.

    A bucket that already exists is used as it is, never recreated, even when its
    settings differ from ours (an operator may have tuned it).
    """
    js = nc.jetstream()
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    settings = dict(_BUCKET_SETTINGS[bucket])
    cfg = KeyValueConfig(
        bucket=bucket,
        history=settings["history"],
        ttl=settings.get("ttl"),
        description=settings["description"],
        storage=StorageType.FILE,
        replicas=replicas,
    )
    try:
        return await js.create_key_value(cfg)
    except Exception as create_error:
        try:  # someone else may have created it between our lookup and create: use theirs
            return await js.key_value(bucket)
        except BucketNotFoundError:
            pass
        # Nobody did: the server's refusal is the real reason (e.g. replicas > 1 on a
        # single server). The stream it names and a note (read by cli.errors) say which
        # bucket and how many replicas.
        if isinstance(create_error, APIError) and not create_error.stream:
            create_error.stream = f"KV_{bucket}"
        create_error.add_note(f"creating KV bucket {bucket} with {replicas} replica(s)")
        raise


async def state_objects(nc: NatsClient, *, create: bool, replicas: int = 1) -> Any:
    """The object store of large operator states; None when it does not exist and
    ``create`` is false."""
    js = nc.jetstream()
    try:
        return await js.object_store(STATE_OBJECTS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            return None
    try:
        return await js.create_object_store(
            STATE_OBJECTS_BUCKET, config=ObjectStoreConfig(
                bucket=STATE_OBJECTS_BUCKET, replicas=replicas, storage=StorageType.FILE,
                description="flowctl operator states larger than one message"))
    except Exception:
        return await js.object_store(STATE_OBJECTS_BUCKET)  # created concurrently


async def delete_state_objects(nc: NatsClient, flow: str) -> None:
    """Remove the large operator states of ``flow`` (undeploy)."""
    store = await state_objects(nc, create=False)
    if store is None:
        return
    try:
        infos = await store.list()
    except NotFoundError:  # an empty store
        return
    for info in infos:
        if info.name.startswith(f"{flow}.") and not info.deleted:
            with contextlib.suppress(NotFoundError):
                await store.delete(info.name)


async def delete_flow_stream(nc: NatsClient, flow: str) -> bool:
    """Delete the stream of ``flow`` (:func:`~flowstore.models.stream_name`) with its
    durable consumers. False when it did not exist (an at-most-once flow has none)."""
    try:
        return bool(await nc.jetstream().delete_stream(stream_name(flow)))
    except NotFoundError:
        return False
