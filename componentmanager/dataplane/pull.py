"""Pulling a durable JetStream consumer into a replica without nats-py's per-message
``fetch()`` machinery (:class:`Puller`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from flowstore.streams import DEFAULT_ACK_WAIT_S

log = structlog.get_logger("flowctl.streams")

#: Messages a pull request asks for at most, and how long it waits for them on the server.
PULL_BATCH = 256
PULL_EXPIRES_S = 5.0
#: About how long pulled messages may wait in line here before they are handled: well
#: below the ack wait, so none is delivered again elsewhere while it waits its turn.
QUEUE_FOR_S = DEFAULT_ACK_WAIT_S / 4
#: An idle input settles (acks what is done) at most this often: a lightly loaded
#: consumer acks a run of messages together instead of one round trip per message.
SETTLE_EVERY_S = 0.02


def pull_batch(handle_s: float) -> int:
    """How many messages to ask for, given how long one takes to handle lately: as many
    as are handled in :data:`QUEUE_FOR_S` (at least 1, at most :data:`PULL_BATCH`)."""
    if handle_s <= 0:
        return PULL_BATCH
    return max(1, min(PULL_BATCH, int(QUEUE_FOR_S / handle_s)))


def settle_delay(now: float, settled_at: float) -> float:
    """How long an input that just went idle waits before it settles: 0 (at once) when
    the last settle is :data:`SETTLE_EVERY_S` old, else until then. At low rates every
    message is acked at once; at high ones a run of them in one settle."""
    return max(0.0, settled_at + SETTLE_EVERY_S - now)


class Puller:
    """Pulls a durable consumer into ``handle`` (one call per message, in order).

    One pull request at a time (of :func:`pull_batch` messages), each with its own reply
    subject (for its status messages); messages are handled as they arrive (no
    per-message task, uuid or ``wait_for``). ``settle`` runs when a request is complete
    and when the input goes idle (at most every :data:`SETTLE_EVERY_S`: see
    :func:`settle_delay`), never while a message is handled, so acks are batched under
    load and prompt at low rates.
    """

    def __init__(self, nc: NatsClient, stream: str, durable: str,
                 handle: Callable[[Msg], Awaitable[None]],
                 settle: Callable[[], Awaitable[None]]) -> None:
        self.nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._handle = handle
        self._settle = settle
        self._inbox = nc.new_inbox()
        self._k = 0
        self._remaining = 0
        self._done = asyncio.Event()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: the server said this consumer had nothing more (a pull request ran out), and
        #: nothing came since: the input is quiet, not merely cut off (NATS frozen)
        self.quiet = False
        self._handle_s = 0.0  # moving average of the time one message takes
        self._in_hand: tuple[Msg, float] | None = None  # (message, since) being handled
        self._keeper: asyncio.Task[None] | None = None
        self._turn = asyncio.Lock()  # a message is handled or an idle settle runs
        self._settled_at = 0.0  # loop time of the last settle
        self._settle_timer: asyncio.TimerHandle | None = None
        self._settler: asyncio.Task[None] | None = None  # a deferred idle settle

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The pulling task (watched by the replica: it must never end on its own)."""
        return self._task

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg,
                                            pending_msgs_limit=4 * PULL_BATCH + 64)
        self._task = asyncio.create_task(self._loop(), name=f"pull {self._api}")
        self._keeper = asyncio.create_task(self._keep_in_hand_alive(),
                                           name=f"in progress {self._api}")

    async def _keep_in_hand_alive(self) -> None:
        """The message being handled for long (a slow function, a slow sink) is reported
        in progress every :data:`QUEUE_FOR_S`, so the server does not deliver it again
        elsewhere after the (short) ack wait while it is still worked on here."""
        while True:
            await asyncio.sleep(QUEUE_FOR_S)
            if self._in_hand is None:
                continue
            msg, since = self._in_hand
            if time.perf_counter() - since >= QUEUE_FOR_S and msg.reply:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _loop(self) -> None:
        while True:
            self._k += 1
            self._remaining = batch = pull_batch(self._handle_s)
            self._done.clear()
            request = msgspec.json.encode({"batch": batch, "expires": int(PULL_EXPIRES_S * 1e9)})
            try:
                await self.nc.publish(self._api, request, reply=f"{self._inbox}.{self._k}")
                async with asyncio.timeout(PULL_EXPIRES_S + 2):
                    await self._done.wait()
                await self._settle_now()
            except TimeoutError:
                pass  # lost with a reconnect: ask again
            except Exception as exc:  # never let the pulling die: wait, then ask again
                log.warning("pull failed", consumer=self._api, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)

    async def _on_msg(self, msg: Msg) -> None:
        # A delivered message keeps its stream subject; only status messages come on the
        # request's reply subject. One request is open at a time, so every message
        # counts towards it.
        if msg.headers and msg.headers.get("Status"):
            if msg.subject.endswith(f".{self._k}") and msg.headers["Status"] != "100":
                self.quiet = msg.headers["Status"] in ("404", "408")
                self._done.set()  # 408 expired, 409 ...: this request is over
            return
        if self._closing:  # stopping: delivered again at once, to whoever reads next
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        self.quiet = False
        async with self._turn:
            self._idle.clear()
            began = time.perf_counter()
            self._in_hand = (msg, began)
            try:
                await self._handle(msg)
            finally:
                self._in_hand = None
                self._idle.set()
                self._handle_s += (time.perf_counter() - began - self._handle_s) / 8
            self._remaining -= 1
            if self._remaining <= 0:
                self._done.set()
                return
            if self._sub is None or self._sub.pending_msgs or self._settle_timer is not None:
                return
            loop = asyncio.get_running_loop()
            delay = settle_delay(loop.time(), self._settled_at)
            if delay <= 0:
                await self._settle_now()  # idle: ack what is done now
            else:  # idle again soon after a settle: ack this run together, a bit later
                self._settle_timer = loop.call_later(delay, self._settle_due)

    async def _settle_now(self) -> None:
        self._settled_at = asyncio.get_running_loop().time()
        await self._settle()

    def _settle_due(self) -> None:
        self._settle_timer = None
        if self._closing or (self._settler is not None and not self._settler.done()):
            return
        self._settler = asyncio.create_task(self._settle_in_turn(),
                                            name=f"settle {self._api}")

    async def _settle_in_turn(self) -> None:
        """The deferred idle settle: between messages, as the one it stands for would
        have run (the replica waits for it when it stops)."""
        async with self._turn:
            self._idle.clear()
            try:
                await self._settle_now()
            except Exception as exc:  # settled again with the next message or request
                log.warning("settle failed", consumer=self._api,
                            error=f"{type(exc).__name__}: {exc}")
            finally:
                self._idle.set()

    async def stop(self) -> None:
        """Stop asking; a message being handled finishes. What was delivered but not
        handled is never acked: the server delivers it again after the ack wait."""
        self._closing = True
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        try:
            async with asyncio.timeout(3.0):
                await self._idle.wait()
                if self._settler is not None:
                    await asyncio.gather(self._settler, return_exceptions=True)
        except TimeoutError:
            pass
        for task in (self._task, self._keeper, self._settler):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._keeper = self._settler = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception:
                return
