"""Connectors to systems outside NATS, one module per external system, each a thin shell
over a well-kept client library: ``sql`` (PostgreSQL and SQLite), ``mqtt``, ``parquet``.
Importing this package registers them (through :mod:`componentmanager.components`).
"""

# (each connector module adds its import below, one line each)
from componentmanager.components.connectors import mqtt  # noqa: F401
from componentmanager.components.connectors import parquet as parquet  # the parquet sink
from componentmanager.components.connectors import sql as sql  # the sql sink and source
