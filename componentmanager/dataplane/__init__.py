"""The NATS data plane: what travels on a subject (:mod:`.wire`, pure), adaptive framing of
outputs (:mod:`.emit`), the JetStream side of at-least-once flows (:mod:`.streams`,
:mod:`.pull`) and the accounting of what is lost (:mod:`.accounting`). Runners and the
SDK import from here.
"""

from componentmanager.dataplane.emit import Outbox
from componentmanager.dataplane.pull import Puller
from componentmanager.dataplane.streams import (
    ACK_WINDOW,
    DEFAULT_ACK_WAIT_S,
    DEFAULT_MAX_DELIVER,
    AckedPublisher,
    PublishFailed,
    store_dead_letter,
)
from componentmanager.dataplane.wire import (
    FRAME_BYTES,
    FRAME_EVENTS,
    HDR_ERROR,
    HDR_META,
    HDR_REPLAY_TO,
    EventIds,
    dead_letter_headers,
    decode,
    decode_frame,
    encode,
    event_as_received,
    event_id,
    fit_dead_letter,
    frame_count,
    raw_frame,
)

__all__ = [
    "ACK_WINDOW", "DEFAULT_ACK_WAIT_S", "DEFAULT_MAX_DELIVER", "FRAME_BYTES", "FRAME_EVENTS",
    "HDR_ERROR", "HDR_META", "HDR_REPLAY_TO", "AckedPublisher", "EventIds", "Outbox",
    "PublishFailed", "Puller",
    "dead_letter_headers", "decode", "decode_frame", "encode", "event_as_received",
    "event_id", "fit_dead_letter", "frame_count", "raw_frame", "store_dead_letter",
]
