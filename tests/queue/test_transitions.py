"""Every scheduler transition, on the private redis-server and on fakeredis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.rpc import status_pb2
from qhelpers import (
    FAST,
    action,
    assigned,
    execute,
    is_continue,
    is_idle,
    make,
    md,
    request,
    synchronize,
)

from redbarn.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from redbarn.frontend.hub import Hub
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys
from redbarn.queue.scheduler import PollingHints, Scheduler

Stage = re_pb2.ExecutionStage
OK = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0))
FAIL = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=1))
SCQ0 = bq_pb2.SizeClassQueueName(platform_queue_name=bq_pb2.PlatformQueueName(), size_class=0)


async def test_no_workers_grace_then_failed_precondition(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await s.start()
    with pytest.raises(
        Unavailable, match=r'No workers exist for instance name prefix "main" platform \{\}'
    ):
        await execute(s, 1, instance="main")
    await any_redis.set(keys.STARTED, str(await s.registry.now_ms() - 10_000))
    with pytest.raises(FailedPrecondition) as err:
        await execute(s, 1, instance="main")
    assert err.value.message == 'No workers exist for instance name prefix "main" platform {}'


async def test_platform_and_prefix_matching(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    linux = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="os", value="linux")])
    await synchronize(s, request("1", prefix="main", platform=linux))
    await synchronize(s, request("2", prefix="", platform=linux))
    digest, a = action(1, platform=linux)
    v = await s.operations.execute(
        instance_name="main/sub", action_digest=digest, action=a, digest_function=1
    )
    resp = await synchronize(s, request("1", prefix="main", platform=linux))
    assert assigned(resp) == digest
    assert resp.desired_state.executing.instance_name_suffix == "sub"
    assert v.stage == Stage.QUEUED
    await s.start()
    await any_redis.set(keys.STARTED, "0")
    with pytest.raises(FailedPrecondition, match=r'"mainx" platform \{\}$'):
        await execute(s, 2, instance="mainx")  # empty platform: no queue has it
    # "mainx" is not under "main": the "" queue takes it.
    digest, a = action(3, platform=linux)
    await s.operations.execute(
        instance_name="mainx", action_digest=digest, action=a, digest_function=1
    )
    assert assigned(await synchronize(s, request("2", prefix="", platform=linux))) == digest


async def test_validation_errors(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    bad = re_pb2.Platform(
        properties=[
            re_pb2.Platform.Property(name="os", value="x"),
            re_pb2.Platform.Property(name="cpu", value="y"),
        ]
    )
    with pytest.raises(
        InvalidArgument, match="Platform properties are not lexicographically sorted"
    ):
        await execute(s, 1, platform=bad)
    with pytest.raises(InvalidArgument) as err:
        await execute(s, 1, timeout=9000)
    assert err.value.message == (
        "Failed to route action: Failed to analyze initial size class: "
        "Execution timeout of 2h30m0s is outside permitted range [0s, 2h0m0s]"
    )
    v = await execute(s, 2, timeout=0)
    assert v.stage == Stage.QUEUED
    with pytest.raises(InvalidArgument, match="Worker did not provide its current state"):
        req = request("1")
        req.ClearField("current_state")
        await synchronize(s, req)


async def test_dedup_same_and_other_invocation(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    a = await execute(s, 1, tool="A")
    a2 = await execute(s, 1, tool="A")
    b = await execute(s, 1, tool="B")
    assert a.name == a2.name
    assert b.name != a.name
    other = await execute(s, 1, instance="other", tool="A")
    assert other.name != a.name  # the instance name is part of the dedup key
    digest, _ = action(1)
    resp = await synchronize(s, request("1"))
    assert assigned(resp) == digest
    assert (await s.operations.get_operation_view(b.name)).stage == Stage.EXECUTING
    await synchronize(s, request("1", "completed", digest, response=OK))
    for name in (a.name, b.name):
        v = await s.operations.get_operation_view(name)
        assert v.done and v.response == OK
    # The completion report was answered with the next queued task: the other instance's.
    assert (await s.operations.get_operation_view(other.name)).stage == Stage.EXECUTING
    # After completion a new Execute creates a fresh task.
    again = await execute(s, 1, tool="A")
    assert again.name != a.name and again.stage == Stage.QUEUED


async def test_do_not_cache_is_not_deduplicated(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    a = await execute(s, 1, do_not_cache=True)
    b = await execute(s, 1, do_not_cache=True)
    assert a.name != b.name


async def test_fairness_between_invocations_and_priority(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    names = {}
    for i in range(4):
        names[(await execute(s, 100 + i, tool="A")).name] = ("A", i)
    for i in range(4):
        names[(await execute(s, 200 + i, tool="B")).name] = ("B", i)
    urgent = await execute(s, 300, tool="C", priority=-200)
    order = []
    digests = {action(n)[0].hash: n for n in [*range(100, 104), *range(200, 204), 300]}
    resp = await synchronize(s, request("1"))
    while assigned(resp) is not None:
        d = assigned(resp)
        assert d is not None
        order.append(digests[d.hash])
        resp = await synchronize(s, request("1", "completed", d, response=OK))
    assert order[0] == 300
    assert order[1:] == [100, 200, 101, 201, 102, 202, 103, 203]
    assert (await s.operations.get_operation_view(urgent.name)).done


async def test_priority_then_fifo_within_invocation(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    for n, prio in [(1, 5), (2, 0), (3, 5), (4, -1)]:
        await execute(s, n, tool="A", priority=prio)
    order = []
    resp = await synchronize(s, request("1"))
    by_hash = {action(n)[0].hash: n for n in range(1, 5)}
    while (d := assigned(resp)) is not None:
        order.append(by_hash[d.hash])
        resp = await synchronize(s, request("1", "completed", d, response=OK))
    assert order == [4, 2, 1, 3]


async def test_executing_count_steers_workers(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    for w in "123":
        await synchronize(s, request(w))
    for i in range(3):
        await execute(s, 10 + i, tool="A")
    await execute(s, 20, tool="B")
    got = []
    for w in "123":
        d = assigned(await synchronize(s, request(w)))
        assert d is not None
        got.append(d.hash)
    # A got one worker, then B (score 1 vs 2), then A again.
    assert got == [action(10)[0].hash, action(20)[0].hash, action(11)[0].hash]


async def test_park_and_direct_assignment(any_redis: aioredis.Redis) -> None:
    cfg = dataclasses.replace(FAST, idle_sync_timeout=1.0)
    s = Scheduler(any_redis, cfg, hints=PollingHints(step=10.0))
    await synchronize(s, request("0", prefer_idle=True))  # create the domain
    sync = asyncio.create_task(synchronize(s, request("1")))
    await asyncio.sleep(0.1)
    with pytest.raises(ResourceExhausted, match="same worker ID is already synchronizing"):
        await synchronize(make(any_redis), request("1"))
    digest, _ = action(1)
    view = await execute(s, 1)
    assert view.stage == Stage.EXECUTING  # handed straight to the parked worker
    assert assigned(await sync) == digest


@contextlib.asynccontextmanager
async def subscribed_hub(redis: aioredis.Redis, fid: str) -> AsyncIterator[Hub]:
    """A running hint hub for frontend `fid`, subscribed before the body starts."""
    hub = Hub(redis, fid)
    await hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 5)
        yield hub
    finally:
        await hub.stop()


async def test_a_worker_parked_on_a_gone_frontend_comes_back_through_another(
    any_redis: aioredis.Redis,
) -> None:
    """R38 refuses a second Synchronize of a parked worker, but not when the frontend
    holding the park is gone (it listens on no channel): a frontend killed while its
    workers were parked must not lock them out until their leases run out."""
    cfg = dataclasses.replace(FAST, idle_sync_timeout=5.0)
    gone = Scheduler(any_redis, cfg, hints=PollingHints(fid="fe-gone", step=10.0))
    await synchronize(gone, request("0", prefer_idle=True))  # create the domain
    stale = asyncio.create_task(synchronize(gone, request("1")))
    await asyncio.sleep(0.1)
    try:
        async with subscribed_hub(any_redis, "fe-b") as hub:
            b = Scheduler(any_redis, cfg, hints=hub)
            back = asyncio.create_task(synchronize(b, request("1")))
            await asyncio.sleep(0.1)
            assert not back.done(), "the worker should be parked on fe-b now"
            view = await execute(b, 1)
            assert view.stage == Stage.EXECUTING
            assert assigned(await back) == action(1)[0]
    finally:
        stale.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stale

    # While the holding frontend listens, the duplicate is refused as before.
    async with subscribed_hub(any_redis, "fe-live") as live_hub:
        live = Scheduler(any_redis, cfg, hints=live_hub)
        held = asyncio.create_task(synchronize(live, request("2")))
        await asyncio.sleep(0.1)
        try:
            async with subscribed_hub(any_redis, "fe-c") as hub_c:
                with pytest.raises(ResourceExhausted, match="same worker ID"):
                    await synchronize(Scheduler(any_redis, cfg, hints=hub_c), request("2"))
        finally:
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held


def watch_stages(s: Scheduler, first: Any) -> tuple[asyncio.Task[None], list[int]]:
    """Stream `first`'s operation in the background; the list fills with its stages."""
    stages: list[int] = []

    async def watch() -> None:
        async for view in s.operations.watch_operation(first.name, first=first):
            stages.append(view.stage)

    return asyncio.create_task(watch()), stages


