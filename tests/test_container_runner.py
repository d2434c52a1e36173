"""ContainerReplica against a real Docker engine (skipped, with the reason, without one).

No image can be pulled here, so the session builds ``flowctl-test-busybox`` locally:
``FROM scratch`` with a statically linked ``busybox`` (Debian: ``busybox-static``) and
its applets as symlinks. The SDK end-to-end test runs this machine's own Python inside
that image, bind-mounted read-only (host networking reaches the test's nats-server).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import NotFound

from componentmanager.runners.container import (
    LABEL_AGENT,
    LABEL_FLOW,
    ContainerReplica,
    reap_orphan_containers,
)
from flowstore.models import ComponentConfig, ExternalFields, ReplicaState
from flowstore.nats import NatsOptions
from tests.process_context import Host, free_port, until

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).parent / "programs"
IMAGE = "flowctl-test-busybox:1"
APPLETS = ["sh", "echo", "sleep", "cat", "env", "mkdir", "httpd", "true", "false"]


def is_static_elf(path: str) -> bool:
    """An ELF executable without a PT_INTERP header (runs in an empty image)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def make_cfg(node: str, *, flow: str = "cf", **ext: Any) -> ComponentConfig:
    return ComponentConfig(
        flow=flow, node=node, type="external", kind="container", queue=f"flowctl.{flow}.{node}",
        inputs=ext.pop("inputs", {}), outputs=ext.pop("outputs", {}),
        external=ExternalFields(image=ext.pop("image", IMAGE), **ext),
    )


