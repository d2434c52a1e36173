"""The fields of a node run as a program or a container (flowctl-compatible), and the
pure choice of which of the two runs when a node has both.

A node may describe one component two ways: a program (``binary:`` or ``command:``, with
``args``, ``working_dir``) for the process orchestrator and an ``image`` for the container
orchestrator. :meth:`ExternalFields.runs_as` picks one for an agent's ``--orchestrator``;
without one, a node with an image runs as a container (as before).

``binary`` is the program of the process form only: a container never gets it (nor the
``args`` and ``working_dir`` that go with it), so the same file runs both ways.
``command`` with ``image`` and no ``binary`` keeps its container meaning (it replaces the
image's entrypoint, ``args`` are its arguments) and is the program under
``--orchestrator process``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RestartPolicy = Literal["always", "on-failure", "never"]
Kind = Literal["inprocess", "process", "container"]
#: An agent's choice for nodes that have both a program and an image (None: the image).
Orchestrator = Literal["process", "container"]


class PortMapping(BaseModel):
    """A container port published on the host: ``{containerPort: 50051, hostPort: 50051}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    container_port: int = Field(alias="containerPort", ge=1, le=65535)
    host_port: int | None = Field(
        default=None, alias="hostPort", ge=1, le=65535,
        description="The host port (default: the container port).")
    protocol: Literal["tcp", "udp"] = "tcp"


class ExternalFields(BaseModel):
    """The flowctl-compatible fields of a component run as a program or container."""

    command: str | None = Field(
        default=None, description="The program to run: a name on PATH or a path (a relative "
        "one resolves against the flow file's directory); with image: the entrypoint.")
    binary: str | None = Field(
        default=None, description="The program to run under the process orchestrator "
        "(as command:); a container ignores it, with its args and working_dir.")
    args: list[str] = Field(default_factory=list, description="The program's arguments.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment, applied last; ${VAR} is taken "
        "from the agent's environment when the replica starts (secrets stay out of KV).")
    working_dir: str | None = Field(
        default=None, description="Where the program runs (default: the flow file's "
        "directory).")
    health_port: int | None = Field(
        default=None, ge=1, le=65535, description="The port of health_check (replica i: "
        "health_port + i); the replica is running once it answers 200.")
    health_check: str = Field(
        default="/health", pattern=r"^/", description="The path of the health check on "
        "health_port (GET, 200 = ready and alive).")
    health_interval: float = Field(
        default=5.0, ge=0, description="Seconds between liveness probes of health_check "
        "once running (3 failures in a row: restarted by restart_policy); 0: probed at "
        "start only.")
    restart_policy: RestartPolicy = Field(
        default="on-failure", description="When a program that ended is started again "
        "(backoff 0.5 s doubling, cap 30 s).")
    stop_grace: float = Field(
        default=5.0, ge=0, le=3600, description="Seconds between SIGTERM (docker stop) "
        "and the kill when the component is stopped.")
    image: str | None = Field(
        default=None, description="A Docker image to run the node as a container.")
    volumes: list[str] = Field(
        default_factory=list, description='Containers only: "host_path:container_path[:ro]".'
    )
    ports: list[PortMapping] = Field(
        default_factory=list, description="Containers only: ports published on the host, "
        "[{containerPort: 50051, hostPort: 50051}].")
    depends_on: list[str] = Field(
        default_factory=list, description="Nodes to start first: this one starts once each "
        "of them is running and healthy, and stops before them.")
    frames: bool = Field(
        default=False,
        description="The program accepts frames (several events per message, JSON lines; "
        "the SDK does): upstream nodes may then send it frames. Without it, it gets one "
        "event per message.",
    )

    @property
    def program(self) -> str | None:
        """The program of the process form: ``binary``, else ``command``."""
        return self.binary or self.command

    @property
    def kind(self) -> Kind:
        if self.image:
            return "container"
        if self.program:
            return "process"
        return "inprocess"

    def runs_as(self, orchestrator: Orchestrator | None) -> Kind:
        """The kind that runs under ``orchestrator`` (pure): a node with both forms runs
        the one asked for; any other node runs the form it has."""
        if orchestrator == "process" and self.program:
            return "process"
        if orchestrator == "container" and self.image:
            return "container"
        return self.kind
