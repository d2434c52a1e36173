"""External components run as Docker containers, supervised exactly like processes.

A :class:`ContainerReplica` creates and starts a container from the node's ``image``
with the contract environment of :mod:`componentmanager.runners.env` (only those
variables: nothing of the agent's own environment leaks in), labelled
``flowctl.flow``, ``flowctl.node``, ``flowctl.replica``, ``flowctl.agent`` and
``flowctl.agent-instance`` (what :mod:`~componentmanager.runners.watchdog` removes
when the agent is SIGKILLed), with the node's ``volumes`` mounted, named
``flowctl-<agent>-<flow>-<node>-<replica>``. ``command`` replaces the image's entrypoint
and ``args`` are its arguments (``args`` alone go to the image's own entrypoint).
Restarts, backoff, readiness and the log file are those of
:class:`~componentmanager.runners.external.ExternalReplica`: Docker's own restart policy
is not used, each run is a fresh container, removed when it ends.

Networking (:func:`network_options`): when NATS is on a loopback address (the embedded
server on 127.0.0.1, the default), the container runs with ``network_mode="host"``, so
``NATS_URL``, the health port and the node's ports mean the same inside and out (like a
process: ``localhost:50051`` reaches a dependency in either) and no server has to listen
on the Docker bridge; the ids of the nodes it ``depends_on`` resolve to 127.0.0.1. This
needs a Linux engine (Docker Desktop's host networking differs). Otherwise the flow's
containers share the user-defined network ``flowctl-<flow>`` (created on first use,
removed with its last container), where each is reachable by its node id, ``ports``
(``[{containerPort, hostPort}]``) are published on the host and ``NATS_URL`` is passed
unchanged (the server must be reachable from containers); the health check then goes to
the container's address on that network. A node with a ``binary`` (its process form)
runs the image as built: the binary, its ``args`` and ``working_dir`` are not passed.
``run_options``
(constructor) are extra ``containers.create`` arguments, e.g. ``volumes`` or
``network_mode``. ``NATS_CREDS``/TLS paths are host paths: mount them if you use them.

All blocking Docker calls run in threads; the long ones (log streams, ``wait``) in their
own daemon threads, so a busy agent never exhausts the default executor. If no engine
answers, the replica is ``failed`` with ``no Docker engine reachable: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from componentmanager.runners.base import ReplicaHost
from componentmanager.runners.external import ExternalReplica, LaunchError, LineSplitter
from flowstore.models import ComponentConfig
from flowstore.nats import is_loopback_host

LABEL_FLOW = "flowctl.flow"
LABEL_NODE = "flowctl.node"
LABEL_REPLICA = "flowctl.replica"
LABEL_AGENT = "flowctl.agent"
LABEL_INSTANCE = "flowctl.agent-instance"  # one agent process: what the watchdog removes

ClientFactory = Callable[[], Any]


def is_loopback_url(url: str | None) -> bool:
    """Whether a NATS URL points at this host's loopback (so only host networking works)."""
    return is_loopback_host(urlparse(url or "").hostname or "")


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def _in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run a long blocking call in its own daemon thread; its result as a future."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def runner() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=runner, daemon=True, name=f"flowctl-docker-{fn.__name__}").start()
    return fut


def _connect(factory: ClientFactory) -> Any:
    client = factory()
    client.ping()
    return client


