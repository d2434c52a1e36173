"""Global options anywhere on the command line, as kubectl and natscli allow.

``flowctl status --nats-url URL`` and ``flowctl -o json status`` mean what they say:
before the command line reaches typer, global options found after the subcommand are
moved before it, and ``-o``/``--output`` found before it are moved after it. A pure
function of the argument list.
"""

from __future__ import annotations

#: The app's global options that take a value, and those that do not.
GLOBAL_WITH_VALUE = frozenset({
    "--nats-url", "--creds", "--user", "--password", "--token", "--tls-ca", "--tls-cert",
    "--tls-key", "--kv-replicas",
})
GLOBAL_FLAGS = frozenset({"--log-json"})
#: Options of (most) subcommands that users also put before the subcommand.
COMMAND_WITH_VALUE = frozenset({"-o", "--output"})


def _name(token: str) -> str:
    return token.split("=", 1)[0] if token.startswith("--") else token


def _takes(token: str, names: frozenset[str]) -> int:
    """How many tokens an option starting at ``token`` spans if it is one of ``names``
    (0: not one of them)."""
    name = _name(token)
    if name not in names:
        return 0
    return 1 if "=" in token else 2


def hoist_globals(argv: list[str]) -> list[str]:
    """``argv`` (without the program name) with global options before the subcommand
    and ``-o`` after it."""
    before: list[str] = []
    moved_after: list[str] = []
    i = 0
    while i < len(argv):  # up to the subcommand
        token = argv[i]
        if not token.startswith("-"):
            break
        if token in ("-h", "--help", "--version"):
            return argv
        if n := _takes(token, COMMAND_WITH_VALUE):
            moved_after += argv[i:i + n]
        elif n := _takes(token, GLOBAL_WITH_VALUE):
            before += argv[i:i + n]
        else:
            n = 1
            before.append(token)
        i += n
    if i >= len(argv):
        return argv
    command, rest = argv[i], argv[i + 1:]
    after: list[str] = []
    j = 0
    while j < len(rest):
        token = rest[j]
        if token == "--":
            after += rest[j:]
            break
        if n := _takes(token, GLOBAL_WITH_VALUE):
            before += rest[j:j + n]
        elif token in GLOBAL_FLAGS:
            n = 1
            before.append(token)
        else:
            n = 1
            after.append(token)
        j += n
    return [*before, command, *moved_after, *after]


def subcommand(argv: list[str]) -> str | None:
    """The subcommand ``argv`` (global options first, as :func:`hoist_globals` leaves
    them) runs; None when there is none."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += _takes(argv[i], GLOBAL_WITH_VALUE | COMMAND_WITH_VALUE) or 1
    return argv[i] if i < len(argv) else None
