"""Where things are in a flow file: located problems and the map from a loaded flow back
to the file's lines and paths.

A flow is checked in the shape of the long form (``spec.processors[0].config.code``);
a file written otherwise (the short form, ``code:`` beside ``type:``) keeps
:attr:`SourceMap.renames`, so every problem is told with the path the file has
(``process[0].code``) and its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem of a file: ``code`` is stable (invalid_yaml, not_a_flow, unreadable,
    unknown_field, missing_field, invalid_field)."""

    path: str
    message: str
    line: int | None = None
    code: str = "invalid_field"
    suggestion: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        hint = f" ({self.suggestion})" if self.suggestion else ""
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}{text}{hint}"


class FlowFileError(Exception):
    """A flow file that cannot be loaded. ``problems`` lists every located problem."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{file}: {len(problems)} problem(s):\n{lines}")


def renamed(path: str, renames: list[tuple[str, str]]) -> str:
    """``path`` with each rule (prefix, its name in the file) applied in order, once."""
    for old, new in renames:
        if path == old or path.startswith((old + ".", old + "[")):
            rest = path[len(old):]
            path = (new + rest) if new else rest.lstrip(".")
    return path


@dataclass
class SourceMap:
    """Where each node (by id) and connection (by index) came from in the file.
    ``renames``: (path as checked, path in the file) prefixes, applied in order."""

    node_paths: dict[str, str] = field(default_factory=dict)
    connection_paths: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)
    #: ids of the entries left out for their schema problems (reported already)
    left_out: set[str] = field(default_factory=set)
    renames: list[tuple[str, str]] = field(default_factory=list)

    def line(self, path: str | None) -> int | None:
        return self.lines.get(path) if path else None

    def in_file(self, path: str) -> str:
        """The path as the file writes it."""
        return renamed(path, self.renames)

    def line_at(self, path: str | None) -> int | None:
        """The line of ``path`` (as checked), else of the nearest enclosing path."""
        probe = self.in_file(path) if path else ""
        while probe:
            line = self.lines.get(probe)
            if line is not None:
                return line
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return None


def path_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
