"""How long the reading commands take from the shell, against a local server.

    python benchmarks/cli_latency.py [--rounds 9] [--before DIR]

Starts a nats-server and one real `flowctl agent`, creates and starts the example flow
``hello`` with the `flowctl` executable, then times each command as a user runs it (a
new process each time, output discarded): ``flowctl --help``, ``list``, ``status hello``,
``get hello``, ``agents``. The baseline, measured in the same rounds, is ``python -c
pass``: the cost of starting any Python program on this machine. Each round runs every
command once, in turn, so a busy moment of the machine touches all of them alike.
Printed per command: the wall-clock median, min and max, the median less the baseline's,
the median CPU time (user + system: what the command itself costs, nearly unchanged by
other load on the machine, where the wall clock is not) and the target (wall, median).
``--before DIR`` also times each command with the code of DIR first on ``PYTHONPATH``
(a checkout of an older commit), in the same rounds: a before/after under one load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import FLOWCTL, start_agent, stop_all  # noqa: E402
from flowstore.server import EmbeddedNats  # noqa: E402

#: (label, argv after ``flowctl --nats-url URL``, target median in seconds).
COMMANDS: list[tuple[str, list[str], float]] = [
    ("flowctl --help", ["--help"], 0.15),
    ("flowctl list", ["list"], 0.25),
    ("flowctl status hello", ["status", "hello"], 0.25),
    ("flowctl get hello", ["get", "hello"], 0.25),
    ("flowctl agents", ["agents"], 0.25),
]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one process from start to exit; a failure ends the run."""
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return took, _cpu() - cpu


def prepare(url: str) -> None:
    """The example flow, created, deployed and started through the CLI."""
    flow = str(ROOT / "examples" / "hello.yaml")
    subprocess.run([FLOWCTL, "--nats-url", url, "up", "-f", flow], check=True,
                   stdout=subprocess.DEVNULL)


BASELINE = "python -c pass (baseline)"
Runs = dict[str, list[tuple[float, float]]]


def measure(url: str, rounds: int, before: str | None) -> Runs:
    """Every command once per round, in turn (and with ``before``'s code after each)."""
    variants: list[tuple[str, dict[str, str] | None]] = [("", None)]
    if before:
        variants.append((" (before)", {**os.environ, "PYTHONPATH": before}))
    runs: Runs = {BASELINE: []}
    for label, argv, _ in COMMANDS:  # one warm-up each: bytecode caches, page cache
        for suffix, env in variants:
            runs[label + suffix] = []
            timed([FLOWCTL, "--nats-url", url, *argv], env)
    for _ in range(rounds):
        runs[BASELINE].append(timed([sys.executable, "-c", "pass"]))
        for label, argv, _ in COMMANDS:
            for suffix, env in variants:
                runs[label + suffix].append(timed([FLOWCTL, "--nats-url", url, *argv], env))
    return runs


def report(runs: Runs, rounds: int) -> None:
    targets = {label: target for label, _, target in COMMANDS}
    base = statistics.median(wall for wall, _ in runs[BASELINE])
    print(f"rounds: {rounds}; seconds per command, a new process each time")
    print(f"{'command':<34}{'median':>8}{'min':>8}{'max':>8}{'- base':>8}{'cpu':>8}"
          f"{'target':>8}  met")
    for label, times in runs.items():
        walls = [wall for wall, _ in times]
        median = statistics.median(walls)
        target = targets.get(label)
        met = "" if target is None else ("yes" if median <= target else "NO")
        print(f"{label:<34}{median:8.3f}{min(walls):8.3f}{max(walls):8.3f}"
              f"{median - base:8.3f}{statistics.median(cpu for _, cpu in times):8.3f}"
              f"{target if target else '':>8}  {met}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--before", metavar="DIR",
                        help="also time the code of DIR (a checkout), in the same rounds")
    args = parser.parse_args()
    with EmbeddedNats() as server:
        agents = [start_agent(server.url, "bench-1", "zone=a")]
        try:
            prepare(server.url)
            report(measure(server.url, args.rounds, args.before), args.rounds)
        finally:
            stop_all(agents)


if __name__ == "__main__":
    main()
