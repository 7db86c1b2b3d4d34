"""Wake-up hints for this frontend: one pub/sub channel, many waiting coroutines.

Each frontend process has an id (`fid`) and subscribes to exactly one channel,
`redbarn:v1:fe:<fid>` (`redbarn.queue.keys.channel`). Scheduler scripts publish a
message there when something a coroutine of this frontend waits for has changed: a
parked worker was given work, or an operation it streams changed stage. The message is the topic, optionally followed
by a unit separator (\x1f) and a payload: the new state, so that the waiter need not
read it back from Redis (`redbarn.queue.replies`). `Hub.wait(topic, timeout)`
returns the payload (b"" for a bare hint, a reconnect or shutdown), or None on timeout.
Hints are only hints: Redis state is the truth, waiters that get no usable payload
re-read it, and every waiter also polls on a timer, so a lost message (say, while
Redis restarts) costs a few seconds, never a hung call. While Redis is unreachable the
hub resubscribes every `retry_delay` seconds and reports each failure to the process's
`OutageLog` (`redbarn.runtime.outage`), which logs the outage once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import defaultdict
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from redbarn.queue import keys
from redbarn.runtime.outage import UNREACHABLE, OutageLog
from redbarn.runtime.redisurl import AnyRedis

log = logging.getLogger(__name__)

PENDING_TTL = 2.0  # seconds a hint with no waiter is remembered
PENDING_MAX = 100_000  # bound on remembered hints


def new_frontend_id() -> str:
    return uuid.uuid4().hex[:12]


class Hub:
    """Subscribes to this frontend's channel and wakes waiters by topic."""

    def __init__(
        self,
        redis: AnyRedis,
        fid: str,
        *,
        retry_delay: float = 0.5,
        outage: OutageLog | None = None,
    ) -> None:
        self._redis = redis
        self.fid = fid
        self.channel = keys.channel(fid)
        self._outage = outage or OutageLog("Redis")
        # Errors that are not an outage (a SUBSCRIBE the ACL refuses, say) may persist
        # just the same, so they are throttled the same way, on their own.
        self._refused = OutageLog(
            f"Hint channel {self.channel}", impact="waiters poll until it is back"
        )
        self._waiters: dict[str, set[asyncio.Future[bytes | None]]] = defaultdict(set)
        # Hints that arrived while nobody waited: a coroutine often reads state, then
        # waits, and the hint for a change made in between lands before the wait
        # starts. Kept for PENDING_TTL (with its payload, the newest one wins) so that
        # wait() returns at once instead.
        self._pending: dict[str, tuple[float, bytes]] = {}
        self._task: asyncio.Task[None] | None = None
        self._retry_delay = retry_delay
        self.closing = False
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"hub-{self.fid}")

    def close(self) -> None:
        """Shutting down: wake every waiter now, and never wait again."""
        self.closing = True
        self.notify_all()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, topic: str, timeout: float) -> bytes | None:
        """The payload of the next hint on `topic` (b"" if it had none), or None after
        `timeout` seconds."""
        if self.closing:
            return b""
        if self._pending:
            pending = self._pending.pop(topic, None)
            if pending is not None and pending[0] > time.monotonic():
                return pending[1]
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        waiters = self._waiters[topic]
        waiters.add(waiter)
        timer = loop.call_later(max(timeout, 0.0), _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(topic, None)

    def notify(self, topic: str, payload: bytes = b"") -> None:
        """Wake every local waiter of `topic`; with none still waiting, remember it for a
        moment. A waiter woken by an earlier hint (or its timer) stays registered until
        its coroutine runs; a hint landing in between, say the COMPLETED right behind an
        EXECUTING in one read, is kept for that coroutine's next wait, not dropped."""
        woken = False
        for waiter in self._waiters.get(topic, ()):
            if not waiter.done():
                waiter.set_result(payload)
                woken = True
        if woken:
            return
        now = time.monotonic()
        if len(self._pending) >= PENDING_MAX:
            self._pending = {t: p for t, p in self._pending.items() if p[0] > now}
        if len(self._pending) < PENDING_MAX:
            self._pending[topic] = (now + PENDING_TTL, payload)

    def notify_all(self) -> None:
        """Wake everyone: they re-read state (used after a reconnect, and on shutdown)."""
        for waiters in list(self._waiters.values()):
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(b"")

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled, resubscribing after errors."""
        attempt = 0
        while True:
            pubsub: Any = None
            try:
                pubsub = await self._pubsub(attempt)
                attempt += 1
                await pubsub.subscribe(self.channel)
                self.connected.set()
                self._outage.ok()
                self._refused.ok()
                # Anything published while we were away is lost: let waiters re-read.
                self.notify_all()
                if pubsub.connection is None:
                    raise RedisError("subscribed without a connection")
                await self._read(pubsub.connection)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                self.connected.clear()
                if isinstance(err, UNREACHABLE):
                    self._outage.failed(err, f"hint channel {self.channel} lost")
                else:
                    self._refused.failed(err, "subscribing failed")
                await asyncio.sleep(self._retry_delay)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    async def _pubsub(self, attempt: int) -> Any:
        """A PubSub for this attempt. On a Redis Cluster every node delivers every
        PUBLISH, so any node will do: attempts go round the nodes, and a subscription
        lost with its node moves on to the next one at once instead of waiting for the
        slot map to name the dead master's successor."""
        if not isinstance(self._redis, RedisCluster):
            return self._redis.pubsub(ignore_subscribe_messages=True)
        await self._redis.initialize()
        nodes = self._redis.get_nodes()
        return self._redis.pubsub(node=nodes[attempt % len(nodes)], ignore_subscribe_messages=True)

    async def _read(self, connection: Any) -> None:
        """Read the subscription's replies off its connection directly: each hint is one
        reply (RESP2) or push message (RESP3). PubSub.get_message's per-call timeout,
        retry wrapper and dict building cost more than the rest of the dispatch. No
        read timeout (a quiet channel is normal); a lost connection raises, and run()
        subscribes again and wakes every waiter."""
        while True:
            reply = await connection.read_response(timeout=math.inf, push_request=True)
            if isinstance(reply, list) and len(reply) == 3 and reply[0] in (b"message", "message"):
                self._dispatch(reply[2])

    def deliver(self, message: bytes) -> None:
        """A hint for this frontend returned by one of its own script calls."""
        self._dispatch(message)

    async def alive(self, fid: str) -> bool:
        """Whether frontend `fid` still listens on its channel (PUBSUB NUMSUB: a killed
        frontend's subscription ends with its connection). Only asked when a worker's
        Synchronize is refused as a duplicate, never on the hot path.

        On a Redis Cluster a subscription lives on one node and NUMSUB counts only that
        node's, so every node is asked and the counts are summed (redis-py sums them)."""
        channel = keys.channel(fid)
        if isinstance(self._redis, RedisCluster):
            counts = await self._redis.pubsub_numsub(channel, target_nodes=RedisCluster.ALL_NODES)
        else:
            counts = await self._redis.pubsub_numsub(channel)
        return any(int(n) > 0 for _, n in counts)

    def _dispatch(self, data: object) -> None:
        if isinstance(data, str):
            data = data.encode()
        if isinstance(data, bytes):
            topic, _, payload = data.partition(b"\x1f")
            self.notify(topic.decode("utf-8", "replace"), payload)


def _expire(waiter: asyncio.Future[bytes | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
