"""The flow file format users write (YAML or JSON) and its normalization to FlowSpec.

Two shapes are accepted:

* the flowctl file: ``apiVersion: flowctl/v1``, ``kind: Flow`` (or ``Pipeline``),
  ``metadata``, ``spec.sources/processors/sinks`` with ``inputs: [node | node.port]``;
* a canvas export: ``{name, nodes: [{id, type, name, config}], connections:
  [{source_node_id, source_port, target_node_id, target_port}]}``.

Both normalize to :class:`flowstore.models.FlowSpec`. :func:`flow_file_schema` exports
the JSON schema of the flowctl file for editor completion.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowstore.models import (
    DEFAULT_BUFFER,
    DEFAULT_INPUT_PORT,
    DEFAULT_OUTPUT_PORT,
    ByteSize,
    Connection,
    Delivery,
    ExternalFields,
    FlowSpec,
    Name,
    Node,
    Placement,
    Role,
)


class ComponentEntry(ExternalFields):
    """One entry of ``spec.sources``, ``spec.processors`` or ``spec.sinks``."""

    model_config = ConfigDict(extra="forbid")

    id: Name = Field(description="Node id, unique in the flow; names its data subjects.")
    type: str | None = Field(
        default=None, min_length=1,
        description="A component type (`flowctl components`); optional for a program or "
        "container (`command` / `image`), which may name its own.")
    command: str | list[str] | None = Field(  # type: ignore[assignment]
        default=None, description='The program to run: "python3", or a list '
        '["python3", "worker.py"] (program, then its arguments, before `args`).')
    name: str | None = Field(default=None, description="A display name.")
    config: dict[str, Any] = Field(default_factory=dict, description="The type's config.")
    inputs: list[str] = Field(
        default_factory=list,
        description='Upstream "node" or "node.port" (default port "out").',
    )
    replicas: int = Field(default=1, ge=1, le=1000)
    partition_by: str | None = Field(
        default=None, min_length=1,
        description="An expression (e.g. user_id): events with the same value always go "
        "to the same replica, in order. Stateful processors (window, join) partition by "
        "their key by default.")
    placement: Placement | None = None
    fuse: bool = Field(
        default=True,
        description="Run fused with its neighbours (the default): a stateless in-process "
        "processor that alone reads a node with the same replicas and placement runs in "
        "that node's replica, events passed in memory (no NATS hop); it stays its own node "
        "in status, metrics, logs and dead letters (`flowctl describe` shows the plan). "
        "false keeps this node in a replica of its own.")

    @model_validator(mode="after")
    def _type_or_program(self) -> ComponentEntry:
        if self.type is None and not (self.command or self.binary or self.image):
            raise ValueError("type is required (or binary / command / image, for a program "
                             "or a container)")
        if isinstance(self.command, list) and not self.command:
            raise ValueError("command is an empty list")
        if self.binary and self.command and not self.image:
            raise ValueError("binary and command both name the program: keep one (binary "
                             "is the program when the node also has an image)")
        return self

    def node_fields(self) -> dict[str, Any]:
        """The fields of the normalized :class:`Node`: a command list split into the
        program and its arguments; a program without a type is of type ``external``."""
        data = self.model_dump(exclude={"inputs"})
        if isinstance(self.command, list):
            data["command"], data["args"] = self.command[0], [*self.command[1:], *self.args]
        data["type"] = self.type or "external"
        return data


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Free-form notes for people and tools; kept.")


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery: Delivery = Field(
        default="at-least-once",
        description="at-least-once (the default): events kept in a JetStream stream until "
        "every consumer acked them; at-most-once: core NATS, overload drops (counted); "
        "exactly-once: as at-least-once, and validation refuses nodes that could repeat "
        "an effect (stdout sinks, programs, containers, nats sinks without stream).",
    )
    buffer: ByteSize = Field(
        default=DEFAULT_BUFFER,
        description="at-least-once and exactly-once: how much the flow's stream may hold "
        "(bytes, or e.g. 64MiB, 1GB); past it, publishers wait (backpressure).",
    )
    sources: list[ComponentEntry] = Field(default_factory=list)
    processors: list[ComponentEntry] = Field(default_factory=list)
    sinks: list[ComponentEntry] = Field(default_factory=list)


class FlowFile(BaseModel):
    """A flowctl flow file."""

    model_config = ConfigDict(extra="forbid", title="flowctl flow")

    apiVersion: Literal["flowctl/v1"]
    kind: Literal["Flow", "Pipeline"]
    metadata: Metadata
    spec: FileSpec
    status: dict[str, Any] | None = Field(
        default=None, description="Ignored on apply: what `flowctl get -o yaml` reports.")

    def to_spec(self) -> FlowSpec:
        nodes: list[Node] = []
        connections: list[Connection] = []
        sections: list[tuple[Role, list[ComponentEntry]]] = [
            ("source", self.spec.sources),
            ("processor", self.spec.processors),
            ("sink", self.spec.sinks),
        ]
        for role, entries in sections:
            for entry in entries:
                nodes.append(Node(role=role, **entry.node_fields()))
                for upstream in entry.inputs:
                    node, _, port = upstream.partition(".")
                    connections.append(
                        Connection(
                            from_=f"{node}.{port or DEFAULT_OUTPUT_PORT}",
                            to=f"{entry.id}.{DEFAULT_INPUT_PORT}",
                        )
                    )
        return FlowSpec(
            description=self.metadata.description,
            labels=self.metadata.labels,
            annotations=self.metadata.annotations,
            delivery=self.spec.delivery,
            buffer=self.spec.buffer,
            nodes=nodes,
            connections=connections,
        )


class CanvasNode(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Name
    type: str = Field(min_length=1)
    name: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class CanvasConnection(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source_node_id: str
    source_port: str = DEFAULT_OUTPUT_PORT
    target_node_id: str
    target_port: str = DEFAULT_INPUT_PORT


class CanvasFlow(BaseModel):
    """A flow exported from a canvas UI."""

    model_config = ConfigDict(extra="ignore")

    name: Name
    description: str | None = None
    delivery: Delivery = "at-least-once"
    nodes: list[CanvasNode]
    connections: list[CanvasConnection] = Field(default_factory=list)

    def to_spec(self) -> FlowSpec:
        return FlowSpec(
            description=self.description,
            delivery=self.delivery,
            nodes=[Node(**n.model_dump()) for n in self.nodes],
            connections=[
                Connection(
                    from_=f"{c.source_node_id}.{c.source_port}",
                    to=f"{c.target_node_id}.{c.target_port}",
                )
                for c in self.connections
            ],
        )


_SECTIONS: dict[str, str] = {"source": "sources", "processor": "processors", "sink": "sinks"}


def flow_document(record: dict[str, Any]) -> dict[str, Any]:
    """A stored flow (a ``FlowRecord`` dumped as JSON) as the flow file that made it:
    ``flowctl apply -f`` takes it back unchanged (``flowctl get NAME -o yaml``). Default
    fields are left out; a node without a role (a canvas export) goes where its
    connections put it. ``status`` (state, revisions, times) is ignored by apply."""
    spec = record["spec"]
    inputs: dict[str, list[str]] = {}
    has_outputs: set[str] = set()
    for conn in spec.get("connections", []):
        source = conn.get("from") or conn.get("from_", "")
        node, _, port = source.partition(".")
        inputs.setdefault(conn["to"].partition(".")[0], []).append(
            node if port == DEFAULT_OUTPUT_PORT else source)
        has_outputs.add(node)
    sections: dict[str, list[dict[str, Any]]] = {"sources": [], "processors": [], "sinks": []}
    for node in spec.get("nodes", []):
        entry = {k: v for k, v in node.items() if k != "role"}
        if inputs.get(node["id"]):
            entry["inputs"] = inputs[node["id"]]
        role = node.get("role") or ("source" if not entry.get("inputs") else
                                    "processor" if node["id"] in has_outputs else "sink")
        sections[_SECTIONS[role]].append(entry)
    metadata: dict[str, Any] = {"name": record["name"]}
    for key in ("description", "labels", "annotations"):
        if spec.get(key):
            metadata[key] = spec[key]
    file_spec: dict[str, Any] = {"delivery": spec.get("delivery", "at-least-once")}
    if spec.get("buffer", DEFAULT_BUFFER) != DEFAULT_BUFFER:
        file_spec["buffer"] = spec["buffer"]
    file_spec.update({k: v for k, v in sections.items() if v})
    status = {k: record[k] for k in ("state", "revision", "deployed_revision", "created_at",
                                     "updated_at") if record.get(k) is not None}
    return {"apiVersion": "flowctl/v1", "kind": "Flow", "metadata": metadata,
            "spec": file_spec, "status": status}


def flow_file_schema() -> dict[str, Any]:
    """The JSON schema of the flowctl flow file (for editors: yaml-language-server)."""
    schema = FlowFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
