"""Wake-up hints for this frontend: one pub/sub channel, many waiting coroutines.

Each frontend process has an id (`fid`) and subscribes to exactly one channel,
`redbarn:v1:fe:<fid>`. Scheduler scripts publish a short message there when
something a coroutine of this frontend waits for has changed: a parked worker was
given work, or an operation it streams changed stage. The message text is the topic;
`Hub.wait(topic, timeout)` returns True when that topic was published, False on
timeout. Hints are only hints: Redis state is the truth, every waiter re-reads state
afterwards and also polls on a timer, so a lost message (say, while Redis restarts)
costs a few seconds, never a hung call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "redbarn:v1:fe:"
PENDING_TTL = 2.0  # seconds a hint with no waiter is remembered
PENDING_MAX = 100_000  # bound on remembered hints


def new_frontend_id() -> str:
    return uuid.uuid4().hex[:12]


class Hub:
    """Subscribes to this frontend's channel and wakes waiters by topic."""

    def __init__(self, redis: aioredis.Redis, fid: str, *, retry_delay: float = 0.5) -> None:
        self._redis = redis
        self.fid = fid
        self.channel = CHANNEL_PREFIX + fid
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        # Hints that arrived while nobody waited: a coroutine often reads state, then
        # waits, and the hint for a change made in between lands before the wait
        # starts. Kept for PENDING_TTL so that wait() returns at once instead.
        self._pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._retry_delay = retry_delay
        self._closing = False
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"hub-{self.fid}")

    def close(self) -> None:
        """Shutting down: wake every waiter now, and never wait again."""
        self._closing = True
        self.notify_all()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, topic: str, timeout: float) -> bool:
        """Wait until `topic` is published or `timeout` seconds pass."""
        if self._closing:
            return True
        if self._pending and self._pending.pop(topic, 0.0) > time.monotonic():
            return True
        event = asyncio.Event()
        waiters = self._waiters[topic]
        waiters.add(event)
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(topic, None)

    def notify(self, topic: str) -> None:
        """Wake every local waiter of `topic`; with none, remember it for a moment."""
        events = self._waiters.get(topic)
        if events:
            for event in events:
                event.set()
            return
        now = time.monotonic()
        if len(self._pending) >= PENDING_MAX:
            self._pending = {t: d for t, d in self._pending.items() if d > now}
        if len(self._pending) < PENDING_MAX:
            self._pending[topic] = now + PENDING_TTL

    def notify_all(self) -> None:
        """Wake everyone: they re-read state (used after a reconnect, and on shutdown)."""
        for events in list(self._waiters.values()):
            for event in events:
                event.set()

    async def _on_reconnect(self, _connection: object) -> None:
        self.connected.set()
        self.notify_all()

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled, resubscribing after errors."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected.set()
                # redis-py reconnects and resubscribes by itself; hear about it.
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(self._on_reconnect)
                # Anything published while we were away is lost: let waiters re-read.
                self.notify_all()
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        continue
                    data = msg.get("data")
                    if isinstance(data, bytes):
                        self.notify(data.decode("utf-8", "replace"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                self.connected.clear()
                log.warning("hint channel %s lost (%s); resubscribing", self.channel, err)
                await asyncio.sleep(self._retry_delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
