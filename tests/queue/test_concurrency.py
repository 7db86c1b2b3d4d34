"""8 frontends, 20 crashing workers, 1,000 actions: each ends with exactly one result,
nothing stays queued or executing, and every key goes once the retention passes."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import redis.asyncio as aioredis
from qhelpers import FAST, SHA256, action, assigned, md, request, synchronize

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import keys
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import PollingHints, Scheduler

CFG = dataclasses.replace(
    FAST,
    worker_timeout=0.3,
    idle_sync_timeout=0.2,
    # Thirty waiter polls: with 120 coroutines in one process on a loaded machine the
    # event loop can lag by a second, and a waiter that misses its retention loses its op.
    operation_retention=3.0,
    platform_queue_timeout=0.5,
    waiter_poll_interval=0.1,
    max_attempts=10,
)


async def _drive(
    redis: aioredis.Redis,
    n_actions: int,
    *,
    per_client: int = 12,
    n_workers: int = 20,
    n_frontends: int = 8,
    cfg: SchedulerConfig = CFG,
) -> None:
    rng = random.Random(7)
    fronts = [Scheduler(redis, cfg, hints=PollingHints(step=0.1)) for _ in range(n_frontends)]
    await fronts[0].start()
    for w in range(n_workers):  # workers announce the platform queue first
        await synchronize(fronts[w % n_frontends], request(f"{w:02d}", prefer_idle=True))
    results: dict[int, list[re_pb2.ExecuteResponse]] = {}
    stop = asyncio.Event()

    async def client(c: int) -> None:
        sem = asyncio.Semaphore(per_client)

        async def one(n: int) -> None:
            async with sem:
                s = fronts[c]
                digest, a = action(n)
                first = await s.operations.execute(
                    instance_name="",
                    action_digest=digest,
                    action=a,
                    digest_function=SHA256,
                    request_metadata=md(f"inv{c}"),
                )
                async for view in s.operations.watch_operation(first.name, first=first):
                    if view.done:
                        assert view.response is not None
                        results.setdefault(n, []).append(view.response)

        await asyncio.gather(*(one(n) for n in range(c, n_actions, n_frontends)))

    async def worker(w: int) -> None:
        req = request(f"{w:02d}")
        while not stop.is_set():
            s = rng.choice(fronts)
            resp = await synchronize(s, req)
            d = assigned(resp)
            if d is None:
                req = request(f"{w:02d}")
                continue
            if rng.random() < 0.04:  # crash: silent past the worker timeout
                await asyncio.sleep(rng.uniform(0.35, 0.5))
                if rng.random() < 0.5:  # come back as a zombie reporting the old action
                    done = re_pb2.ExecuteResponse(
                        result=re_pb2.ActionResult(stdout_raw=d.hash.encode())
                    )
                    req = request(f"{w:02d}", "completed", d, response=done)
                else:
                    req = request(f"{w:02d}")
                continue
            await synchronize(s, request(f"{w:02d}", "running", d))
            await asyncio.sleep(rng.uniform(0, 0.003))
            done = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(stdout_raw=d.hash.encode()))
            req = request(f"{w:02d}", "completed", d, response=done)

    async def reaper() -> None:
        while True:
            await rng.choice(fronts).reaper.reap()
            await asyncio.sleep(0.05)

    reap_task = asyncio.create_task(reaper())
    workers = [asyncio.create_task(worker(w)) for w in range(n_workers)]
    clients = [asyncio.create_task(client(c)) for c in range(n_frontends)]
    try:
        await asyncio.wait_for(asyncio.gather(*clients), 100)
    finally:
        stop.set()
        for t in clients:
            t.cancel()
        await asyncio.gather(*workers, *clients, return_exceptions=True)
    assert sorted(results) == list(range(n_actions))
    for n, rs in results.items():
        assert len(rs) == 1, n
        r = rs[0]
        if r.status.code == 0:
            assert r.result.stdout_raw == action(n)[0].hash.encode()
        else:  # the attempt budget ran out
            assert (
                r.status.code == 14 and "disappeared while task was executing" in r.status.message
            )
    # Nothing queued or executing; after the retention window, no key is left.
    domain = keys.domain_id("", "{}")
    assert await redis.zcard(keys.domain_key(domain, "queued")) == 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.operation_retention + 10
    while loop.time() < deadline:
        left = set(await redis.keys("redbarn:*"))
        if left <= {keys.STARTED.encode()}:
            break
        await asyncio.sleep(0.1)
    reap_task.cancel()
    assert set(await redis.keys("redbarn:*")) <= {keys.STARTED.encode()}


async def test_thousand_actions_crashing_workers(redis_url: str) -> None:
    # More coroutines than redis-py's default pool of 100: wait for a connection instead.
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=30)
    client = aioredis.Redis(connection_pool=pool)
    try:
        await _drive(client, 1000)
    finally:
        await client.aclose()
        await pool.disconnect()


async def test_crashing_workers_on_fakeredis(fake_redis: aioredis.Redis) -> None:
    # fakeredis caps its pool at 100 connections, and its Lua runs on the event loop (slow
    # enough that a short retention can pass between two touches of a busy waiter).
    await _drive(
        fake_redis, 200, per_client=4, cfg=dataclasses.replace(CFG, operation_retention=3.0)
    )
