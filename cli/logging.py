"""structlog setup: human-readable on a terminal, JSON lines with ``--log-json``."""

from __future__ import annotations

import logging
import sys

import structlog


class _KnownNoise(logging.Filter):
    """asyncio warns on every TLS connection nats-py opens (its stream protocol answers
    eof_received with True): harmless, so it is not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def configure(json_logs: bool = False, level: int = logging.INFO) -> None:
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _KnownNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_KnownNoise())
    processors: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_logs:
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
