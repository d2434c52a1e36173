"""Sources keep their position across config changes that leave what they read alone,
and `flowctl apply --reset NODE` starts one over.

The decisions (what a source reads, what it keeps of a stored checkpoint, which nodes a
reset names) are tested with plain data; the checkpoint against a real nats-server; and
the whole story drives the `flowctl` executable against a real agent: count 10 -> 20 ->
rollback gives 20 lines, a reset starts the source over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from componentmanager.components.sources import FileSource, GenerateSource, NatsSource
from componentmanager.runners.checkpoint import (
    Resume,
    SourceCheckpoint,
    config_fingerprint,
    position_identity,
    resume_decision,
)
from flowengine.resets import CannotReset, reset_targets
from flowstore.loader import parse_flow
from flowstore.models import ComponentConfig
from flowstore.nats import CHECKPOINTS_BUCKET, open_bucket
from tests.agents import (
    FLOWCTL,
    all_in_state,
    flow_yaml,
    read_lines,
    statuses,
    wait_until,
)
from tests.conftest import run_cli


def _cfg(type_: str = "generate", reset: str | None = None, **config: object) -> ComponentConfig:
    return ComponentConfig(flow="f", node="gen", type=type_, config=config, queue="q",
                           reset=reset)


def _identity(cfg: ComponentConfig, source: type) -> str:
    return position_identity(cfg, source.position_fields)


def test_what_a_source_reads_leaves_out_how_it_reads_it() -> None:
    gen = _identity(_cfg(count=10, rate=None, template={"a": 1}), GenerateSource)
    assert gen == _identity(_cfg(count=20, rate=5.0, template={"a": 1}), GenerateSource)
    assert gen != _identity(_cfg(count=10, rate=None, template={"a": 2}), GenerateSource)
    assert gen != _identity(_cfg(count=10, template={"a": 1}, reset="r1"), GenerateSource)
    file = _identity(_cfg("file", path="/a", format="lines", follow=False), FileSource)
    assert file == _identity(_cfg("file", path="/a", format="jsonl", follow=True), FileSource)
    assert file != _identity(_cfg("file", path="/b", format="lines", follow=False), FileSource)
    nats = _identity(_cfg("nats", subject="a.b", queue=None), NatsSource)
    assert nats == _identity(_cfg("nats", subject="a.b", queue="q"), NatsSource)
    assert nats != _identity(_cfg("nats", subject="a.c", queue=None), NatsSource)
    # a source that declares nothing: every config field is what it reads
    assert position_identity(_cfg("x", a=1), None) != position_identity(_cfg("x", a=2), None)


def test_a_checkpoint_is_kept_for_the_same_reads_completed_only_for_the_same_config() -> None:
    old, new = _cfg(count=10), _cfg(count=20)
    reads = _identity(old, GenerateSource)
    record = {"position": 10, "events": 10, "completed": True, "epoch": "e1",
              "config": config_fingerprint(old), "reads": reads}
    assert resume_decision(record, reads, config_fingerprint(old)) == Resume(10, 10, "e1", True)
    assert resume_decision(record, reads, config_fingerprint(new)) == Resume(10, 10, "e1", False)
    assert resume_decision(record, "another", config_fingerprint(old)) is None
    legacy = {k: v for k, v in record.items() if k != "reads"}  # written before identities
    assert resume_decision(legacy, reads, config_fingerprint(old)) == Resume(10, 10, "e1", True)
    assert resume_decision(legacy, reads, config_fingerprint(new)) is None
    for junk in (None, [], "x", {**record, "events": "many"}):
        assert resume_decision(junk, reads, config_fingerprint(old)) is None


async def test_a_changed_count_keeps_position_count_and_epoch_a_reset_does_not(nc) -> None:
    first = SourceCheckpoint(nc, _cfg(count=10), 0, lambda: 10,
                             position_fields=GenerateSource.position_fields)
    await first.load()
    await first.keep_epoch("e1")  # (exactly-once)
    first.advance(10, 10)
    await first.complete(10)
    kv = await open_bucket(nc, CHECKPOINTS_BUCKET)
    assert json.loads((await kv.get(first.key)).value)["completed"] is True

    async def loaded(cfg: ComponentConfig) -> SourceCheckpoint:
        checkpoint = SourceCheckpoint(nc, cfg, 0, lambda: 0,
                                      position_fields=GenerateSource.position_fields)
        await checkpoint.load()
        return checkpoint

    more = await loaded(_cfg(count=20))
    assert (more.position, more.events_before, more.epoch, more.completed) == (10, 10, "e1",
                                                                              False)
    again = await loaded(_cfg(count=10))
    assert again.completed and again.position == 10
    for other in (_cfg(count=20, template={"x": 1}), _cfg(count=10, reset="r1")):
        fresh = await loaded(other)
        assert (fresh.position, fresh.events_before, fresh.epoch, fresh.completed) == (
            None, 0, None, False)


FLOW = flow_yaml("f", """\
  sources:
    - {id: gen, type: generate, config: {count: 3}}
  processors:
    - {id: keep, type: filter, inputs: [gen], config: {where: "seq > 0"}}
    - {id: tally, type: window, inputs: [keep], config: {size: 1s, key: seq}}
  sinks:
    - {id: out, type: stdout, inputs: [tally]}