class ContainerReplica(ExternalReplica):
    """One replica of a node whose ``image`` is run by the local Docker engine."""

    def __init__(
        self,
        cfg: ComponentConfig,
        index: int,
        host: ReplicaHost,
        *,
        client_factory: ClientFactory | None = None,
        run_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(cfg, index, host, **kwargs)
        self.client_factory: ClientFactory = client_factory or docker.from_env
        self.run_options = dict(run_options or {})
        self.container_id: str | None = None
        self._client: Any = None
        self._container: Any = None
        self._log_threads: list[asyncio.Future[Any]] = []
        self._streams: list[Any] = []
        self._health_ip = "127.0.0.1"

    @property
    def container_name(self) -> str:
        return f"flowctl-{self.host.agent_name}-{self.cfg.flow}-{self.cfg.node}-{self.index}"

    def labels(self) -> dict[str, str]:
        labels = {
            LABEL_FLOW: self.cfg.flow,
            LABEL_NODE: self.cfg.node,
            LABEL_REPLICA: str(self.index),
            LABEL_AGENT: self.host.agent_name,
        }
        instance = getattr(self.host, "instance", None)  # the agent's; absent in bare hosts
        if instance:
            labels[LABEL_INSTANCE] = str(instance)
        return labels

    def create_options(self, env: dict[str, str]) -> dict[str, Any]:
        """The ``containers.create`` arguments (image, env, labels, command, network)."""
        ext = self.ext
        opts: dict[str, Any] = {
            "image": ext.image,
            "name": self.container_name,
            "environment": dict(env),
            "labels": self.labels(),
            "detach": True,
        }
        if ext.binary:
            pass  # args and working_dir go with the binary: the image runs as built
        elif ext.command:
            opts["entrypoint"] = [ext.command]
            opts["command"] = list(ext.args)
        elif ext.args:
            opts["command"] = list(ext.args)
        if ext.working_dir and not ext.binary:
            opts["working_dir"] = ext.working_dir
        if ext.volumes:
            opts["volumes"] = list(ext.volumes)
        if not {"network", "network_mode"} & self.run_options.keys():
            opts.update(network_options(self.cfg, env.get("NATS_URL")))
        opts.update(self.run_options)
        return opts

    async def _launch(self, env: dict[str, str]) -> None:
        if not self.ext.image:
            raise LaunchError("no image configured")
        if self._client is None:
            try:
                self._client = await asyncio.to_thread(_connect, self.client_factory)
            except DockerException as exc:
                raise LaunchError(f"no Docker engine reachable: {_explain(exc)}") from None
        client, opts = self._client, self.create_options(env)
        try:
            await asyncio.to_thread(_remove, client, self.container_name)
            if "network" in opts:
                await asyncio.to_thread(_ensure_network, client, opts["network"], self.cfg.flow)
            try:
                container = await asyncio.to_thread(lambda: client.containers.create(**opts))
            except ImageNotFound:
                try:
                    await asyncio.to_thread(client.images.pull, self.ext.image)
                except DockerException as exc:
                    raise LaunchError(
                        f"image {self.ext.image} not found locally and not pullable: "
                        f"{_explain(exc)}"
                    ) from None
                container = await asyncio.to_thread(lambda: client.containers.create(**opts))
            self._container, self.container_id = container, container.id
            await asyncio.to_thread(container.start)
            await asyncio.to_thread(container.reload)
        except (DockerException, requests.RequestException) as exc:
            reason = _explain(exc)
            raise LaunchError(f"cannot run container from {self.ext.image}: {reason}") from None
        attrs = container.attrs
        self.pid = (attrs.get("State") or {}).get("Pid") or None
        if opts.get("network_mode") != "host":
            self._health_ip = _container_ip(attrs)
        loop = asyncio.get_running_loop()
        for name in ("stdout", "stderr"):
            self._log_threads.append(_in_thread(self._follow_logs, container, name, loop))

    def _follow_logs(self, container: Any, name: str, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: the container's stream ``name`` line by line into the event loop."""

        def emit(line: str) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.sink.write, line, name)

        lines = LineSplitter(emit)
        # Errors end the stream quietly: the container is gone, or closed under us.
        with contextlib.suppress(Exception):
            stream = container.logs(
                stream=True, follow=True, stdout=name == "stdout", stderr=name == "stderr"
            )
            self._streams.append(stream)
            for chunk in stream:
                lines.feed(chunk)
        lines.close()

    async def _wait_exit(self) -> int:
        container = self._container
        while True:
            try:
                result = await _in_thread(container.wait)
                return int(result.get("StatusCode", -1))
            except NotFound:
                return -1
            except DockerException:
                try:
                    await asyncio.to_thread(container.reload)
                except DockerException:
                    return -1
                state = container.attrs.get("State") or {}
                if not state.get("Running"):
                    return int(state.get("ExitCode", -1))

    async def _terminate(self) -> None:
        if self._container is None:
            return
        with contextlib.suppress(DockerException):
            await asyncio.to_thread(self._container.stop, timeout=max(int(self.grace + 0.999), 0))

    async def _cleanup(self) -> None:
        if self._log_threads:
            _, pending = await asyncio.wait(self._log_threads, timeout=2.0)
            if pending:
                for stream in self._streams:
                    with contextlib.suppress(Exception):
                        stream.close()
                await asyncio.wait(pending, timeout=2.0)
            self._log_threads, self._streams = [], []
        if self._container is not None:
            container, self._container = self._container, None
            with contextlib.suppress(DockerException):
                await asyncio.to_thread(container.remove, force=True)
            if self._client is not None:
                await asyncio.to_thread(_drop_network, self._client, flow_network(self.cfg.flow))

    async def stop(self) -> None:
        await super().stop()
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)

    def _health_host(self) -> str:
        return self._health_ip


