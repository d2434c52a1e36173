"""Build the flowctl image for tests and CI without pulling anything from a registry.

Three cached steps, each timed on stderr:

1. ``flowctl-base:local``: a Debian bookworm root file system made with ``debootstrap``
   (minbase plus python3, python3-venv, ca-certificates) from the Debian package mirror,
   turned into an image with ``docker import``. Skipped when the image exists.
2. ``dist/wheels``: the project's dependencies (and setuptools, to build the project) as
   wheels made on the host with ``pip wheel``; bookworm's python3 is 3.11 like the host's,
   so the host's cp311 manylinux wheels fit. Skipped while ``dist/wheels/.requirements``
   says they were made for the same dependency list and Python version.
3. ``flowctl:local``: ``docker build --build-arg BASE=flowctl-base:local .``; the Dockerfile
   installs from ``dist/wheels`` with ``--no-index`` when it is there. Done once per process
   (the layer cache makes a rebuild take seconds; superseded images are removed).

``FLOWCTL_BASE_IMAGE`` (for example ``python:3.11-slim`` where pulls work) replaces step 1.
Run it by hand with ``python -m tests.docker_images [--force-base] [--quiet]``; tests use
:func:`ensure_flowctl_image`, which raises :class:`DockerUnavailable` when no engine
answers.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_TAG = "flowctl-base:local"
FLOWCTL_TAG = "flowctl:local"
WHEELS = ROOT / "dist" / "wheels"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
SUITE_PYTHON = (3, 11)
PACKAGES = "python3,python3-venv,ca-certificates"
LOCK = Path(tempfile.gettempdir()) / "flowctl-docker-images.lock"


class DockerUnavailable(RuntimeError):
    """No Docker engine can be reached (or its CLI is missing)."""


class ImageBuildFailed(RuntimeError):
    """A step of the image build failed; the message ends with its output."""


def log(message: str) -> None:
    print(f"[docker_images] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(step: str) -> Iterator[None]:
    start = time.monotonic()
    log(f"{step} ...")
    try:
        yield
    finally:
        log(f"{step}: {time.monotonic() - start:.1f}s")


def engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers a ping."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Docker engine reachable ({exc or type(exc).__name__})"
    return None


def run(cmd: list[str], *, timeout: float, quiet: bool = True, **kw: object) -> str:
    """Run ``cmd``; return its output (when quiet) or stream it; raise with its tail."""
    if quiet:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        output = proc.stdout + proc.stderr
    else:
        proc = subprocess.run(cmd, text=True, timeout=timeout, **kw)
        output = ""
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise ImageBuildFailed(f"{' '.join(cmd[:4])} ... exited {proc.returncode}\n{tail}")
    return output


def image_exists(tag: str) -> bool:
    proc = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=60)
    return proc.returncode == 0


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One builder at a time on this machine (parallel test sessions share the images)."""
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure_debootstrap(quiet: bool) -> str:
    found = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ImageBuildFailed("debootstrap is missing and cannot be installed here "
                               "(needs root and apt-get); install it, or set "
                               "FLOWCTL_BASE_IMAGE to an image with python3.11")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with timed("apt-get install debootstrap"):
        run(["apt-get", "update", "-qq"], timeout=600, quiet=quiet, env=env)
        run(["apt-get", "install", "-y", "-qq", "debootstrap"], timeout=600, quiet=quiet,
            env=env)
    return shutil.which("debootstrap") or "/usr/sbin/debootstrap"


def _remove_rootfs(path: Path) -> None:
    """Unmount anything debootstrap left mounted below ``path``, then delete it."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def build_base_image(tag: str = BASE_TAG, *, force: bool = False, quiet: bool = True) -> str:
    """``tag`` from a debootstrapped Debian bookworm; skipped when it exists."""
    if not force and image_exists(tag):
        log(f"{tag}: present")
        return tag
    debootstrap = _ensure_debootstrap(quiet)
    work = Path(tempfile.mkdtemp(prefix="flowctl-rootfs-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        with timed(f"debootstrap {SUITE}"):
            run([debootstrap, "--variant=minbase", f"--include={PACKAGES}", SUITE,
                 str(rootfs), MIRROR], timeout=1200, quiet=quiet)
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                        "var/lib/apt/lists/*_*"):
            for leftover in rootfs.glob(pattern):
                leftover.unlink()
        with timed(f"docker import {tag}"):
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-",
                                    "."], stdout=subprocess.PIPE)
            try:
                run(["docker", "import",
                     "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
                                 ":/sbin:/bin",
                     "--change", "ENV LANG=C.UTF-8",
                     "--change", 'CMD ["/bin/bash"]',
                     "-", tag], timeout=600, stdin=tar.stdout)
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait(60)
    finally:
        _remove_rootfs(work)
    return tag


def dependencies() -> list[str]:
    """The project's runtime dependencies (from pyproject.toml) plus its build backend."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*data["build-system"]["requires"], *data["project"]["dependencies"]]


