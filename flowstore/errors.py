"""Typed errors shared by every package; the CLI maps each to a sentence and an exit code."""

from __future__ import annotations


class FlowctlError(Exception):
    """Base of the errors a user can cause and fix."""

    exit_code = 1


class FlowNotFound(FlowctlError):
    def __init__(self, name: str) -> None:
        super().__init__(f"flow '{name}' not found (see `flowctl list`)")
        self.name = name


class FlowExists(FlowctlError):
    def __init__(self, name: str) -> None:
        super().__init__(f"flow '{name}' already exists (use `flowctl apply` to update it)")
        self.name = name


class RevisionConflict(FlowctlError):
    """A compare-and-set lost: someone else wrote the record since it was read."""

    def __init__(self, key: str, expected: int) -> None:
        super().__init__(
            f"'{key}' was changed by someone else (expected KV revision {expected}); "
            "nothing was written: read it again and retry"
        )
        self.key = key
        self.expected = expected


class InvalidTransition(FlowctlError):
    def __init__(self, flow: str, action: str, state: str, hint: str = "") -> None:
        msg = f"cannot {action} flow '{flow}': it is {state}"
        super().__init__(f"{msg}; {hint}" if hint else msg)
        self.flow = flow
        self.action = action
        self.state = state


class RevisionNotFound(FlowctlError):
    def __init__(self, name: str, revision: int) -> None:
        super().__init__(
            f"flow '{name}' has no revision {revision} in its history (see `flowctl history`)"
        )


class BrokenRecord(FlowctlError):
    """A KV value that is not a flowctl record (someone's `nats kv put`)."""

    def __init__(self, bucket: str, key: str, reason: str) -> None:
        super().__init__(
            f"{bucket} key {key!r} does not hold a flowctl record ({reason}); put a valid "
            f"one back or remove it: nats kv del {bucket} {key}")
        self.bucket = bucket
        self.key = key
        self.reason = reason
