"""What travels on a data subject, as pure functions: event encoding and metadata headers.

* Events travel as JSON bodies (msgspec, encoded once per event) on
  ``flowctl.<flow>.<node>.<port>``; metadata rides in headers (:data:`HDR_ID`,
  :data:`HDR_SOURCE`, :data:`HDR_TIME`), so ``nats sub 'flowctl.orders.>'`` shows
  readable events and anything that publishes JSON to a subject can feed a flow.
* Dead letters carry the reason in :data:`HDR_ERROR`.

No I/O here; publishing and consuming are :mod:`.streams` and the runners.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

HDR_ID = "Flowctl-Id"
HDR_SOURCE = "Flowctl-Source"
HDR_TIME = "Flowctl-Time"
HDR_ERROR = "Flowctl-Error"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode(event: Any) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> Any:
    """A JSON body as a value; a body that is not JSON becomes ``{"data": text}``."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return {"data": data.decode("utf-8", "replace")}


class EventIds:
    """Metadata headers for one emitting replica: ids are ``<node>.<replica>.<instance>-<n>``."""

    __slots__ = ("_n", "_prefix", "source")

    def __init__(self, node: str, replica: int, instance: str) -> None:
        self.source = node
        self._prefix = f"{node}.{replica}.{instance}-"
        self._n = 0

    def headers(self) -> dict[str, str]:
        self._n += 1
        return {
            HDR_ID: f"{self._prefix}{self._n}",
            HDR_SOURCE: self.source,
            HDR_TIME: f"{time.time():.6f}",
        }