def wk_of(thread: str) -> str:
    """The worker key of `request(thread)`'s worker."""
    return keys.worker_key(0, codec.worker_json({"host": "h", "thread": thread}))


async def test_hint_wakes_parked_worker(real_redis: aioredis.Redis) -> None:
    async with subscribed_hub(real_redis, "fe1") as hub:
        s = Scheduler(real_redis, dataclasses.replace(FAST, idle_sync_timeout=5.0), hints=hub)
        await synchronize(s, request("0", prefer_idle=True))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sync = asyncio.create_task(synchronize(s, request("1")))
        await asyncio.sleep(0.1)
        calls = s.scripts.calls
        await execute(make(real_redis), 1)
        assert assigned(await sync) == action(1)[0]
        assert loop.time() - t0 < 1.0
        # The hint carried the assignment: no unpark round trip, and the worker has
        # already left the parked state in Redis.
        assert s.scripts.calls == calls
        domain = keys.domain_id("", codec.platform_json(re_pb2.Platform()))
        assert await real_redis.zcard(keys.domain_key(domain, "parked")) == 0
        record = await real_redis.hget(keys.domain_key(domain, "workers"), wk_of("1"))
        assert codec.WorkerRecord.parse(record).holder == ""


async def test_a_worker_hint_from_before_the_park_is_not_taken(real_redis: aioredis.Redis) -> None:
    """A hint that outlived an earlier Synchronize (kept by the hub for a moment) must not
    answer a later park with that old assignment: it is re-read from Redis instead."""
    async with subscribed_hub(real_redis, "fe3") as hub:
        s = Scheduler(real_redis, dataclasses.replace(FAST, idle_sync_timeout=0.4), hints=hub)
        await synchronize(s, request("0", prefer_idle=True))
        domain = keys.domain_id("", codec.platform_json(re_pb2.Platform()))
        stale = b"1\x1ft999\x1f1\x1f0\x1f0\x1f"
        hub.notify(keys.worker_topic(domain, wk_of("1")), stale)
        assert is_idle(await synchronize(s, request("1")))


