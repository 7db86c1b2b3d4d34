"""One predeclared platform queue spread over several hash slots (--queue-shards, issue
19 item 7): Executes go to their digest's shard, a worker takes work from every shard,
an Execute queued where no worker is parked wakes one parked elsewhere, and drains,
kills, the reaper and the queue gauges cover every shard. Real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from qhelpers import FAST, action, assigned, execute, is_idle, make, request, synchronize
from redis.crc import key_slot

from redbarn import digests
from redbarn.config import ConfigError
from redbarn.frontend.hub import Hub
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys
from redbarn.queue import events as ev
from redbarn.queue import operations as operations_module
from redbarn.queue import synchronize as synchronize_module
from redbarn.queue.config import PredeclaredQueue, SchedulerConfig
from redbarn.queue.scheduler import Scheduler
from redbarn.queue.stats import QueueStats

Stage = re_pb2.ExecutionStage
QUEUE = PredeclaredQueue("", codec.platform_json(re_pb2.Platform()), (0,))
K = 3
CFG = dataclasses.replace(
    FAST, predeclared=(QUEUE,), queue_shards=K, operation_retention=30.0, worker_timeout=5.0
)
SHARDS = keys.shard_domains(QUEUE.domain, K)


def shard_of_action(n: int) -> int:
    return keys.shard_of(digests.key(action(n)[0]), K)


def actions_in(shard: int, count: int, start: int = 1) -> list[int]:
    out, n = [], start
    while len(out) < count:
        if shard_of_action(n) == shard:
            out.append(n)
        n += 1
    return out


def home_of(worker: str) -> int:
    return keys.shard_of(digests.worker_json({"host": "h", "thread": worker}), K)


def worker_homed(shard: int) -> str:
    return next(str(i) for i in range(1000) if home_of(str(i)) == shard)


async def records(redis: Any, worker: str) -> list[int]:
    """The shards that hold a record of `worker`."""
    wk = keys.worker_key(0, digests.worker_json({"host": "h", "thread": worker}))
    return [
        i for i, d in enumerate(SHARDS) if await redis.hexists(keys.domain_key(d, "workers"), wk)
    ]


def test_shards_are_domains_of_their_own_slots() -> None:
    assert SHARDS[0] == QUEUE.domain  # one shard is exactly the unsharded queue
    assert len(set(SHARDS)) == K
    slots = [key_slot(keys.domain_key(d, "queued").encode()) for d in SHARDS]
    # One shard in each third of the slots: on a 3-master cluster made by redis-cli
    # (equal contiguous ranges), one shard per master.
    assert sorted(slot * K // 16384 for slot in slots) == list(range(K))
    for n in (2, 4, 8):
        many = keys.shard_domains("0123456789abcdef", n)
        assert sorted(key_slot(d.encode()) * n // 16384 for d in many) == list(range(n))
    assert keys.shard_of("anything", 1) == 0
    assert CFG.shards_of(QUEUE.domain) == K and CFG.shards_of("0" * 16) == 1


def test_queue_shards_flag() -> None:
    from redbarn.frontend import cli

    parser = cli.build_parser() if hasattr(cli, "build_parser") else None
    if parser is None:
        import argparse

        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
    ok = cli.scheduler_from_args(parser.parse_args(["--queue-shards", "4"]))
    assert ok.queue_shards == 4
    for bad, why in (("0", "at least 1"), ("65", "at most 64"), ("x", "whole number")):
        with pytest.raises(ConfigError, match=f'--queue-shards "{bad}".*{why}'):
            cli.scheduler_from_args(parser.parse_args(["--queue-shards", bad]))


async def test_executes_go_to_their_digests_shard_and_dedup_stays_exact(
    real_redis: aioredis.Redis,
) -> None:
    s = make(real_redis, CFG)
    await s.start()
    names = {}
    for n in range(1, 31):
        view = await execute(s, n)
        assert view.stage == Stage.QUEUED
        domain, _ = keys.parse_operation_name(view.name) or ("", "")
        assert domain == SHARDS[shard_of_action(n)]
        names[n] = view.name
    assert {keys.parse_operation_name(v)[0] for v in names.values()} == set(SHARDS)  # type: ignore[index]
    again = await execute(s, 7)  # the same action, the same invocation: the same operation
    assert again.name == names[7]
    for i, d in enumerate(SHARDS):
        want = sum(1 for n in names if shard_of_action(n) == i)
        assert await real_redis.zcard(keys.domain_key(d, "queued")) == want
    # The gauges sum the shards into one queue.
    stats = QueueStats(real_redis, s.registry, ttl=0)
    rows = (await stats.refresh()).size_classes
    assert [(r.size_class, r.queued) for r in rows] == [(0, 30)]
    assert stats.reads == K


async def test_one_worker_drains_every_shard_and_lives_in_one_shard_at_a_time(
    real_redis: aioredis.Redis,
) -> None:
    s = make(real_redis, CFG)
    await s.start()
    worker = worker_homed(0)
    ns = [*actions_in(0, 2), *actions_in(1, 2), *actions_in(2, 2)]
    views = [await execute(s, n) for n in ns]
    done = []
    resp = await synchronize(s, request(worker))
    while (digest := assigned(resp)) is not None:
        assert len(await records(real_redis, worker)) == 1
        done.append(digest.hash)
        resp = await synchronize(s, request(worker, "completed", digest))
    assert sorted(done) == sorted(action(n)[0].hash for n in ns)
    assert is_idle(resp)
    assert await records(real_redis, worker) == [0]  # home again
    for v in views:
        assert (await s.operations.get_operation_view(v.name)).stage == Stage.COMPLETED


@contextlib.asynccontextmanager
async def frontend(
    redis: aioredis.Redis, fid: str, cfg: SchedulerConfig
) -> AsyncIterator[Scheduler]:
    hub = Hub(redis, fid)
    await hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        s = Scheduler(redis, cfg, hints=hub)
        await s.start()
        yield s
    finally:
        await hub.stop()


async def test_an_execute_queued_in_another_shard_wakes_a_parked_worker(
    real_redis: aioredis.Redis,
) -> None:
    """The worker parks at home (shard 0) on one frontend; Executes through another
    frontend land in shards 1 and 2, where nobody is parked: each wakes the worker, which
    takes it there within a moment, not at the end of its hold."""
    cfg = dataclasses.replace(CFG, idle_sync_timeout=8.0, worker_timeout=10.0)
    async with frontend(real_redis, "fe-w", cfg) as fw, frontend(real_redis, "fe-x", cfg) as fx:
        worker = worker_homed(0)
        loop = asyncio.get_running_loop()
        for shard in (1, 2):
            sync = asyncio.create_task(synchronize(fw, request(worker)))
            await asyncio.sleep(0.3)
            assert not sync.done()
            (n,) = actions_in(shard, 1, start=100 * shard)
            t0 = loop.time()
            view = await execute(fx, n)
            assert view.stage == Stage.QUEUED
            assert assigned(await asyncio.wait_for(sync, 5)) == action(n)[0]
            took = loop.time() - t0
            assert took < 1.0, f"the parked worker took {took:.2f} s to come"
            assert await records(real_redis, worker) == [shard]
            resp = await synchronize(
                fw, request(worker, "completed", action(n)[0], prefer_idle=True)
            )
            assert is_idle(resp)
            assert await records(real_redis, worker) == [0]


async def test_work_queued_elsewhere_is_taken_before_parking(real_redis: aioredis.Redis) -> None:
    """Idle at home with work only in another shard: the worker takes it at once."""
    s = make(real_redis, CFG)
    await s.start()
    worker = worker_homed(1)
    (n,) = actions_in(2, 1)
    await execute(s, n)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert assigned(await synchronize(s, request(worker))) == action(n)[0]
    assert loop.time() - t0 < CFG.idle_sync_timeout / 2


async def test_drains_and_kills_cover_every_shard(real_redis: aioredis.Redis) -> None:
    s = make(real_redis, CFG)
    await s.start()
    await s.control.set_drain(
        add=True,
        instance_name_prefix="",
        platform=re_pb2.Platform(),
        size_class=0,
        pattern={"thread": "d"},
    )
    for d in SHARDS:
        assert await real_redis.hlen(keys.domain_key(d, "drains")) == 1
    ns = [*actions_in(0, 1), *actions_in(1, 1), *actions_in(2, 1)]
    for n in ns:
        await execute(s, n)
    wk_req = request("d")
    resp = await synchronize(s, wk_req)
    assert is_idle(resp)  # drained: offered nothing in any shard
    # Kill the queued work of the (worker-less once "d" is gone) size class.
    status = re_pb2.ExecuteResponse().status
    status.code, status.message = 14, "killed"
    await asyncio.sleep(CFG.worker_timeout + 0.2)
    await s.reaper.reap()
    killed = await s.control.kill_queued_operations(
        instance_name_prefix="", platform=re_pb2.Platform(), size_class=0, status=status
    )
    assert killed == 3
    for d in SHARDS:
        assert await real_redis.zcard(keys.domain_key(d, "queued")) == 0


async def test_a_lost_worker_is_reaped_in_the_shard_of_its_work(
    real_redis: aioredis.Redis,
) -> None:
    """A worker dies running work it took from another shard: the reaper, which walks
    every shard, gives that work to the next worker."""
    cfg = dataclasses.replace(CFG, worker_timeout=0.5)
    s = make(real_redis, cfg)
    await s.start()
    (n,) = actions_in(2, 1)
    view = await execute(s, n)
    first = worker_homed(0)
    assert assigned(await synchronize(s, request(first))) == action(n)[0]
    await asyncio.sleep(0.8)
    totals = await s.reaper.reap()
    assert totals.workers >= 1
    assert assigned(await synchronize(s, request(worker_homed(1)))) == action(n)[0]
    assert (await s.operations.get_operation_view(view.name)).stage == Stage.EXECUTING


async def test_executes_in_a_quiet_period_are_woken_for_at_its_end(
    real_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody parked anywhere: the wake pass finds no one, and the Executes of the next
    WAKE_QUIET seconds skip theirs. A worker that parked before such an Execute (so its
    own look at the other shards found nothing) is woken by the pass at the period's
    end, not left for the rest of its hold."""
    monkeypatch.setattr(operations_module, "WAKE_QUIET", 0.5)
    cfg = dataclasses.replace(CFG, idle_sync_timeout=8.0, worker_timeout=10.0)
    async with frontend(real_redis, "fe-q", cfg) as s:
        (a,) = actions_in(1, 1, start=300)
        (b,) = actions_in(2, 1, start=300)
        assert (await execute(s, a)).stage == Stage.QUEUED  # a pass that finds no one
        busy = worker_homed(1)
        assert assigned(await synchronize(s, request(busy))) == action(a)[0]
        parked = asyncio.create_task(synchronize(s, request(worker_homed(0))))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (await execute(s, b)).stage == Stage.QUEUED  # in the quiet period
        assert assigned(await asyncio.wait_for(parked, 5)) == action(b)[0]
        took = loop.time() - t0
        assert took < 1.5, f"the parked worker waited {took:.2f} s"


