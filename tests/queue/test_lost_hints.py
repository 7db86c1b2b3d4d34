"""A lost hint is counted, and costs its waiter one look at Redis, not a long poll
(issue 19): two schedulers with their own hubs on a real Redis, one of whose hubs drops
the hints the test names."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from qhelpers import FAST, action, assigned, execute, request, synchronize

from redbarn.frontend.hub import Hub
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import events as ev
from redbarn.queue import synchronize as synchronize_module
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import Scheduler

Stage = re_pb2.ExecutionStage
CFG = dataclasses.replace(
    FAST, idle_sync_timeout=4.0, worker_timeout=5.0, operation_retention=1.2
)  # parks of 2-4 s, so the 1 s look comes first; operation leases renewed every 0.05 s


class LossyHub(Hub):
    """A hub that drops every hint from pub/sub whose topic `drop` selects (and counts
    them); hints this frontend gives itself (script replies, bare wake-ups) still land."""

    def __init__(self, redis: aioredis.Redis, fid: str, drop: Callable[[str], bool]) -> None:
        super().__init__(redis, fid)
        self.drop = drop
        self.dropped = 0

    def _dispatch(self, data: object) -> None:
        raw = data.encode() if isinstance(data, str) else data
        if isinstance(raw, bytes) and self.drop(raw.partition(b"\x1f")[0].decode()):
            self.dropped += 1
            return
        super()._dispatch(data)

    def deliver(self, message: bytes) -> None:
        Hub._dispatch(self, message)


class Recorder(ev.NoEvents):
    def __init__(self) -> None:
        self.lost: Counter[str] = Counter()

    def hint_lost(self, waiter: str) -> None:
        self.lost[waiter] += 1


@contextlib.asynccontextmanager
async def frontend(
    redis: aioredis.Redis,
    fid: str,
    drop: Callable[[str], bool] = lambda topic: False,
    cfg: SchedulerConfig = CFG,
) -> AsyncIterator[tuple[Scheduler, LossyHub, Recorder]]:
    hub = LossyHub(redis, fid, drop)
    await hub.start()
    events = Recorder()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        yield Scheduler(redis, cfg, hints=hub, events=events), hub, events
    finally:
        await hub.stop()


async def test_a_lost_worker_hint_is_counted_and_the_worker_gets_its_action_within_a_second(
    real_redis: aioredis.Redis,
) -> None:
    """The frontend holding a parked worker never hears that another frontend's Execute
    gave it work; its one look at the worker record after 1 s finds the assignment."""
    async with (
        frontend(real_redis, "fe-hold", drop=lambda topic: topic.startswith("w ")) as held,
        frontend(real_redis, "fe-exec") as other,
    ):
        (a, hub_a, events_a), (b, _, events_b) = held, other
        await synchronize(a, request("0", prefer_idle=True))  # create the domain
        loop = asyncio.get_running_loop()
        sync = asyncio.create_task(synchronize(a, request("1")))
        await asyncio.sleep(0.2)
        t0 = loop.time()
        view = await execute(b, 1)
        assert view.stage == Stage.EXECUTING  # offered to the parked worker
        assert assigned(await asyncio.wait_for(sync, 5)) == action(1)[0]
        took = loop.time() - t0
        assert hub_a.dropped == 1
        assert took < 1.5, f"the worker waited {took:.2f} s for its action"
        assert events_a.lost == Counter({ev.HINT_WORKER: 1})
        assert not events_b.lost


async def test_a_delivered_worker_hint_is_not_counted(real_redis: aioredis.Redis) -> None:
    async with frontend(real_redis, "fe-hold2") as held, frontend(real_redis, "fe-exec2") as other:
        (a, _, events_a), (b, _, _) = held, other
        await synchronize(a, request("0", prefer_idle=True))
        sync = asyncio.create_task(synchronize(a, request("1")))
        await asyncio.sleep(0.2)
        await execute(b, 1)
        assert assigned(await asyncio.wait_for(sync, 5)) == action(1)[0]
        assert not events_a.lost


async def test_a_lost_operation_hint_is_counted_and_the_stream_moves_on(
    real_redis: aioredis.Redis,
) -> None:
    """The client's frontend streams an operation; the worker's frontend completes it and
    the completion hint is lost. The stream's next lease renewal reads the result."""
    async with (
        frontend(real_redis, "fe-client", drop=lambda topic: topic.startswith("o ")) as client,
        frontend(real_redis, "fe-worker") as workers,
    ):
        (a, hub_a, events_a), (b, _, events_b) = client, workers
        await synchronize(b, request("0", prefer_idle=True))
        first = await execute(a, 2)
        stages: list[int] = []

        async def watch() -> None:
            async for view in a.operations.watch_operation(first.name, first=first):
                stages.append(view.stage)

        streaming = asyncio.create_task(watch())
        digest = assigned(await synchronize(b, request("1")))
        assert digest == action(2)[0]
        await asyncio.sleep(0.2)
        await synchronize(b, request("1", "completed", digest, prefer_idle=True))
        await asyncio.wait_for(streaming, 5)
        assert stages[-1] == Stage.COMPLETED
        assert hub_a.dropped >= 1
        assert events_a.lost[ev.HINT_OPERATION] >= 1
        assert not events_b.lost


async def test_a_warm_worker_whose_hint_was_lost_is_found_within_one_check(
    real_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker in warm holds (answered idle, still parked in Redis) is offered work by
    another frontend and the hint is lost: the holding frontend's periodic look at its
    warm workers' records finds it, counts it and hands the worker its action, instead of
    leaving it idle until its park's lease runs out."""
    monkeypatch.setattr(synchronize_module, "WARM_CHECK", 0.3)
    cfg = dataclasses.replace(CFG, idle_sync_timeout=0.6, park_holds=30)  # an 18 s lease
    async with (
        frontend(real_redis, "fe-warm", drop=lambda topic: topic.startswith("w "), cfg=cfg) as held,
        frontend(real_redis, "fe-exec3", cfg=cfg) as other,
    ):
        (a, hub_a, events_a), (b, _, _) = held, other
        await synchronize(a, request("0", prefer_idle=True))

        async def idle_until_assigned() -> re_pb2.Digest:
            while True:
                digest = assigned(await synchronize(a, request("1")))
                if digest is not None:
                    return digest

        worker = asyncio.create_task(idle_until_assigned())
        await asyncio.sleep(1.5)  # past the first park: the worker is in warm holds now
        assert a.workers._holding or a.workers._warm, "the worker should be warm"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        view = await execute(b, 3)
        assert view.stage == Stage.EXECUTING  # offered to the (warm) parked worker
        assert await asyncio.wait_for(worker, 5) == action(3)[0]
        took = loop.time() - t0
        assert hub_a.dropped == 1
        assert took < 1.5, f"the warm worker waited {took:.2f} s for its action"
        assert events_a.lost == Counter({ev.HINT_WORKER: 1})