def containers_of(client: Any, flow: str) -> list[Any]:
    return client.containers.list(all=True, sparse=True,
                                  filters={"label": f"{LABEL_FLOW}={flow}"})


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); start dockerd to run these tests")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(docker_client: Any) -> str:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists() or not is_static_elf(busybox):
        pytest.skip("needs a statically linked busybox (apt-get install busybox-static)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = b"FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(busybox, arcname="rootfs/bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"rootfs/bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    buf.seek(0)
    docker_client.images.build(fileobj=buf, custom_context=True, tag=IMAGE, rm=True)
    return IMAGE


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path / "logs", NatsOptions(url="nats://127.0.0.1:4222"))
    h.agent_name = "ctest"
    return h


@pytest.fixture
async def spawn(host: Host, docker_client: Any) -> AsyncIterator[Callable[..., ContainerReplica]]:
    made: list[ContainerReplica] = []

    def make(cfg: ComponentConfig, **kwargs: Any) -> ContainerReplica:
        replica = ContainerReplica(cfg, 0, kwargs.pop("host", host), **kwargs)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        await replica.stop()
        assert not containers_of(docker_client, replica.cfg.flow)


async def test_no_engine_is_a_clean_failure(host: Host) -> None:
    def unreachable() -> Any:
        return docker.DockerClient(base_url="unix:///nonexistent/flowctl-test/docker.sock")

    cfg = make_cfg("box", restart_policy="never")
    replica = ContainerReplica(cfg, 0, host, client_factory=unreachable)
    await replica.start()
    await until(lambda: replica.state == ReplicaState.FAILED, "failed")
    assert (replica.last_error or "").startswith("no Docker engine reachable: ")
    assert "Traceback" not in (replica.last_error or "")
    await replica.stop()
    assert replica.state == ReplicaState.STOPPED


@pytest.mark.docker
async def test_logs_labels_env_and_stop(
    spawn: Any, host: Host, image: str, docker_client: Any
) -> None:
    script = "echo hello; echo oops >&2; echo id=$FLOWCTL_SERVICE_ID; echo $GREETING; sleep 1000"
    cfg = make_cfg("box", command="sh", args=["-c", script], env={"GREETING": "hi ${CT_SECRET}"})
    replica = spawn(cfg, grace=1.0, environ={"CT_SECRET": "s3cret"})
    await replica.start()
    await until(lambda: replica.state == ReplicaState.RUNNING, "running")
    await until(lambda: host.has_line("hi s3cret") and host.has_line("oops"), "log lines")
    assert ("stdout", "hello") in host.lines and ("stderr", "oops") in host.lines
    assert ("stdout", "id=cf.box.0") in host.lines
    assert "hello" in Path(host.log_dir, "cf.box.0.log").read_text()
    container = docker_client.containers.get(replica.container_name)
    assert container.labels == {
        "flowctl.flow": "cf", "flowctl.node": "box", "flowctl.replica": "0", LABEL_AGENT: "ctest"
    }
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"  # NATS is on loopback
    assert "ENABLE_FLOWCTL=true" in container.attrs["Config"]["Env"]
    assert replica.pid and replica.pid > 0
    began = time.monotonic()
    await replica.stop()  # sh as PID 1 ignores SIGTERM: killed after the grace
    assert time.monotonic() - began < 5.0
    assert replica.state == ReplicaState.STOPPED
    with pytest.raises(NotFound):
        docker_client.containers.get(replica.container_name)


@pytest.mark.docker
async def test_restart_policy_and_exit_codes(spawn: Any, host: Host, image: str) -> None:
    crash = spawn(make_cfg("crash", command="sh", args=["-c", "echo boom; exit 1"]),
                  backoff_initial=0.1)
    never = spawn(make_cfg("never", flow="cf2", command="sh", args=["-c", "exit 3"],
                           restart_policy="never"))
    await crash.start()
    await never.start()
    await until(lambda: crash.restarts >= 2, "2 restarts")
    await until(lambda: never.state == ReplicaState.FAILED, "the never-restarted one failed")
    assert crash.exit_code == 1
    errors = [
        c.error
        for c in host.changes
        if c.state == ReplicaState.FAILED and "boom" not in (c.error or "")
    ]
    assert "exited with code 1; restarting in 0.1s" in errors
    assert "exited with code 1; restarting in 0.2s" in errors
    assert sum(1 for _, line in host.lines if line == "boom") >= 2
    assert never.exit_code == 3 and never.last_error == "exited with code 3"
    assert never.restarts == 0


@pytest.mark.docker
async def test_health_port_gates_running(spawn: Any, host: Host, image: str) -> None:
    script = (
        "sleep 1; mkdir -p /www; echo ok > /www/health; echo serving; "
        "exec httpd -f -p 127.0.0.1:$FLOWCTL_HEALTH_PORT -h /www"
    )
    replica = spawn(make_cfg("web", command="sh", args=["-c", script], health_port=free_port()),
                    grace=1.0)
    began = time.monotonic()
    await replica.start()
    await until(lambda: replica.state == ReplicaState.RUNNING, "running")
    assert time.monotonic() - began >= 1.0
    assert host.has_line("serving")


@pytest.mark.docker
async def test_missing_image_fails(spawn: Any, host: Host, docker_client: Any) -> None:
    cfg = make_cfg("nope", image="flowctl-test-no-such-image:0", restart_policy="never")
    replica = spawn(cfg)
    await replica.start()
    await until(lambda: replica.state == ReplicaState.FAILED, "failed", 60)
    assert "flowctl-test-no-such-image:0" in (replica.last_error or "")


@pytest.mark.docker
async def test_reap_orphan_containers(image: str, docker_client: Any) -> None:
    def leftover(agent: str) -> Any:
        return docker_client.containers.run(
            image, ["sleep", "1000"], detach=True, name=f"flowctl-{agent}-x-y-0",
            labels={LABEL_AGENT: agent, LABEL_FLOW: "x"},
        )

    mine, theirs = leftover("reap-me"), leftover("keep-me")
    try:
        removed = await reap_orphan_containers("reap-me")
        assert removed == [mine.name]
        with pytest.raises(NotFound):
            docker_client.containers.get(mine.id)
        assert docker_client.containers.get(theirs.id).status == "running"
    finally:
        for c in (mine, theirs):
            with contextlib.suppress(NotFound):
                c.remove(force=True)


@pytest.fixture(scope="session")
def python_mounts(docker_client: Any, image: str) -> list[str]:
    """This machine's Python + the project, mounted read-only into the busybox image."""
    paths = {"/usr", sys.prefix, sys.base_prefix, str(ROOT)}
    mounts = [f"{Path(p).resolve()}:{p}:ro" for p in sorted(paths)]
    for top in ("/lib", "/lib64"):
        if Path(top).exists():
            mounts.append(f"{Path(top).resolve()}:{top}:ro")
    try:
        docker_client.containers.run(
            image, [sys.executable, "-c", "import componentmanager.sdk"], volumes=mounts,
            remove=True, network_mode="host",
        )
    except Exception as exc:
        pytest.skip(f"this machine's Python does not run inside a container: {exc}")
    return mounts


@pytest.mark.docker
async def test_sdk_program_in_a_container_moves_events(
    nc: Any, nats_opts: NatsOptions, tmp_path: Path, python_mounts: list[str], docker_client: Any
) -> None:
    host = Host(tmp_path / "logs", nats_opts, nc)
    host.agent_name = "ctest"
    cfg = make_cfg(
        "upper", flow="cfe", command=sys.executable, args=[str(PROGRAMS / "sdk_upper.py")],
        inputs={"in": ["flowctl.cfe.src.out"]}, outputs={"out": "flowctl.cfe.upper.out"},
        health_port=free_port(),
    )
    replica = ContainerReplica(cfg, 0, host, run_options={"volumes": python_mounts})
    outs: list[Any] = []

    async def on_out(msg: Any) -> None:
        outs.append(msg)

    await nc.subscribe("flowctl.cfe.upper.out", cb=on_out)
    try:
        await replica.start()
        await until(lambda: replica.state == ReplicaState.RUNNING, "running (health 200)", 30, host)
        await nc.publish("flowctl.cfe.src.out", json.dumps({"text": "from host"}).encode())
        await until(lambda: bool(outs), "the container's output", host=host)
        assert json.loads(outs[0].data) == {"text": "FROM HOST", "port": "in"}
        assert outs[0].headers["Flowctl"].startswith("upper.0.")  # first event id, count, time
    finally:
        await replica.stop()
    assert replica.exit_code == 0  # SIGTERM: the SDK drained and exited 0
    assert not containers_of(docker_client, "cfe")
