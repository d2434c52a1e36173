"""The NATS data plane: what travels on a subject (:mod:`.wire`, pure), the JetStream
plumbing of at-least-once flows (:mod:`.streams`) and the accounting of what is lost
(:mod:`.accounting`). Runners and the SDK import from here.
"""

from componentmanager.dataplane.streams import (
    DEFAULT_ACK_WAIT_S,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_DELIVER,
    STREAM_MAX_AGE_S,
    AckedPublisher,
    PublishFailed,
    ensure_consumer,
    ensure_stream,
)
from componentmanager.dataplane.wire import (
    HDR_ERROR,
    HDR_ID,
    HDR_SOURCE,
    HDR_TIME,
    EventIds,
    decode,
    encode,
)

__all__ = [
    "DEFAULT_ACK_WAIT_S", "DEFAULT_MAX_ACK_PENDING", "DEFAULT_MAX_DELIVER", "HDR_ERROR",
    "HDR_ID", "HDR_SOURCE", "HDR_TIME", "STREAM_MAX_AGE_S", "AckedPublisher", "EventIds",
    "PublishFailed", "decode", "encode", "ensure_consumer", "ensure_stream",
]