""")


def test_a_reset_names_nodes_that_keep_a_position() -> None:
    spec = parse_flow(FLOW).spec
    assert reset_targets([("f", spec)], ["tally", "gen", "gen"]) == {"f": ["tally", "gen"]}
    assert reset_targets([("f", spec), ("g", spec)], []) == {"f": [], "g": []}
    with pytest.raises(CannotReset, match=r"--reset nope: flow 'f' has no node 'nope' "
                                          r"\(nodes it can reset: gen, tally\)"):
        reset_targets([("f", spec)], ["nope"])
    with pytest.raises(CannotReset, match="node 'keep' of flow 'f' is a processor that keeps"):
        reset_targets([("f", spec)], ["keep"])
    with pytest.raises(CannotReset, match="none of the flows f, g has a node 'nope'"):
        reset_targets([("g", spec), ("f", spec)], ["nope"])
    assert CannotReset("x", "").exit_code == 2


# ------------------------------------------------------------------- the flowctl executable


def _flow_file(path: Path, out: Path, count: int, delivery: str) -> None:
    path.write_text(flow_yaml("counted", f"""\
  sources:
    - {{id: gen, type: generate, config: {{count: {count}}}}}
  sinks:
    - {{id: out, type: file, inputs: [gen], config: {{path: "{out}"}}}}
""", delivery))


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_count_10_then_20_then_rollback_gives_20_lines_and_reset_starts_over(
        nc, nats_url, agents, tmp_path, delivery) -> None:
    assert Path(FLOWCTL).exists()
    agents("a1")
    flow, out = tmp_path / "flow.yaml", tmp_path / "out.jsonl"

    def cli(*args: str, code: int = 0) -> str:
        done = run_cli(*args, nats_url=nats_url)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        return done.stdout + done.stderr

    async def settled(revision: int, emitted: int) -> None:
        """The source completed at ``revision`` having emitted ``emitted`` in all, and
        the sink wrote all of it."""
        async def check() -> bool:
            st = await statuses(nc, "counted")
            gen, sink = st.get("counted.gen.0"), st.get("counted.out.0")
            return bool(gen and sink and gen.state.value == "completed"
                        and gen.flow_revision == revision and gen.counters.out == emitted
                        and sink.counters.out == emitted)
        await wait_until(check, 30, f"{emitted} events at revision {revision}")

    def seqs() -> list[int]:
        return sorted(json.loads(line)["seq"] for line in read_lines(out))

    _flow_file(flow, out, 10, delivery)
    said = cli("apply", "-f", str(flow), "--reset", "gen")
    assert "--reset: flow/counted is not deployed, so it keeps no position" in said
    cli("apply", "-f", str(flow), "--start")
    await wait_until(lambda: all_in_state(nc, "counted", ["counted.gen.0"], "completed"), 30,
                     "the source completed")
    await settled(1, 10)
    _flow_file(flow, out, 20, delivery)
    cli("apply", "-f", str(flow))
    await settled(2, 20)
    assert seqs() == list(range(20))  # 10 more, not 20 again
    said = cli("rollback", "counted")
    assert "now revision 3" in said
    await settled(3, 20)
    assert seqs() == list(range(20))  # back to count 10: it had emitted those already

    said = cli("apply", "-f", str(flow), "--reset", "gen")  # (count 20 again)
    assert "config counted.gen reset: it starts over" in said
    await settled(4, 40)
    assert seqs() == sorted([*range(20), *range(20)])
    cli("rollback", "counted")  # the reset is not undone, nor done again
    await settled(5, 40)
    assert seqs() == sorted([*range(20), *range(20)])
    said = cli("apply", "-f", str(flow), "--reset", "nope", code=2)
    assert "--reset nope: flow 'counted' has no node 'nope' (nodes it can reset: gen)" in said
    said = cli("apply", "-f", str(flow), "--reset", "out", code=2)
    assert "node 'out' of flow 'counted' is a sink" in said
    cli("delete", "counted", "--force")