def ensure_wheels(dest: Path = WHEELS, *, quiet: bool = True) -> Path:
    """Wheels of every dependency in ``dest`` (for the Dockerfile's offline install)."""
    if sys.version_info[:2] != SUITE_PYTHON:
        raise ImageBuildFailed(
            f"wheels are made with this interpreter (Python {sys.version_info[0]}."
            f"{sys.version_info[1]}) but the {SUITE} base has Python "
            f"{SUITE_PYTHON[0]}.{SUITE_PYTHON[1]}: run with a 3.11 interpreter")
    wanted = "\n".join([sys.implementation.cache_tag, *dependencies()]) + "\n"
    stamp = dest / ".requirements"
    if stamp.exists() and stamp.read_text() == wanted and any(dest.glob("*.whl")):
        log(f"{dest.relative_to(ROOT)}: present ({len(list(dest.glob('*.whl')))} wheels)")
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with timed(f"pip wheel -> {dest.relative_to(ROOT)}"):
        run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
             "-w", str(dest), *dependencies()], timeout=900, quiet=quiet)
    stamp.write_text(wanted)
    return dest


def image_id(tag: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_flowctl_image(tag: str = FLOWCTL_TAG, base: str = BASE_TAG, *,
                        quiet: bool = True) -> str:
    """``docker build`` the project's Dockerfile on ``base`` (the layer cache keeps it fast).

    The build stage is tagged too (``flowctl-build:local``), so the classic builder keeps
    it as the cache of the dependency layer; the images a rebuild supersedes are removed
    (when no container uses them) instead of piling up untagged.
    """
    stage = f"{tag.split(':')[0]}-build:local"
    before = {t: image_id(t) for t in (stage, tag)}
    with timed(f"docker build {tag} (BASE={base})"):
        for target, name in ((["--target", "build"], stage), ([], tag)):
            run(["docker", "build", "--build-arg", f"BASE={base}", *target, "-t", name,
                 str(ROOT)], timeout=1200, quiet=quiet)
    for name, old in before.items():
        if old is not None and old != image_id(name):
            subprocess.run(["docker", "rmi", old], capture_output=True, timeout=120,
                           check=False)
    return tag


@functools.cache
def ensure_flowctl_image(quiet: bool = True) -> str:
    """The tag of a freshly built flowctl image (built once per process).

    Raises :class:`DockerUnavailable` when no engine answers and :class:`ImageBuildFailed`
    when a step fails.
    """
    problem = engine_problem()
    if problem:
        raise DockerUnavailable(problem)
    start = time.monotonic()
    with build_lock():
        base = os.environ.get("FLOWCTL_BASE_IMAGE") or build_base_image(quiet=quiet)
        ensure_wheels(quiet=quiet)
        tag = build_flowctl_image(base=base, quiet=quiet)
    log(f"{tag} ready in {time.monotonic() - start:.1f}s")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force-base", action="store_true",
                        help=f"rebuild {BASE_TAG} even when it exists")
    parser.add_argument("--quiet", action="store_true", help="only the step timings")
    args = parser.parse_args(argv)
    try:
        if args.force_base and not os.environ.get("FLOWCTL_BASE_IMAGE"):
            problem = engine_problem()
            if problem:
                raise DockerUnavailable(problem)
            with build_lock():
                build_base_image(force=True, quiet=args.quiet)
        print(ensure_flowctl_image(quiet=args.quiet))
    except (DockerUnavailable, ImageBuildFailed) as exc:
        log(f"failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
