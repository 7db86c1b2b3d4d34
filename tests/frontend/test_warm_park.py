"""Warm holds: an idle worker answered at the end of a hold stays parked in Redis, and its
next idle Synchronize on the same frontend is held without Redis (real frontends, real
Redis, a worker driven one Synchronize at a time)."""

from __future__ import annotations

import asyncio
import dataclasses

import redis.asyncio as aioredis

from redbarn.frontend.config import FrontendConfig
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import keys

from .test_execution import SCHED, Cluster
from .test_invocation_affinity import IDLE, Worker, execute

HOLD = dataclasses.replace(SCHED, idle_sync_timeout=0.6)


class WorkerCalls:
    """Counts the synchronize_worker and unpark_worker calls Redis runs (MONITOR)."""

    def __init__(self, url: str) -> None:
        self.count = 0
        self._r = aioredis.from_url(url)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WorkerCalls:
        ready = asyncio.Event()

        async def run() -> None:
            async with self._r.monitor() as m:
                ready.set()
                async for cmd in m.listen():
                    text = cmd.get("command", "")
                    if text.startswith("FCALL") and (
                        "_synchronize_worker" in text or "_unpark_worker" in text
                    ):
                        self.count += 1

        self._task = asyncio.create_task(run())
        await asyncio.wait_for(ready.wait(), 5)
        await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.1)
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._r.aclose()


async def idle_round(w: Worker) -> rw_pb2.SynchronizeResponse:
    w.send(IDLE)
    assert w.pending is not None
    return await asyncio.wait_for(w.pending, 5)


async def test_idle_holds_cost_redis_one_park_per_park_holds(redis_url: str) -> None:
    """Eight holds after the first park cost no script call; then the park is renewed."""
    c = Cluster(FrontendConfig(listen="127.0.0.1:0", redis_url=redis_url), HOLD)
    r = aioredis.from_url(redis_url)
    w = None
    try:
        node = await c.add()
        w = Worker(node, "warm")
        reply = await idle_round(w)  # parks in Redis, held up to 0.6 s, answered idle
        assert reply.desired_state.WhichOneof("worker_state") == "idle"
        async with WorkerCalls(redis_url) as calls:
            for _ in range(4):
                reply = await idle_round(w)
                assert reply.desired_state.WhichOneof("worker_state") == "idle"
        assert calls.count == 0  # four holds, no synchronize or unpark call
        parked = await r.zrange(keys.domain_key(_domain(), "parked"), 0, -1)
        assert len(parked) == 1  # still parked in Redis for the offer path
    finally:
        if w is not None:
            await w.close()
        await r.aclose()
        await c.close()


def _domain() -> str:
    from redbarn.queue import codec

    from .test_execution import PLATFORM

    return keys.domain_id("", codec.platform_json(PLATFORM))


async def test_work_reaches_a_warm_worker_and_a_gone_one_is_released(redis_url: str) -> None:
    """An Execute during a warm hold goes straight to the worker; a worker that does not
    come back after being answered idle leaves the parked set within the grace period,
    so new work queues instead of waiting on it."""
    c = Cluster(FrontendConfig(listen="127.0.0.1:0", redis_url=redis_url), HOLD)
    r = aioredis.from_url(redis_url)
    w = None
    try:
        node = await c.add()
        w = Worker(node, "warm")
        await idle_round(w)  # parked, then answered idle: warm
        w.send(IDLE)  # a warm hold
        await asyncio.sleep(0.1)
        digest, stream = await execute(node, "x")
        assert await w.executing() == digest
        w.complete(digest)  # completes, parks again (a real park), answered idle later
        reply = await asyncio.wait_for(w.pending, 5)  # type: ignore[arg-type]
        assert reply.desired_state.WhichOneof("worker_state") == "idle"
        w.pending = None
        # The worker does not come back: its park is released.
        parked_key = keys.domain_key(_domain(), "parked")
        for _ in range(50):
            if await r.zcard(parked_key) == 0:
                break
            await asyncio.sleep(0.1)
        assert await r.zcard(parked_key) == 0
        stream.cancel()
    finally:
        if w is not None:
            await w.close()
        await r.aclose()
        await c.close()


async def test_a_worker_coming_back_through_another_frontend_is_served(redis_url: str) -> None:
    """Behind a load balancer a worker's next Synchronize may reach another frontend
    while the first keeps its park warm: the second asks the first to let go and serves
    the worker (no "already synchronizing"), which then gets work there."""
    c = Cluster(FrontendConfig(listen="127.0.0.1:0", redis_url=redis_url), HOLD)
    w = None
    try:
        a, b = await c.add(), await c.add()
        w = Worker(a, "roaming")
        await idle_round(w)  # answered idle by a, which keeps the park warm
        w.node = b
        loop = asyncio.get_running_loop()
        start = loop.time()
        w.send(IDLE)  # parks on b
        await asyncio.sleep(0.3)
        assert w.pending is not None and not w.pending.done()
        digest, stream = await execute(a, "y")
        assert await w.executing() == digest
        assert loop.time() - start < 1.0  # well inside the warm grace: a let go when asked
        stream.cancel()
    finally:
        if w is not None:
            await w.close()
        await c.close()
