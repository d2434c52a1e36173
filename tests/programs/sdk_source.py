"""A source written with the SDK: emits ``config.count`` events, then exits 0."""

from componentmanager.sdk import Component, run_component


async def produce(c: Component) -> None:
    for i in range(c.config.get("count", 3)):
        await c.emit({"n": i})


run_component(source=produce)
