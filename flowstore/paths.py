"""Relative paths in a flow resolve against the flow file's directory, everywhere.

:func:`resolve_paths` (pure) makes them absolute when a file is loaded by `flowctl apply`,
`run`, `validate` or `dev`, so a flow behaves the same whichever directory the command
ran in, and what is stored says exactly what will be opened:

* ``file`` sources and sinks, and the ``parquet`` sink (a directory): ``config.path``;
* ``python`` nodes: ``config.python_path`` (directories the module is imported from,
  before the agent's ``--python-path``) defaults to the flow file's directory, so
  ``function: enrich:enrich`` finds ``enrich.py`` next to the flow file;
* programs (``binary:``, or ``command:`` without an image): a program with a ``/``
  (``./worker.sh``), and ``working_dir``, which defaults to the flow file's directory
  (so ``args: [worker.py]`` finds it);
* containers: the host side of ``volumes``.

:func:`missing_paths` (reads the file system) lists what does not exist on this machine,
for validation warnings: on another host it may well exist.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from flowstore.models import FlowSpec, Node


def _abs(base: Path, path: str) -> str:
    expanded = os.path.expanduser(path)
    return expanded if os.path.isabs(expanded) else str((base / expanded).resolve())


def _volume(base: Path, volume: str) -> str:
    host, sep, rest = volume.partition(":")
    if not sep or not (host.startswith(".") or "/" in host) or os.path.isabs(host):
        return volume  # a named volume, or already absolute
    return f"{_abs(base, host)}:{rest}"


def resolve_node(node: Node, base: Path) -> Node:
    config: dict[str, Any] = dict(node.config)
    update: dict[str, Any] = {}
    if node.type in ("file", "parquet") and isinstance(config.get("path"), str):
        config["path"] = _abs(base, config["path"])  # (a file; parquet's directory)
    if node.type == "python" and config.get("function"):
        dirs = config.get("python_path") or [str(base)]
        if isinstance(dirs, list):
            config["python_path"] = [_abs(base, d) if isinstance(d, str) else d for d in dirs]
    if config != node.config:
        update["config"] = config
    field, program = _host_program(node)
    if program is not None:
        if "/" in program and not os.path.isabs(program):
            update[field] = _abs(base, program)
        update["working_dir"] = _abs(base, node.working_dir or ".")
    if node.image and node.volumes:
        update["volumes"] = [_volume(base, v) for v in node.volumes]
    return node.model_copy(update=update) if update else node


def _host_program(node: Node) -> tuple[str, str | None]:
    """The field and value of a program run on this host: ``binary``, or a ``command``
    without an image (with an image, ``command`` is the container's entrypoint)."""
    if node.binary:
        return "binary", node.binary
    return "command", node.command if node.command and not node.image else None


def resolve_paths(spec: FlowSpec, base: Path) -> FlowSpec:
    """``spec`` with every relative path made absolute against ``base``."""
    nodes = [resolve_node(n, base) for n in spec.nodes]
    return spec.model_copy(update={"nodes": nodes})


def _module_found(function: str, dirs: list[str]) -> bool:
    if module_file(function, dirs) is not None:
        return True
    top = function.partition(":")[0].split(".")[0]
    return importlib.util.find_spec(top) is not None  # the top package only: runs nothing


def module_file(function: str, dirs: list[str]) -> Path | None:
    """The file of a ``module:function``'s module in ``dirs``, if it is there."""
    relative = Path(*function.partition(":")[0].split("."))
    for d in dirs:
        for candidate in (Path(d) / relative.with_suffix(".py"),
                          Path(d) / relative / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def python_modules(spec: FlowSpec) -> dict[int, Path]:
    """Per ``python`` node index: its module's file, when found in its python_path."""
    out = {}
    for i, node in enumerate(spec.nodes):
        function = node.config.get("function")
        dirs = node.config.get("python_path") or []
        if node.type == "python" and isinstance(function, str) and isinstance(dirs, list):
            found = module_file(function, [d for d in dirs if isinstance(d, str)])
            if found is not None:
                out[i] = found
    return out


def stamp_modules(spec: FlowSpec) -> FlowSpec:
    """``spec`` with each ``python`` node's ``config.module_hash`` set from its module's
    file (reads the files): re-applying after editing a module restarts its nodes."""
    import hashlib

    nodes = list(spec.nodes)
    for i, path in python_modules(spec).items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        nodes[i] = nodes[i].model_copy(update={"config": {**nodes[i].config,
                                                          "module_hash": digest}})
    return spec.model_copy(update={"nodes": nodes})


def missing_paths(spec: FlowSpec) -> list[tuple[int, str, str]]:
    """(node index, field, what) for each path of the (resolved) spec that does not exist
    on this machine."""
    out: list[tuple[int, str, str]] = []
    for i, node in enumerate(spec.nodes):
        path = node.config.get("path")
        if node.type == "file" and node.role == "source" and isinstance(path, str) \
                and not Path(path).exists():
            out.append((i, "config.path", f"file {path} does not exist"))
        function = node.config.get("function")
        if node.type == "python" and isinstance(function, str):
            dirs = [d for d in node.config.get("python_path") or [] if isinstance(d, str)]
            if not _module_found(function, dirs):
                out.append((i, "config.function", f"module {function.partition(':')[0]} is "
                            f"not in {', '.join(dirs) or 'the python path'}"))
        field, program = _host_program(node)
        if program is not None:
            if "/" in program and not Path(program).exists():
                out.append((i, field, f"{program} does not exist"))
            elif "/" not in program and " " not in program.strip() \
                    and shutil.which(program) is None:
                out.append((i, field, f"{program} is not on this machine's PATH"))
            if node.working_dir and not Path(node.working_dir).is_dir():
                out.append((i, "working_dir", f"directory {node.working_dir} does not exist"))
    return out
