"""``flowctl dev flow.yaml``: the fast inner loop.

Like ``flowctl run`` (embedded NATS and agents, the flow created, started, and removed
at the end), plus: the flow file and the Python modules its ``python`` nodes import are
watched (their modification times, every :data:`POLL_S`), and on save the flow is
re-applied live: what changed is printed (``~ config dev.enrich``), only the changed
nodes restart, the embedded server and everything else keep running. A file that does
not load or validate, or a module that does not compile, is shown with its line and the
last good version keeps running. Inline ``code:`` is allowed (your own machine): it is
part of the flow file, so an edited ``custom`` source, processor or sink restarts alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.embedded import Embedded, load_to_run, pinned_to_run, quiet_agents
from cli.errors import other_error, own_error, run
from cli.interrupt import DRAIN_TIMEOUT_S, DrainOpt
from cli.main import app, print_changes, valid_name
from cli.output import info
from cli.programs import QuietOpt
from cli.ui import UiOpt, UiPortOpt

#: How often the files are looked at, seconds.
POLL_S = 0.3


def _watched(file: Path, loaded: Any) -> dict[Path, float]:
    """The flow file and its python modules, with their modification times."""
    from flowstore.paths import python_modules

    paths = [file, *python_modules(loaded.spec).values()]
    out = {}
    for path in paths:
        try:
            out[path] = path.stat().st_mtime
        except OSError:
            out[path] = 0.0
    return out


def _compile_errors(paths: list[Path]) -> list[str]:
    """Python files among ``paths`` that do not compile: 'file, line N: message'."""
    errors = []
    for path in paths:
        if path.suffix != ".py":
            continue
        try:
            compile(path.read_bytes(), str(path), "exec")
        except SyntaxError as exc:
            errors.append(f"{path}, line {exc.lineno}: {exc.msg}")
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    return errors


async def reload_on_save(emb: Embedded, file: Path, seen: dict[Path, float]) -> None:
    """Re-apply the flow whenever its file or one of its modules changes from ``seen``
    (taken when the flow was loaded, so a save during the start-up counts)."""
    from cli.files import check

    while True:
        await asyncio.sleep(POLL_S)
        now = _watched(file, emb.loaded)
        if now == seen:
            continue
        changed = [p for p in now if now.get(p) != seen.get(p)]
        seen = now
        names = ", ".join(p.name for p in changed)
        broken = _compile_errors(changed)
        if broken:
            info(f"dev: {names} changed but does not compile; the last good version keeps "
                 "running:\n  " + "\n  ".join(broken))
            continue
        try:
            loaded, result = check(str(file), local=True)[0]
        except Exception as exc:  # not YAML, unreadable: say so, keep running
            info(f"dev: {file} cannot be loaded; the last good version keeps running:\n{exc}")
            continue
        if not result.ok:
            lines = "\n  ".join(str(issue) for issue in result.errors)
            info(f"dev: {file} has errors; the last good version keeps running:\n  {lines}")
            continue
        if loaded.name != emb.loaded.name:
            info(f"dev: the flow's name changed to {loaded.name!r}; dev keeps running "
                 f"{emb.name!r} (restart dev to switch)")
        loaded.name = emb.name
        try:
            result = await emb.engine.apply(emb.name, pinned_to_run(loaded.spec, emb.run_id))
        except Exception as exc:
            sentence, _ = own_error(exc) or other_error(exc)
            info(f"dev: could not apply {file}: {sentence}")
            continue
        emb.loaded = loaded
        seen = _watched(file, loaded)
        verb = "configured" if result.changes.spec_changed else "unchanged"
        info(f"dev: {names} changed: flow/{emb.name} {verb} (revision "
             f"{result.flow.revision})")
        print_changes(result.changes)


@app.command()
def dev(
    file: Annotated[Path, typer.Argument(help="The flow file to run and watch.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Run under this name, not metadata.name.",
                                 callback=valid_name("flow"))
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Agent logs.")] = False,
    quiet: QuietOpt = False,
    allow_inline_code: Annotated[bool, typer.Option(
        "--allow-inline-code/--no-inline-code", help="Run inline `code:` (default: yes).")
    ] = True,
    commands: Annotated[bool, typer.Option(
        "--commands/--no-commands", help="Run `command:` and `image:` nodes (default: yes).")
    ] = True,
    ui: UiOpt = False,
    ui_port: UiPortOpt = 8080,
    drain_timeout: DrainOpt = DRAIN_TIMEOUT_S,
) -> None:
    """Run a flow and re-apply it live whenever its file or Python modules change.

    Like `flowctl run`, plus: on save the flow is re-applied (only changed nodes
    restart); a broken file or module is shown with its line and the last good version
    keeps running. Ctrl+C stops everything: the sources first, then the rest once it
    drained (--drain-timeout); exit 130 (143 after SIGTERM).

    Example: flowctl dev examples/enrich.yaml
    """
    quiet_agents(verbose)

    async def go() -> int:
        loaded = load_to_run(file, name)
        seen = _watched(file, loaded)
        async with Embedded(loaded, allow_inline_code, commands, "dev",
                            ui_port=ui_port if ui else None,
                            drain_timeout=drain_timeout, echo=not quiet) as emb:
            info(f"dev: watching {file} and the modules it imports (Ctrl+C stops)")
            watcher = asyncio.create_task(reload_on_save(emb, file, seen))
            try:
                code = await emb.watch(False, 0)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        return code or emb.exit_code

    raise typer.Exit(run(go()))
