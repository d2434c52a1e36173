"""Commands that read flow files: validate, apply, up, diff.

``-f`` takes a file, ``-`` (standard input) or a directory (every ``*.yaml``, ``*.yml``
and ``*.json`` in it, sorted by name, not recursive), and may be repeated. Every file is
loaded and checked before anything is written: one bad file applies nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import EXIT_FAILED, run
from cli.main import OutputOpt, app, engine_session, print_changes
from cli.output import Format, info, show

FLOW_SUFFIXES = (".yaml", ".yml", ".json")

FilesOpt = Annotated[
    list[str],
    typer.Option("-f", "--file", help="A flow file, a directory of them, or - for stdin "
                 "(repeatable)."),
]


def flow_paths(files: list[str]) -> list[str]:
    """The flow files ``-f`` names: directories expanded, ``-`` kept."""
    from flowstore.errors import FlowctlError

    out: list[str] = []
    for name in files:
        path = Path(name)
        if name != "-" and path.is_dir():
            found = sorted(str(p) for p in path.iterdir()
                           if p.suffix in FLOW_SUFFIXES and p.is_file())
            if not found:
                raise FlowctlError(f"{name}: no flow files (*.yaml, *.yml, *.json) in it")
            out += found
        else:
            out.append(name)
    return out


def check(name: str, local: bool = False) -> list[tuple[Any, Any]]:
    """The flows of a file (``-``: standard input; several YAML documents or a list of
    flow files give several), each loaded leniently and validated: (LoadedFlow or None,
    ValidationResult with its schema, config and graph problems together). Raises
    FlowFileError only when the file cannot be read or parsed at all. ``local``: the flow
    runs on this machine (see :func:`_path_issues`)."""
    import dataclasses

    from flowengine import validate_loaded
    from flowstore.loader import parse_flow_lenient, read_flow_text, split_documents
    from flowstore.paths import resolve_paths, stamp_modules

    if name == "-":
        text, label, base = sys.stdin.read(), "<stdin>", Path.cwd()
    else:
        text, label, base = read_flow_text(name), name, Path(name).resolve().parent
    out = []
    for doc in split_documents(text, label):
        loaded, problems = parse_flow_lenient(doc, label)
        if loaded is None:
            out.append((None, validate_loaded(None, problems)))
            continue
        loaded = dataclasses.replace(loaded,
                                     spec=stamp_modules(resolve_paths(loaded.spec, base)))
        out.append((loaded, validate_loaded(loaded, problems,
                                            extra=_path_issues(loaded, local))))
    return out


#: The field of a python node whose module :func:`flowstore.paths.missing_paths` looks for.
MODULE_FIELD = "config.function"


def _path_issues(loaded: Any, local: bool) -> list[Any]:
    """An issue for each path of the flow that does not exist on this machine: a warning
    (on the agents' hosts it may well exist), except, with ``local`` (``run``, ``dev``,
    ``up``: the flow runs here), a python node's module: an error (``module_not_found``),
    as it would fail to start and restart over and over."""
    from flowengine import ValidationIssue
    from flowstore.paths import missing_paths

    out = []
    for index, field, what in missing_paths(loaded.spec):
        node = loaded.spec.nodes[index]
        where = loaded.source.node_paths.get(node.id)
        path = f"{where}.{field}" if where else None
        refused = local and field == MODULE_FIELD
        out.append(ValidationIssue(
            code="module_not_found" if refused else "path_not_found",
            severity="error" if refused else "warning", node=node.id,
            path=loaded.source.in_file(path) if path else None,
            line=loaded.source.line_at(path),
            message=f"node '{node.id}': {what}", suggestion=(
                "put the module there or name its directory in config.python_path: this "
                "command runs it on this machine; `flowctl apply` to agents elsewhere only "
                "warns"
                if refused else "relative paths resolve against the flow file's directory")))
    return out


def problems_of(exc: Any) -> Any:
    """A FlowFileError (unreadable, not YAML, not a flow) as a ValidationResult."""
    from flowengine import validate_loaded

    return validate_loaded(None, exc.problems)


def load_checked(files: list[str], local: bool = False) -> list[Any]:
    """Every flow of ``files``, each validated locally (errors point at file lines);
    raises on the first file with errors, before anything was written. ``local``: the
    flows run on this machine (:func:`check`)."""
    from flowengine import ValidationFailed
    from flowstore.errors import FlowctlError

    flows = []
    seen: dict[str, str] = {}
    for name, (loaded, result) in ((n, r) for n in flow_paths(files) for r in check(n, local)):
        if not result.ok:
            raise ValidationFailed(result, loaded.name if loaded else None,
                                   "<stdin>" if name == "-" else name)
        for warning in result.warnings:
            info(f"{'<stdin>' if name == '-' else name}: warning: {warning}")
        if loaded.name in seen:
            raise FlowctlError(f"{loaded.file}: flow {loaded.name!r} is also defined in "
                               f"{seen[loaded.name]}; names must be unique")
        seen[loaded.name] = loaded.file
        flows.append(loaded)
    return flows


@app.command()
def validate(
    file: Annotated[str, typer.Argument(help="A flow file (YAML or JSON), a directory of "
                                        "them, or - for stdin.")],
    output: OutputOpt = Format.table,
) -> None:
    """Check a flow file without touching NATS; exit 1 on errors.

    Schema, config and graph problems are reported together, each with its line and path;
    -o json gives the same for every kind of problem (even a file that is not YAML).

    Example: flowctl validate examples/hello.yaml -o json
    """
    from flowstore.loader import FlowFileError

    async def go() -> int:
        results = []
        for name in flow_paths([file]):
            try:
                results += [(name, result) for _, result in check(name)]
            except FlowFileError as exc:
                results.append((name, problems_of(exc)))
        if not output.tabular:
            data = [r.to_dict() for _, r in results]
            show(data[0] if len(data) == 1 else data, output)
        else:
            for name, result in results:
                for issue in [*result.errors, *result.warnings]:
                    print(f"{name}: {issue}")
                print(f"{name}: {result.status} ({len(result.errors)} error(s), "
                      f"{len(result.warnings)} warning(s))")
        return 0 if all(r.ok for _, r in results) else 1

    raise typer.Exit(run(go()))


async def _bring_up(engine: Any, name: str) -> list[str]:
    """Deploy and start ``name`` as far as needed; the steps taken."""
    steps = []
    record = await engine.flows.get(name)
    if record.state == "not_deployed":
        await engine.deploy(name)
        steps.append("deployed")
    if record.state != "running":
        await engine.start(name)
        steps.append("started")
    return steps


def _apply(files: list[str], output: Format, start: bool, local: bool = False,
           reset: list[str] | None = None) -> None:
    async def go() -> None:
        from flowengine.resets import reset_targets

        flows = load_checked(files, local)
        targets = reset_targets([(f.name, f.spec) for f in flows], reset or [])
        results = []
        async with await engine_session() as engine:
            for loaded in flows:
                result = await engine.apply(loaded.name, loaded.spec, targets[loaded.name])
                steps = await _bring_up(engine, loaded.name) if start else []
                results.append((result, steps))
        data = []
        for result, steps in results:
            flow, changes = result.flow, result.changes
            data.append({"flow": flow.name, "created": result.created,
                         "revision": flow.revision, "state": flow.state.value,
                         "steps": steps, "changes": changes.to_dict()})
            if not output.tabular:
                continue
            verb = "created" if result.created else ("configured" if changes.spec_changed
                                                      else "unchanged")
            then = f"; {' and '.join(steps)}" if steps else ""
            state = "running" if "started" in steps else flow.state.value
            print(f"flow/{flow.name} {verb} (revision {flow.revision}, {state}){then}")
            if changes.validation is not None:
                for warning in changes.validation.warnings:
                    info(f"  warning: {warning}")
            print_changes(changes)
            if targets[flow.name] and not changes.reset:
                info(f"  --reset: flow/{flow.name} is not deployed, so it keeps no position "
                     "(it starts from the beginning when deployed)")
        if not output.tabular:
            show(data[0] if len(data) == 1 else data, output)

    run(go())


@app.command()
def apply(
    file: FilesOpt,
    start: Annotated[bool, typer.Option("--start", help="Then deploy and start it.")] = False,
    reset: Annotated[list[str] | None, typer.Option(
        "--reset", metavar="NODE", help="Start this source (or window/join) over instead of "
        "going on from its position (repeatable).")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create or update flows from files (validated first); --start also runs them.

    A deployed flow picks up the change live; each flow's revision is printed.

    A source goes on from its position when what it reads stays the same
    (a file's path, a subject, a generate's template): count 10 -> 20 emits
    10 more. --reset NODE starts it over.

    Example: flowctl apply -f examples/hello.yaml --start
    """
    _apply(file, output, start, reset=reset)


