"""Typed errors of the flow engine (the shared ones live in :mod:`flowstore.errors`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowstore.errors import FlowctlError

if TYPE_CHECKING:
    from flowengine.validate import ValidationResult


class ValidationFailed(FlowctlError):
    """The flow has validation errors; nothing was written. ``result`` lists every issue."""

    def __init__(self, result: ValidationResult, flow: str | None = None,
                 file: str | None = None) -> None:
        self.result = result
        self.flow = flow
        what = f"flow '{flow}'" if flow else "the flow"
        what = f"{file}: {what}" if file else what
        lines = "\n".join(f"  {issue}" for issue in result.errors)
        super().__init__(f"{what} is not valid ({len(result.errors)} error(s)):\n{lines}")


class ConfigsNotConverged(FlowctlError):
    """The component configs of a flow kept changing under us (someone else writes them).

    Raised after several attempts; what was written so far is consistent and running the
    same command again continues from there.
    """

    def __init__(self, flow: str, action: str, keys: list[str]) -> None:
        shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
        super().__init__(
            f"cannot {action} flow '{flow}': its component configs kept changing while being "
            f"written ({shown}); run the command again"
        )
        self.flow = flow
        self.action = action
        self.keys = keys
