"""How long the reading commands take from the shell, against a local server.

    python benchmarks/cli_latency.py [--rounds 9]

Starts a nats-server and one real `flowctl agent`, creates and starts the example flow
``hello`` with the `flowctl` executable, then times each command as a user runs it (a
new process each time, output discarded): ``flowctl --help``, ``list``, ``status hello``,
``get hello``, ``agents``. The baseline, measured in the same rounds, is ``python -c
pass``: the cost of starting any Python program on this machine. Each round runs every
command once, in turn, so a busy moment of the machine touches all of them alike.
Printed: median, min and max seconds, the median less the baseline's, and the target.
"""

from __future__ import annotations

import argparse
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


def timed(argv: list[str]) -> float:
    """Seconds one process takes from start to exit; a failure ends the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return took


def prepare(url: str) -> None:
    """The example flow, created, deployed and started through the CLI."""
    flow = str(ROOT / "examples" / "hello.yaml")
    subprocess.run([FLOWCTL, "--nats-url", url, "up", "-f", flow], check=True,
                   stdout=subprocess.DEVNULL)


def measure(url: str, rounds: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"python -c pass (baseline)": []}
    runs.update({label: [] for label, _, _ in COMMANDS})
    for _label, argv, _ in COMMANDS:  # one warm-up each: bytecode caches, page cache
        timed([FLOWCTL, "--nats-url", url, *argv])
    for _ in range(rounds):
        runs["python -c pass (baseline)"].append(timed([sys.executable, "-c", "pass"]))
        for label, argv, _ in COMMANDS:
            runs[label].append(timed([FLOWCTL, "--nats-url", url, *argv]))
    return runs


def report(runs: dict[str, list[float]], rounds: int) -> None:
    targets = {label: target for label, _, target in COMMANDS}
    base = statistics.median(runs["python -c pass (baseline)"])
    print(f"rounds: {rounds}; seconds per command, a new process each time")
    print(f"{'command':<28}{'median':>8}{'min':>8}{'max':>8}{'- base':>8}{'target':>8}  met")
    for label, times in runs.items():
        median = statistics.median(times)
        target = targets.get(label)
        met = "" if target is None else ("yes" if median <= target else "NO")
        print(f"{label:<28}{median:8.3f}{min(times):8.3f}{max(times):8.3f}"
              f"{median - base:8.3f}{target if target else '':>8}  {met}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with EmbeddedNats() as server:
        agents = [start_agent(server.url, "bench-1", "zone=a")]
        try:
            prepare(server.url)
            report(measure(server.url, args.rounds), args.rounds)
        finally:
            stop_all(agents)


if __name__ == "__main__":
    main()