@app.command()
def up(file: FilesOpt, output: OutputOpt = Format.table) -> None:
    """Apply, deploy and start in one step (`apply --start`); idempotent.

    A python node whose module is not found on this machine is an error here (`apply`
    only warns: the agents may run on other hosts).

    Example: flowctl up -f examples/hello.yaml
    """
    _apply(file, output, True, local=True)


@app.command()
def diff(
    file: FilesOpt,
    exit_code: Annotated[bool, typer.Option(
        "--exit-code", help="Exit 1 when something would change (as git diff does).")
    ] = False,
) -> None:
    """Show what `flowctl apply -f` would change, as a unified diff.

    Each stored flow (as `get -o yaml` prints it) against the file; new flows are shown
    whole. Exit 0 (1 with --exit-code when something would change).

    Example: flowctl diff -f orders.yaml
    """
    import difflib

    import yaml

    from flowstore.errors import FlowNotFound
    from flowstore.flowfile import flow_document

    def text(doc: dict[str, Any] | None) -> list[str]:
        if doc is None:
            return []
        return yaml.safe_dump({k: v for k, v in doc.items() if k != "status"},
                              sort_keys=False).splitlines(keepends=True)

    async def go() -> int:
        flows = load_checked(file)
        changed = 0
        async with await engine_session() as engine:
            for loaded in flows:
                try:
                    stored = (await engine.flows.get(loaded.name)).model_dump(mode="json")
                    old = flow_document(stored)
                except FlowNotFound:
                    old = None
                new = flow_document({"name": loaded.name,
                                     "spec": loaded.spec.model_dump(mode="json")})
                lines = list(difflib.unified_diff(
                    text(old), text(new), f"flow/{loaded.name} (stored)"
                    if old else "/dev/null", f"flow/{loaded.name} ({loaded.file})"))
                if lines:
                    changed += 1
                    sys.stdout.writelines(lines)
        info(f"{changed} of {len(flows)} flow(s) would change")
        return EXIT_FAILED if exit_code and changed else 0

    raise typer.Exit(run(go()))
