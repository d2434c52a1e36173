"""A processor written with the SDK: upper-cases ``text``; ``{"drop": true}`` emits nothing,
``{"split": n}`` emits n events, ``{"route": port}`` goes to that output port,
``{"boom": true}`` raises (dead-lettered)."""

from componentmanager.sdk import run_component


def handle(event, port):
    if event.get("boom"):
        raise ValueError("boom requested")
    if event.get("drop"):
        return None
    if "route" in event:
        return (event["route"], event)
    if "split" in event:
        return [{"part": i} for i in range(event["split"])]
    return {**event, "text": event["text"].upper(), "port": port}


run_component(handle)
