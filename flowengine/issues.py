"""Validation issues, and the collector that records them where they point in the file.

:class:`ValidationIssue` (one problem, with a stable ``code``) and :class:`ValidationResult`
(all of them, errors and warnings) are what :func:`flowengine.validate.validate` returns;
both are importable from :mod:`flowengine.validate`. :class:`IssueCollector` is the base
of the checkers: it turns a node or connection index into its path (``nodes[2]``, or with a
:class:`~flowstore.located.SourceMap` ``spec.processors[1]``, line 14) and records issues.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from flowstore.models import FlowSpec

if TYPE_CHECKING:
    from flowstore.located import SourceMap

Severity = Literal["error", "warning"]

#: The file section of each role.
SECTION = {"source": "sources", "processor": "processors", "sink": "sinks"}


class ValidationIssue(BaseModel):
    """One problem: ``code`` is stable (scripts match on it), ``message`` is for people."""

    code: str
    severity: Severity
    node: str | None = None
    port: str | None = None
    message: str
    suggestion: str | None = None
    path: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        where += f"{self.path}: " if self.path else ""
        hint = f" ({self.suggestion})" if self.suggestion else ""
        return f"{where}{self.message}{hint} [{self.code}]"


class ValidationResult(BaseModel):
    """``status`` is ``errors`` if any error, else ``warnings`` if any warning, else ``valid``."""

    status: Literal["valid", "warnings", "errors"] = "valid"
    errors: list[ValidationIssue] = Field(default_factory=list)
    warnings: list[ValidationIssue] = Field(default_factory=list)

    @classmethod
    def from_issues(cls, issues: list[ValidationIssue]) -> ValidationResult:
        errors = [i for i in issues if i.severity == "error"]
        warnings = [i for i in issues if i.severity == "warning"]
        status = "errors" if errors else "warnings" if warnings else "valid"
        return cls(status=status, errors=errors, warnings=warnings)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def issues(self) -> list[ValidationIssue]:
        return [*self.errors, *self.warnings]

    def codes(self) -> list[str]:
        return [i.code for i in self.issues]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def suggest(word: str, choices: list[str] | set[str], otherwise: str | None = None) -> str | None:
    """'did you mean ...?' with the closest names (difflib), else ``otherwise``."""
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.5)
    if not close:
        return otherwise
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


class IssueCollector:
    """Records the issues of one flow, each with its path and line in the source."""

    def __init__(self, spec: FlowSpec, source: SourceMap | None) -> None:
        self.spec = spec
        self.source = source
        self.issues: list[ValidationIssue] = []
        self.node_path = self._node_paths()
        self.ids = [n.id for n in spec.nodes]

    def _node_paths(self) -> list[str]:
        """Each node's path in the file: where the loader found its id (exact, also when
        entries before it were left out for schema errors); for a second node of the
        same id, its position among the nodes of its role."""
        seen: dict[str, int] = {}
        ids: set[str] = set()
        out = []
        for i, node in enumerate(self.spec.nodes):
            path = f"nodes[{i}]"
            derived = None
            if node.role:
                k = seen[node.role] = seen.get(node.role, -1) + 1
                derived = f"spec.{SECTION[node.role]}[{k}]"
            if self.source is not None:
                found = self.source.node_paths.get(node.id) if node.id not in ids else None
                if found is not None:
                    path = found
                elif derived and derived in self.source.lines:
                    path = derived
            ids.add(node.id)
            out.append(path)
        return out

    def conn_path(self, j: int) -> str:
        if self.source is not None and j < len(self.source.connection_paths):
            return self.source.connection_paths[j]
        return f"connections[{j}]"

    def add(self, code: str, message: str, *, severity: Severity = "error",
            node: str | None = None, port: str | None = None,
            suggestion: str | None = None, path: str | None = None) -> None:
        self.issues.append(ValidationIssue(
            code=code, severity=severity, node=node, port=port, message=message,
            suggestion=suggestion, line=self.source.line_at(path) if self.source else None,
            path=self.source.in_file(path) if self.source and path else path,
        ))
