"""A sink written with the SDK: appends each event as a JSON line to config ``path``."""

import json

from componentmanager.sdk import Component, run_component

out = None


def handle(event, port):
    global out
    if out is None:
        out = open(Component().config["path"], "a", buffering=1)  # noqa: SIM115
    out.write(json.dumps(event) + "\n")


run_component(handle)
