"""The container watchdog: removes an agent's containers when the agent dies.

Docker, not the agent, owns containers, so an agent killed with SIGKILL would leave its
containers running until it restarts (when it reaps them). The agent therefore starts
this small process (``python -m componentmanager.runners.watchdog``) with its first
container replica. The watchdog polls the agent's pid; when the agent is gone it removes
every container labelled with that agent instance and exits. On a clean shutdown the
agent removes its containers itself and stops the watchdog with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from flowstore.server import pid_alive

LABEL_INSTANCE = "flowctl.agent-instance"  # == container.LABEL_INSTANCE (no docker import)


def remove_instance_containers(instance: str) -> list[str]:
    """Force-remove every container of one agent instance; never raises."""
    try:
        import docker

        client = docker.from_env(timeout=30)
        removed = []
        mine = {"label": f"{LABEL_INSTANCE}={instance}"}
        for c in client.containers.list(all=True, sparse=True, filters=mine):
            try:
                c.remove(force=True)
                removed.append((c.attrs.get("Names") or [c.id[:12]])[0].lstrip("/"))
            except Exception:
                continue
        return removed
    except Exception:
        return []


def spawn(agent_pid: int, instance: str) -> subprocess.Popen[bytes]:
    """Start a watchdog for ``agent_pid`` in its own session (it must outlive a SIGKILL)."""
    return subprocess.Popen(
        [sys.executable, "-m", "componentmanager.runners.watchdog",
         "--pid", str(agent_pid), "--instance", instance],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while pid_alive(args.pid) and os.getppid() == args.pid:
        time.sleep(args.interval)
    remove_instance_containers(args.instance)


if __name__ == "__main__":
    main()
