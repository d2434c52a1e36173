"""A minimal "agent": runs one ProcessReplica of ``sleep 1000`` and prints the child pid.

Used to prove that SIGKILLing the agent leaves no child behind (PR_SET_PDEATHSIG).
argv[1] is the log dir.
"""

import asyncio
import sys

from componentmanager.runners.process import ProcessReplica
from flowstore.models import ComponentConfig, ExternalFields, ReplicaState
from flowstore.nats import NatsOptions


class Host:
    agent_name = "mini"
    nc = None
    nats_options = NatsOptions(url="nats://127.0.0.1:4222")
    allow_inline_code = False

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def changed(self, replica) -> None:
        if replica.state == ReplicaState.RUNNING:
            print(f"child {replica.pid}", flush=True)

    def log_line(self, replica, line, stream="stdout") -> None:
        pass


async def main() -> None:
    cfg = ComponentConfig(
        flow="f", node="sleeper", type="external", kind="process", queue="flowctl.f.sleeper",
        external=ExternalFields(command="sleep", args=["1000"]),
    )
    replica = ProcessReplica(cfg, 0, Host(sys.argv[1]), ready_after=0.2)
    await replica.start()
    await asyncio.Event().wait()


asyncio.run(main())