async def test_prefer_being_idle(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    await execute(s, 1)
    resp = await synchronize(s, request("1", prefer_idle=True))
    assert is_idle(resp)
    assert abs(resp.next_synchronization_at.seconds - (await s.registry.now_ms()) // 1000) <= 1
    d = assigned(await synchronize(s, request("1")))
    assert d is not None
    assert is_continue(await synchronize(s, request("1", "running", d, prefer_idle=True)))
    assert is_idle(
        await synchronize(s, request("1", "completed", d, response=OK, prefer_idle=True))
    )


async def test_progress_for_other_digest_gets_idle_without_blocking(
    any_redis: aioredis.Redis,
) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    stale, _ = action(99)
    resp = await synchronize(s, request("1", "running", stale))
    assert is_idle(resp)
    await execute(s, 1)
    resp = await synchronize(s, request("1", "running", stale))
    assert assigned(resp) == action(1)[0]


async def test_rehand_limit_then_internal(any_redis: aioredis.Redis) -> None:
    # Re-hands also spend attempts; with a budget above the re-hand limit, Buildbarn's
    # INTERNAL crash-loop message is what ends it.
    s = make(any_redis, dataclasses.replace(FAST, max_attempts=20))
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    d = action(1)[0]
    for _ in range(10):  # first assignment + 9 re-hands
        assert assigned(await synchronize(s, request("1"))) == d
    assert is_idle(await synchronize(s, request("1")))
    done = await s.operations.get_operation_view(v.name)
    assert done.response is not None
    assert done.response.status.code == 13
    assert done.response.status.message == (
        "Attempted to execute task 10 times, but it never completed. "
        'This task may cause worker {"host":"h","thread":"1"} to crash.'
    )


async def test_rehands_spend_the_attempt_budget(any_redis: aioredis.Redis) -> None:
    s = make(any_redis, dataclasses.replace(FAST, max_attempts=3))
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    d = action(1)[0]
    for _ in range(3):  # first assignment + 2 re-hands = 3 attempts
        assert assigned(await synchronize(s, request("1"))) == d
    assert is_idle(await synchronize(s, request("1")))
    done = await s.operations.get_operation_view(v.name)
    assert done.response is not None and done.response.status.code == 14
    assert "(attempt 3 of 3, action " in done.response.status.message


async def test_worker_back_without_its_started_task_spends_an_attempt(
    any_redis: aioredis.Redis,
) -> None:
    """A worker that reported progress and then reports idle lost the action (it was
    restarted): that is a lost attempt, not a lost response to re-hand nine times."""
    cfg = dataclasses.replace(FAST, max_attempts=2)
    s = make(any_redis, cfg)
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    d = action(1)[0]
    for attempt in (1, 2):
        assert assigned(await synchronize(s, request("1"))) == d, attempt
        await synchronize(s, request("1", "running", d))
    # Back once more without it: the budget of two attempts is spent.
    assert is_idle(await synchronize(s, request("1")))
    done = await s.operations.get_operation_view(v.name)
    assert done.response is not None and done.response.status.code == 14
    assert "disappeared while task was executing (attempt 2 of 2" in done.response.status.message


async def test_lost_worker_requeued_then_failed_and_zombie_dropped(
    any_redis: aioredis.Redis,
) -> None:
    cfg = dataclasses.replace(FAST, max_attempts=2, operation_retention=30)
    s = make(any_redis, cfg)
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    d = action(1)[0]
    assert assigned(await synchronize(s, request("1"))) == d
    await asyncio.sleep(0.35)
    assert (await s.reaper.reap()).workers == 1
    view = await s.operations.get_operation_view(v.name)
    assert view.stage == Stage.QUEUED
    assert view.queued_ms == v.queued_ms  # original queued time kept
    assert assigned(await synchronize(s, request("2"))) == d
    # Worker 1 comes back as a zombie and reports the old completion: dropped.
    await synchronize(s, request("1", "completed", d, response=FAIL))
    assert (await s.operations.get_operation_view(v.name)).stage == Stage.EXECUTING
    await asyncio.sleep(0.35)
    await s.reaper.reap()
    done = await s.operations.get_operation_view(v.name)
    assert done.done and done.response is not None
    assert done.response.status.code == 14
    assert done.response.status.message == (
        'Worker {"host":"h","thread":"2"} disappeared while task was executing '
        f"(attempt 2 of 2, action {d.hash}-{d.size_bytes})"
    )


async def test_operation_without_waiters_is_cancelled(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    queued = await execute(s, 1)
    running = await execute(s, 2, tool="other")
    d = assigned(await synchronize(s, request("1")))
    assert d is not None
    await asyncio.sleep(0.6)
    await s.reaper.reap()
    for name in (queued.name, running.name):
        with pytest.raises(NotFound, match=f'Operation with name "{name}" not found'):
            await s.operations.get_operation_view(name)
    # The worker running the abandoned task is told to go idle.
    assert is_idle(await synchronize(s, request("1", "running", d)))
    assert await any_redis.zcard(keys.domain_key(queued.name.split(".")[0], "queued")) == 0


async def test_completed_operation_kept_while_watched_then_deleted(
    any_redis: aioredis.Redis,
) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    d = assigned(await synchronize(s, request("1")))
    assert d is not None
    await synchronize(s, request("1", "completed", d, response=OK))
    for _ in range(4):
        await asyncio.sleep(0.2)
        await s.reaper.reap()
        assert (await s.operations.get_operation_view(v.name)).done
    await asyncio.sleep(0.6)
    await s.reaper.reap()
    with pytest.raises(NotFound):
        await s.operations.get_operation_view(v.name)
    domain = v.name.split(".")[0]
    for what in ("tasks", "ops", "opgc", "opnames", "queued", "pick", "inv", "inflight"):
        assert not await any_redis.exists(keys.domain_key(domain, what)), what


async def test_watch_operation_stream(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    stages = []

    async def watch() -> None:
        async for view in s.operations.watch_operation(v.name):
            stages.append(view.stage)

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.1)
    d = assigned(await synchronize(s, request("1")))
    assert d is not None
    await asyncio.sleep(0.1)
    await synchronize(s, request("1", "completed", d, response=OK))
    await asyncio.wait_for(task, 2)
    assert stages == [Stage.QUEUED, Stage.EXECUTING, Stage.COMPLETED]


async def test_size_class_fallback_runs_once_on_largest(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("small", size_class=1))
    await synchronize(s, request("big", size_class=4))
    v = await execute(s, 1)
    d = action(1)[0]
    assert assigned(await synchronize(s, request("big", size_class=4))) is None
    assert assigned(await synchronize(s, request("small", size_class=1))) == d
    await synchronize(s, request("small", "completed", d, response=FAIL, size_class=1))
    view = await s.operations.get_operation_view(v.name)
    assert view.stage == Stage.QUEUED and view.size_class == 4
    assert assigned(await synchronize(s, request("big", size_class=4))) == d
    await synchronize(s, request("big", "completed", d, response=FAIL, size_class=4))
    done = await s.operations.get_operation_view(v.name)
    assert done.done and done.response == FAIL


async def test_drains(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    await synchronize(s, request("2"))
    await s.control.set_drain(
        add=True,
        instance_name_prefix="",
        platform=re_pb2.Platform(),
        size_class=0,
        pattern={"thread": "1"},
    )
    drains = await s.admin.list_drains(bq_pb2.ListDrainsRequest(size_class_queue_name=SCQ0))
    assert [dict(d.worker_id_pattern) for d in drains.drains] == [{"thread": "1"}]
    await execute(s, 1)
    assert is_idle(await synchronize(s, request("1")))
    assert assigned(await synchronize(s, request("2"))) == action(1)[0]
    await execute(s, 2)
    await s.control.set_drain(
        add=False,
        instance_name_prefix="",
        platform=re_pb2.Platform(),
        size_class=0,
        pattern={"thread": "1"},
    )
    assert assigned(await synchronize(s, request("1"))) == action(2)[0]
    with pytest.raises(NotFound, match="Size class queue not found"):
        await s.control.set_drain(
            add=True, instance_name_prefix="x", platform=re_pb2.Platform(), size_class=0, pattern={}
        )


async def test_kill_operations(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    running = await execute(s, 1)
    queued = await execute(s, 2)
    d = assigned(await synchronize(s, request("1")))
    assert d is not None
    status = status_pb2.Status(code=10, message="killed by admin")
    await s.control.kill_operation(queued.name, status)
    await s.control.kill_operation(running.name, status)
    for name in (queued.name, running.name):
        v = await s.operations.get_operation_view(name)
        assert v.done and v.response is not None and v.response.status == status
    assert is_idle(await synchronize(s, request("1", "running", d)))
    with pytest.raises(NotFound, match='Operation "nope" not found'):
        await s.control.kill_operation("nope", status)


async def test_kill_queued_operations_of_workerless_queue(any_redis: aioredis.Redis) -> None:
    s = make(any_redis, dataclasses.replace(FAST, platform_queue_timeout=60))
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    status = status_pb2.Status(code=10, message="gone")
    kw = {
        "instance_name_prefix": "",
        "platform": re_pb2.Platform(),
        "size_class": 0,
        "status": status,
    }
    with pytest.raises(FailedPrecondition, match="still has workers"):
        await s.control.kill_queued_operations(**kw)  # type: ignore[arg-type]
    await asyncio.sleep(0.35)
    await s.reaper.reap()
    assert await s.control.kill_queued_operations(**kw) == 1  # type: ignore[arg-type]
    assert (await s.operations.get_operation_view(v.name)).done


async def test_workerless_size_class_queue_is_removed(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    await asyncio.sleep(0.35)
    await s.reaper.reap()  # worker gone; queue removal scheduled
    assert (await s.operations.get_operation_view(v.name)).stage == Stage.QUEUED
    for _ in range(3):  # keep watching while the queue's removal comes due
        await asyncio.sleep(0.2)
        await s.operations.get_operation_view(v.name)
    await s.reaper.reap()
    done = await s.operations.get_operation_view(v.name)
    assert done.response is not None and done.response.status.code == 14
    assert done.response.status.message == (
        "Workers for this instance name, platform and size class disappeared while task was queued"
    )
    await asyncio.sleep(0.6)
    totals = await s.reaper.reap()
    assert totals.domains_removed == 1
    assert await any_redis.keys("redbarn:v1:{*") == []


async def test_queue_depth_cap(any_redis: aioredis.Redis) -> None:
    s = make(any_redis, dataclasses.replace(FAST, max_queued_per_platform=2))
    await synchronize(s, request("1"))
    await execute(s, 1)
    await execute(s, 2)
    with pytest.raises(ResourceExhausted):
        await execute(s, 3)


async def test_terminate_workers(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    await execute(s, 1)
    await execute(s, 2)
    d = assigned(await synchronize(s, request("1")))
    assert d is not None
    waiter = asyncio.create_task(s.control.terminate_workers({"thread": "1"}, poll=0.02))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    assert is_idle(await synchronize(s, request("1", "completed", d, response=OK)))
    assert await asyncio.wait_for(waiter, 2) == 1


async def test_invocation_levels(any_redis: aioredis.Redis) -> None:
    s = make(any_redis, dataclasses.replace(FAST, invocation_keys=("c", "t")))
    await synchronize(s, request("1"))
    digest, a = action(1)
    v = await s.operations.execute(
        instance_name="",
        action_digest=digest,
        action=a,
        digest_function=1,
        request_metadata=md("tool/1", "build 7"),
    )
    assert v.invocation == (("c", "build 7"), ("t", "tool/1"))
    raw = await any_redis.hgetall(keys.PLATFORMS)
    assert json.loads(next(iter(raw.values()))) == {"instance_name_prefix": "", "platform": "{}"}

    # Without the correlated level, the tool invocation sits right under the root.
    v2 = await execute(make(any_redis), 2, tool="x")
    assert v2.invocation == (("t", "x"),)

    # Levels in the configured order (Buildbarn: invocation key extractors, outermost
    # first), and none at all: one flat queue at the root, which still runs.
    flipped = make(any_redis, dataclasses.replace(FAST, invocation_keys=("t", "c")))
    digest3, a3 = action(3)
    v3 = await flipped.operations.execute(
        instance_name="", action_digest=digest3, action=a3, digest_function=1,
        request_metadata=md("tool/3", "build 9"),
    )  # fmt: skip
    assert v3.invocation == (("t", "tool/3"), ("c", "build 9"))
    flat = make(any_redis, dataclasses.replace(FAST, invocation_keys=()))
    v4 = await execute(flat, 4, tool="y")
    assert v4.invocation == ()
    ran = []
    d = assigned(await synchronize(s, request("1")))
    while d is not None:  # a completion report is answered with the next task
        ran.append(d.hash)
        d = assigned(await synchronize(s, request("1", "completed", d, response=OK)))
    assert action(4)[0].hash in ran and len(ran) == 4, ran


async def test_cancelled_park_leaves_the_parked_set(any_redis: aioredis.Redis) -> None:
    s = Scheduler(
        any_redis, dataclasses.replace(FAST, idle_sync_timeout=5.0), hints=PollingHints(step=10.0)
    )
    await synchronize(s, request("0", prefer_idle=True))
    parked = asyncio.create_task(synchronize(s, request("1")))
    await asyncio.sleep(0.1)
    domain = keys.domain_id("", "{}")
    assert await any_redis.zcard(keys.domain_key(domain, "parked")) == 1
    parked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await parked
    assert await any_redis.zcard(keys.domain_key(domain, "parked")) == 0
    # The worker may synchronize again at once (no "already synchronizing").
    await execute(s, 1)
    assert assigned(await synchronize(s, request("1"))) == action(1)[0]


async def test_operation_hint_wakes_stream(real_redis: aioredis.Redis) -> None:
    async with subscribed_hub(real_redis, "fe2") as hub:
        s = Scheduler(real_redis, dataclasses.replace(FAST, waiter_poll_interval=30.0), hints=hub)
        await synchronize(s, request("1"))
        v = await execute(s, 1)
        task, stages = watch_stages(s, v)
        await asyncio.sleep(0.1)
        other = make(real_redis)  # another frontend does the worker's side
        d = assigned(await synchronize(other, request("1")))
        assert d is not None
        await asyncio.sleep(0.1)
        calls = s.scripts.calls
        await synchronize(other, request("1", "completed", d, response=OK))
        await asyncio.wait_for(task, 2)  # woken by hints, not by the 30 s poll
        assert stages == [Stage.QUEUED, Stage.EXECUTING, Stage.COMPLETED]
        assert s.scripts.calls == calls  # the hints carried the states: nothing re-read


class _DeafHints(PollingHints):
    """Hints that never arrive: the parked call must still find its assignment soon."""

    async def wait(self, topic: str, timeout: float) -> bytes | None:
        await asyncio.sleep(timeout)
        return None


async def test_lost_wake_hint_costs_at_most_a_second(any_redis: aioredis.Redis) -> None:
    s = Scheduler(any_redis, dataclasses.replace(FAST, idle_sync_timeout=30.0), hints=_DeafHints())
    await synchronize(s, request("0", prefer_idle=True))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sync = asyncio.create_task(synchronize(s, request("1")))
    await asyncio.sleep(0.1)
    await execute(make(any_redis), 1)
    assert assigned(await asyncio.wait_for(sync, 5)) == action(1)[0]
    assert loop.time() - t0 < 2.0


def test_operation_hint_payloads_apply_only_forwards() -> None:
    """A hint's state replaces the view only when it is newer; malformed ones are ignored."""
    from redbarn.queue.scheduler import OperationView

    view = OperationView(
        name="d.op", stage=Stage.QUEUED, action_digest=re_pb2.Digest(), digest_function=1,
        response=None, queued_ms=0, size_class=0, priority=0, invocation=(), worker="",
        gc_deadline_ms=None, now_ms=0, now_us=1_000,
    )  # fmt: skip
    wk = keys.worker_key(0, '{"host":"h"}').encode()
    running = view.updated(b"2000\x1fx\x1fs5 r7 \x1f" + wk + b"\x1f")
    assert running is not None
    assert (running.stage, running.worker_stages, running.worker) == (
        Stage.EXECUTING, "s5 r7 ", '{"host":"h"}'
    )  # fmt: skip
    assert running.updated(b"1500\x1fq\x1f\x1f\x1f") is None  # older than the view
    result = b"R" + re_pb2.ExecuteResponse(message="hi").SerializeToString()
    done = running.updated(b"3000\x1fd\x1f\x1f" + wk + b"\x1f" + result)
    assert done is not None and done.done and done.response.message == "hi"  # type: ignore[union-attr]
    failed = running.updated(b"3000\x1fd\x1f\x1f\x1fE14\x1fWorker gone")
    assert failed is not None and failed.response.status.code == 14  # type: ignore[union-attr]
    for bad in (b"", b"junk", b"x\x1fq\x1f\x1f\x1f", b"4000\x1fz\x1f\x1f\x1f"):
        assert view.updated(bad) is None


async def test_enqueue_checks_required_blobs_first(any_redis: aioredis.Redis) -> None:
    """Required blobs (the CAS in the same Redis) are touched in the enqueue script: any
    missing one stops it (MissingBlobs, by position), present ones get their TTL back."""
    from redbarn.queue.scheduler import MissingBlobs
    from redbarn.queue.scripts import RequiredBlobs

    s = make(any_redis)
    await synchronize(s, request("1", prefer_idle=True))
    digest, a = action(1)
    await any_redis.set("cas:{a}:1", b"x", px=1000)
    await any_redis.set("cas:{b}:2", b"y", px=1000)
    await any_redis.set("cas:{b}:2:c0", b"y", px=1000)
    needed = [["cas:{a}:1"], ["cas:{gone}:3"], ["cas:{b}:2", "cas:{b}:2:c0", "cas:{b}:2:c1"]]
    with pytest.raises(MissingBlobs) as err:
        await s.operations.execute(
            instance_name="", action_digest=digest, action=a, digest_function=1,
            required=RequiredBlobs(keys=needed, ttl_ms=600_000),
        )  # fmt: skip
    assert err.value.positions == [1, 2]  # a chunk missing makes the blob missing
    domain = keys.domain_id("", codec.platform_json(re_pb2.Platform()))
    assert await any_redis.hlen(keys.domain_key(domain, "ops")) == 0
    view = await s.operations.execute(
        instance_name="", action_digest=digest, action=a, digest_function=1,
        required=RequiredBlobs(keys=[["cas:{a}:1"], ["cas:{b}:2", "cas:{b}:2:c0"]], ttl_ms=600_000),
    )  # fmt: skip
    assert view.stage == Stage.QUEUED
    assert await any_redis.pttl("cas:{a}:1") > 500_000
    assert await any_redis.pttl("cas:{b}:2:c0") > 500_000


async def test_hints_for_the_calling_frontend_come_back_in_the_reply(
    real_redis: aioredis.Redis,
) -> None:
    """Execute, the parked worker's wake-up, its completion and the stream all on one
    frontend: every hint travels in a script reply, none over pub/sub."""

    async def publishes() -> int:
        stats = await real_redis.info("commandstats")
        return int(stats.get("cmdstat_publish", {}).get("calls", 0))

    async with subscribed_hub(real_redis, "fe5") as hub:
        s = Scheduler(
            real_redis,
            dataclasses.replace(FAST, idle_sync_timeout=5.0, waiter_poll_interval=30.0),
            hints=hub,
        )
        await synchronize(s, request("0", prefer_idle=True))
        sync = asyncio.create_task(synchronize(s, request("1")))
        await asyncio.sleep(0.1)
        before = await publishes()
        view = await execute(s, 1)
        d = assigned(await asyncio.wait_for(sync, 2))
        assert d == action(1)[0]
        task, stages = watch_stages(s, view)
        await asyncio.sleep(0.1)
        await synchronize(s, request("1", "completed", d, response=OK, prefer_idle=True))
        await asyncio.wait_for(task, 2)  # woken at once, not by the 30 s poll
        assert stages == [Stage.EXECUTING, Stage.COMPLETED]
        assert await publishes() == before
