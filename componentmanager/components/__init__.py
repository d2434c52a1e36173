"""Built-in component types; importing this package registers them.

Sources (:mod:`.sources`, :mod:`.http_source`): ``generate``, ``file-source``,
``http-source``, ``nats-source``.
Processors (:mod:`.processors`, :mod:`.python_processor`): ``filter``, ``transform``,
``route``, ``batch``, ``python``; stateful (:mod:`.stateful`): ``window``, ``join``.
Sinks (:mod:`.sinks`): ``stdout``, ``file-sink``, ``http-sink``, ``nats-sink``, ``kv``.
Inline Python of every role (:mod:`.custom`): ``custom``.

The registry is keyed by (role, name), so a source and a sink share ``file``, ``http``
and ``nats`` (written ``file-source`` / ``file-sink`` above). Each module registers its
types on import; the classes are loaded through ``impl`` only when
a component is created. Config expressions: :mod:`.expressions`.
"""

from componentmanager.components import (
    connectors,
    custom,
    http_source,
    processors,
    python_processor,
    sinks,
    sources,
    stateful,
)

__all__ = ["connectors", "custom", "http_source", "processors", "python_processor", "sinks",
           "sources", "stateful"]
