"""structlog setup: human-readable on a terminal, JSON lines with ``--log-json``.

structlog (and the rich tracebacks it loads) is imported only when a command logs: the
reading commands only print, and answer faster without it.
"""

from __future__ import annotations

import logging
import sys


class _KnownNoise(logging.Filter):
    """asyncio warns on every TLS connection nats-py opens (its stream protocol answers
    eof_received with True): harmless, so it is not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def configure(json_logs: bool = False, level: int = logging.INFO, structured: bool = True
              ) -> None:
    """Quiet asyncio's known noise; with ``structured``, set up structlog too."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _KnownNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_KnownNoise())
    if not structured:
        return
    import structlog

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
