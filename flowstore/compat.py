"""Pipeline files of the Go flowctl load here: a pure translation of the parsed file.

:func:`from_go_flowctl` takes the parsed YAML (before schema validation) and returns it in
our shape, with a note for everything it changed or cannot honour. What maps onto ours is
used; what does not is a warning about that item (or an error when running the flow
without it would be wrong):

* ``metadata.namespace``: ignored (flows are named by ``metadata.name`` alone), warned;
  ``metadata.annotations`` are kept with the flow.
* ``spec.description``: the flow's description (``metadata.description`` wins).
* ``spec.driver``: ``process``, ``local`` and ``docker`` match what we do (``command`` nodes
  run as processes, ``image`` nodes as Docker containers); ``kubernetes`` and ``nomad``
  are warned and the flow runs on flowctl agents.
* ``spec.pipelines[]`` (standalone components): run as sources with nothing downstream,
  warned.
* ``health_check: /path``: the health check's path on ``health_port``.
* ``volumes`` as objects ``{name, host_path, container_path, readonly}``: as
  ``host:container[:ro]`` (a named volume when only ``name`` is given).
* ``restart_policy: "no"`` (or an unquoted YAML ``no``, read as false): ``never``;
  ``unless-stopped``: ``always``.
* ``ports`` as compose strings ``"8080:80"``, ``"80"``, ``"53:53/udp"``: as
  ``{containerPort, hostPort, protocol}`` (published for containers).

``command`` as a list and image-only components without ``type`` are part of our own
format (:mod:`flowstore.flowfile`); a type like ``name@v1.0.0`` that is not registered is
an ``unknown_type`` issue of validation, as for any unknown type.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

SECTIONS = ("sources", "processors", "sinks")
SUPPORTED_DRIVERS = frozenset({"process", "local", "docker"})
RESTART_POLICIES = {False: "never", "no": "never", "unless-stopped": "always",
                    "on_failure": "on-failure", "on-failure": "on-failure",
                    "always": "always", "never": "never"}


@dataclass(frozen=True)
class Note:
    path: str
    message: str
    severity: str = "warning"


def _volume(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    target = item.get("container_path") or item.get("target")
    source = item.get("host_path") or item.get("source") or item.get("name")
    if not (source and target):
        return item  # left for the schema to report
    readonly = item.get("readonly") or item.get("read_only")
    return f"{source}:{target}{':ro' if readonly else ''}"


def _port(item: Any) -> Any:
    """``"8080:80"`` / ``"80"`` / ``"53:53/udp"`` (compose style) as a port mapping object."""
    if isinstance(item, int) and not isinstance(item, bool):
        return {"containerPort": item}
    if not isinstance(item, str):
        return item
    text, _, protocol = item.partition("/")
    host, _, container = text.rpartition(":")
    if not container.isdigit() or (host and not host.isdigit()):
        return item  # left for the schema to report
    out: dict[str, Any] = {"containerPort": int(container)}
    if host:
        out["hostPort"] = int(host)
    if protocol:
        out["protocol"] = protocol
    return out


def _entry(entry: Any, path: str, notes: list[Note]) -> Any:
    if not isinstance(entry, dict):
        return entry
    out = dict(entry)
    if "restart_policy" in out and out["restart_policy"] in RESTART_POLICIES:
        mapped = RESTART_POLICIES[out["restart_policy"]]
        if mapped != out["restart_policy"]:
            out["restart_policy"] = mapped
    if isinstance(out.get("volumes"), list):
        out["volumes"] = [_volume(v) for v in out["volumes"]]
    if isinstance(out.get("ports"), list):
        out["ports"] = [_port(p) for p in out["ports"]]
    return out


def from_go_flowctl(data: dict[str, Any]) -> tuple[dict[str, Any], list[Note]]:
    """``data`` (a parsed flow file) in our shape, and the notes about what changed."""
    data = copy.deepcopy(data)
    notes: list[Note] = []
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and "namespace" in metadata:
        namespace = metadata.pop("namespace")
        notes.append(Note("metadata.namespace", f"namespace {namespace!r} is ignored: flows "
                                                "are named by metadata.name alone"))
    spec = data.get("spec")
    if not isinstance(spec, dict):
        return data, notes
    description = spec.pop("description", None)
    if description and isinstance(metadata, dict):
        metadata.setdefault("description", description)
    driver = spec.pop("driver", None)
    if driver is not None and driver not in SUPPORTED_DRIVERS:
        notes.append(Note("spec.driver", f"driver {driver!r} is not supported: the flow runs "
                                         "on flowctl agents (command nodes as processes, image "
                                         "nodes as Docker containers)"))
    standalone = spec.pop("pipelines", None) or []
    if isinstance(standalone, list) and standalone:
        sources = spec.setdefault("sources", [])
        if isinstance(sources, list):
            for i, entry in enumerate(standalone):
                sources.append(entry)
                notes.append(Note(f"spec.pipelines[{i}]", "a standalone component runs as a "
                                                          "source with nothing downstream"))
    for section in SECTIONS:
        entries = spec.get(section)
        if isinstance(entries, list):
            spec[section] = [_entry(e, f"spec.{section}[{i}]", notes)
                             for i, e in enumerate(entries)]
    return data, notes
