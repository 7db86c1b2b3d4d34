"""The hint hub: a published topic wakes exactly its waiters; reconnects are survived."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from redbarn.frontend.hub import Hub, new_frontend_id
from redbarn.runtime.redisserver import RedisServer


@pytest.mark.parametrize("protocol", [2, 3])
async def test_publish_wakes_only_its_topic(redis_url: str, protocol: int) -> None:
    """Hints arrive over RESP2 (read off the connection) and RESP3 (push messages)."""
    real_redis = aioredis.Redis.from_url(redis_url, protocol=protocol)
    hub = Hub(real_redis, new_frontend_id())
    await hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        woken = asyncio.create_task(hub.wait("o op-1", 5))
        other = asyncio.create_task(hub.wait("o op-2", 0.5))
        await asyncio.sleep(0.05)
        assert await real_redis.publish(hub.channel, "o op-1") == 1
        assert await woken == b""  # a bare hint: woken, nothing carried
        assert await other is None  # timed out
        carried = asyncio.create_task(hub.wait("o op-3", 5))
        await asyncio.sleep(0.05)
        await real_redis.publish(hub.channel, b"o op-3\x1fstate\x1fwith\x1fseparators")
        assert await carried == b"state\x1fwith\x1fseparators"
    finally:
        await hub.stop()
        await real_redis.aclose()


async def test_waiters_wake_after_redis_restart(tmp_path: object) -> None:
    server = RedisServer().start()
    client = aioredis.Redis(port=server.port)
    hub = Hub(client, new_frontend_id(), retry_delay=0.05)
    await hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        waiter = asyncio.create_task(hub.wait("w worker", 20))
        server.stop()
        server.start()
        # The resubscribe wakes everyone so they re-read state they may have missed.
        assert await asyncio.wait_for(waiter, 10) == b""
        await asyncio.wait_for(hub.connected.wait(), 5)
        late = asyncio.create_task(hub.wait("o x", 5))
        await asyncio.sleep(0.05)
        await client.publish(hub.channel, "o x")
        assert await late == b""
    finally:
        await hub.stop()
        await client.aclose()
        server.cleanup()


async def test_a_hint_that_lands_before_the_wait_is_not_lost(real_redis: aioredis.Redis) -> None:
    hub = Hub(real_redis, new_frontend_id())
    await hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        await real_redis.publish(hub.channel, "o early\x1fold")
        await real_redis.publish(hub.channel, "o early\x1fnew")
        await asyncio.sleep(0.1)  # delivered while nobody waits
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await hub.wait("o early", 5) == b"new"  # the newest state is kept
        assert loop.time() - t0 < 0.5
        # Consumed: the next wait for the same topic waits for a new hint.
        assert await hub.wait("o early", 0.2) is None
    finally:
        await hub.stop()


async def test_a_hint_right_behind_the_one_that_woke_the_waiter_is_not_lost(
    real_redis: aioredis.Redis,
) -> None:
    """Two hints for one topic in one read (an operation going EXECUTING then COMPLETED on
    another frontend): the first wakes the waiter; the second lands before the woken
    coroutine has run, while its finished future is still registered. It must be kept
    for the next wait, not dropped (it was: the stream then sat until its 5 s poll)."""
    hub = Hub(real_redis, new_frontend_id())
    await hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        first = asyncio.create_task(hub.wait("o op", 5))
        await asyncio.sleep(0.05)  # the waiter is registered
        async with real_redis.pipeline(transaction=False) as pipe:
            pipe.publish(hub.channel, "o op\x1fexecuting")
            pipe.publish(hub.channel, "o op\x1fcompleted")
            await pipe.execute()
        assert await first == b"executing"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await hub.wait("o op", 5) == b"completed"
        assert loop.time() - t0 < 0.5
    finally:
        await hub.stop()