async def test_a_lost_wake_is_found_by_the_shard_check_and_counted(
    real_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake hint to the frontend holding the parked worker is lost: its periodic look
    at the other shards finds the queued work, wakes the worker and counts a lost hint."""
    monkeypatch.setattr(synchronize_module, "WARM_CHECK", 0.3)
    cfg = dataclasses.replace(CFG, idle_sync_timeout=8.0, worker_timeout=10.0)
    async with (
        lossy(real_redis, "fe-lw", cfg, drop=lambda topic: topic.startswith("w ")) as (fw, ew),
        lossy(real_redis, "fe-lx", cfg) as (fx, _),
    ):
        parked = asyncio.create_task(synchronize(fw, request(worker_homed(0))))
        await asyncio.sleep(0.2)
        (n,) = actions_in(1, 1, start=500)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (await execute(fx, n)).stage == Stage.QUEUED
        assert assigned(await asyncio.wait_for(parked, 5)) == action(n)[0]
        took = loop.time() - t0
        assert took < 1.5, f"the parked worker waited {took:.2f} s"
        assert ew.lost[ev.HINT_WORKER] >= 1


@contextlib.asynccontextmanager
async def lossy(
    redis: aioredis.Redis, fid: str, cfg: SchedulerConfig, drop: Any = lambda topic: False
) -> AsyncIterator[tuple[Scheduler, Any]]:
    from test_lost_hints import LossyHub, Recorder

    hub = LossyHub(redis, fid, drop)
    await hub.start()
    events = Recorder()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        s = Scheduler(redis, cfg, hints=hub, events=events)
        await s.start()
        yield s, events
    finally:
        await hub.stop()
