"""What ``run`` and ``dev`` show of the programs and containers they run: each output line
(of the program's stdout or stderr) in the terminal, prefixed ``[node.replica]``, unless
``-q``. The embedded agents hand the lines over (``AgentSettings.echo_output``) instead of
logging them; they are published for ``flowctl logs`` either way."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Hide the output lines of the programs and containers (shown "
    "prefixed \\[node.replica] otherwise).")]


def show_program_line(line: str, stream: str) -> None:
    """A program's output line (of its stdout or stderr), on stderr: stdout carries what
    the stdout sinks print, so it stays pipeable (called from the data thread)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
