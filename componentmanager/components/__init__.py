"""Built-in component types; importing this package registers them.

Sources (:mod:`.sources`): ``generate``, ``file-source``, ``http-source``, ``nats-source``.
Processors (:mod:`.processors`): ``filter``, ``transform``, ``route``, ``batch``, ``python``.
Sinks (:mod:`.sinks`): ``stdout``, ``file-sink``, ``http-sink``, ``nats-sink``, ``kv``.

Type names are unique across roles because the registry is keyed by name alone. Each
module registers its types on import; the classes are loaded through ``impl`` only when
a component is created. Expressions used in configs are :mod:`componentmanager.expressions`.
"""

from componentmanager.components import processors, sinks, sources

__all__ = ["processors", "sinks", "sources"]