def _container_ip(attrs: dict[str, Any]) -> str:
    """The container's address on its network (user-defined networks leave the top-level
    IPAddress empty), for the health check."""
    settings = attrs.get("NetworkSettings") or {}
    for network in (settings.get("Networks") or {}).values():
        if (network or {}).get("IPAddress"):
            return str(network["IPAddress"])
    return settings.get("IPAddress") or "127.0.0.1"


def flow_network(flow: str) -> str:
    """The user-defined Docker network of a flow's containers."""
    return f"flowctl-{flow}"


def network_options(cfg: ComponentConfig, nats_url: str | None) -> dict[str, Any]:
    """How a container is networked (pure; see the module docstring): host networking when
    NATS is on loopback (node ids it depends on resolve to 127.0.0.1), else the flow's
    network with the node id as alias and ``ports`` published."""
    ext = cfg.external
    if is_loopback_url(nats_url):
        hosts = {dep: "127.0.0.1" for dep in cfg.depends_on or {}}
        return {"network_mode": "host", **({"extra_hosts": hosts} if hosts else {})}
    network = flow_network(cfg.flow)
    opts: dict[str, Any] = {"network": network,
                            "networking_config": {network: {"Aliases": [cfg.node]}}}
    if ext is not None and ext.ports:
        opts["ports"] = {f"{p.container_port}/{p.protocol}": p.host_port or p.container_port
                         for p in ext.ports}
    return opts


def _ensure_network(client: Any, name: str, flow: str) -> None:
    if not client.networks.list(names=[name]):
        with contextlib.suppress(APIError):  # created meanwhile by another replica
            client.networks.create(name, driver="bridge", labels={LABEL_FLOW: flow})


def _drop_network(client: Any, name: str) -> None:
    """Remove the flow's network once no container uses it (else leave it)."""
    with contextlib.suppress(DockerException):
        for network in client.networks.list(names=[name]):
            network.reload()
            if not network.attrs.get("Containers"):
                network.remove()


def _remove(client: Any, name: str) -> None:
    """Remove a leftover container of the same name, if any."""
    with contextlib.suppress(NotFound):
        client.containers.get(name).remove(force=True)


async def reap_orphan_containers(
    agent_name: str, client_factory: ClientFactory | None = None
) -> list[str]:
    """Remove every container labelled ``flowctl.agent=<agent_name>`` (running or not).

    Call once at agent startup, before starting replicas: a container of this agent's
    previous life is an orphan. Returns the removed names; no engine means nothing to do.
    """

    def reap() -> list[str]:
        try:
            client = _connect(client_factory or docker.from_env)
        except DockerException:
            return []
        removed = []
        try:
            label = f"{LABEL_AGENT}={agent_name}"
            # sparse: no inspect per container (one removed meanwhile would 404 the list)
            found = client.containers.list(all=True, sparse=True, filters={"label": label})
            for container in found:
                with contextlib.suppress(NotFound, APIError):
                    container.remove(force=True)
                    names = container.attrs.get("Names") or [container.id[:12]]
                    removed.append(names[0].lstrip("/"))
        finally:
            client.close()
        return removed

    return await asyncio.to_thread(reap)
