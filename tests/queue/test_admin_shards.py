"""BuildQueueState over a sharded platform queue (--queue-shards): the operator sees one
platform queue, as bb_scheduler shows it, whatever shard its work and workers are in.
Real Redis."""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis
from qhelpers import FAST, action, assigned, execute, make, request, synchronize

from redbarn import digests
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys
from redbarn.queue.admin import invocation_id
from redbarn.queue.config import PredeclaredQueue
from redbarn.queue.scheduler import Scheduler

K = 3
QUEUE = PredeclaredQueue("", codec.platform_json(re_pb2.Platform()), (0,))
CFG = dataclasses.replace(
    FAST, predeclared=(QUEUE,), queue_shards=K, operation_retention=30.0, worker_timeout=5.0
)
SHARDS = keys.shard_domains(QUEUE.domain, K)
SCQ = bq_pb2.SizeClassQueueName(platform_queue_name=bq_pb2.PlatformQueueName(), size_class=0)
ALL = bq_pb2.ListWorkersRequest.Filter(all=SCQ)


def actions_in(shard: int, count: int, start: int = 1) -> list[int]:
    """The first `count` action numbers from `start` whose digests go to `shard`."""
    out, n = [], start
    while len(out) < count:
        if keys.shard_of(digests.key(action(n)[0]), K) == shard:
            out.append(n)
        n += 1
    return out


def worker_homed(shard: int) -> str:
    def home(w: str) -> int:
        return keys.shard_of(digests.worker_json({"host": "h", "thread": w}), K)

    return next(str(i) for i in range(1000) if home(str(i)) == shard)


def inv(*tools: str) -> bq_pb2.InvocationName:
    return bq_pb2.InvocationName(
        size_class_queue_name=SCQ, ids=[invocation_id("t", t) for t in tools]
    )


def shard_of_name(name: str) -> int:
    parsed = keys.parse_operation_name(name)
    assert parsed is not None
    return SHARDS.index(parsed[0])


async def _scheduler(redis: aioredis.Redis) -> tuple[Scheduler, str, list[int], list[str]]:
    """A worker homed in shard 0 executing invocation B's action of shard 2, and six
    actions of invocation A queued, two per shard, priorities interleaving the shards.
    Returns the scheduler, the worker, A's actions in scheduling order and every name."""
    s = make(redis, CFG)
    await s.start()
    (b,) = actions_in(2, 1, start=100)
    b_name = (await execute(s, b, tool="B")).name
    worker = worker_homed(0)
    assert assigned(await synchronize(s, request(worker))) == action(b)[0]
    a = [n for pair in zip(*(actions_in(i, 2) for i in range(K)), strict=True) for n in pair]
    names = [b_name]
    for priority, n in enumerate(a):  # shard 0, 1, 2, 0, 1, 2 by priority
        names.append((await execute(s, n, tool="A", priority=priority)).name)
    assert [shard_of_name(n) for n in names] == [2, 0, 1, 2, 0, 1, 2]
    return s, worker, a, names


async def test_platform_queue_and_invocations_sum_the_shards(real_redis: aioredis.Redis) -> None:
    s, _, _, _ = await _scheduler(real_redis)
    await s.control.set_drain(
        add=True,
        instance_name_prefix="",
        platform=re_pb2.Platform(),
        size_class=0,
        pattern={"thread": "x"},
    )

    (pq,) = (await s.admin.list_platform_queues()).platform_queues
    (scq,) = pq.size_class_queues
    assert scq.workers_count == 1  # in shard 2; its home shard counts none meanwhile
    assert not scq.HasField("timeout")
    assert scq.drains_count == 1  # in every shard, counted once
    assert scq.root_invocation == bq_pb2.InvocationState(
        queued_operations_count=bq_pb2.InvocationState.InvocationObjectCount(indirect=6),
        executing_workers_count=1,
        children_count=2,  # A (queued in three shards) and B, each once
        active_children_count=2,
        queued_children_count=1,
    )

    children = await s.admin.list_invocation_children(
        bq_pb2.ListInvocationChildrenRequest(
            invocation_name=inv(), filter=bq_pb2.ListInvocationChildrenRequest.ALL
        )
    )
    assert [
        (c.state.queued_operations_count.direct, c.state.executing_workers_count)
        for c in children.children
    ] == [(6, 0), (0, 1)]
    queued = await s.admin.list_invocation_children(
        bq_pb2.ListInvocationChildrenRequest(
            invocation_name=inv(), filter=bq_pb2.ListInvocationChildrenRequest.QUEUED
        )
    )
    assert [c.id for c in queued.children] == [invocation_id("t", "A")]

    drains = await s.admin.list_drains(bq_pb2.ListDrainsRequest(size_class_queue_name=SCQ))
    assert [dict(d.worker_id_pattern) for d in drains.drains] == [{"thread": "x"}]


async def test_queued_operations_page_across_shards(real_redis: aioredis.Redis) -> None:
    s, _, a, _ = await _scheduler(real_redis)
    listed: list[re_pb2.Digest] = []
    req = bq_pb2.ListQueuedOperationsRequest(invocation_name=inv("A"), page_size=2)
    while True:
        got = await s.admin.list_queued_operations(req)
        assert got.pagination_info == bq_pb2.PaginationInfo(
            start_index=len(listed), total_entries=6
        )
        if not got.queued_operations:
            break
        listed += [o.action_digest for o in got.queued_operations]
        last = got.queued_operations[-1]
        req.start_after.priority = last.priority
        req.start_after.queued_timestamp.CopyFrom(last.queued_timestamp)
    assert listed == [action(n)[0] for n in a]


async def test_workers_and_operations_of_every_shard(real_redis: aioredis.Redis) -> None:
    s, worker, _, names = await _scheduler(real_redis)
    workers = await s.admin.list_workers(bq_pb2.ListWorkersRequest(filter=ALL, page_size=10))
    (w,) = workers.workers
    assert dict(w.id) == {"host": "h", "thread": worker}
    assert w.current_operation.name == names[0]  # shard 2's
    assert w.timeout.seconds > 0
    running = await s.admin.list_workers(
        bq_pb2.ListWorkersRequest(
            filter=bq_pb2.ListWorkersRequest.Filter(executing=inv("B")), page_size=10
        )
    )
    assert [dict(w.id) for w in running.workers] == [{"host": "h", "thread": worker}]

    for name in names:  # one of each shard, and the executing one
        got = (await s.admin.get_operation(name)).operation
        assert got.WhichOneof("stage") == ("executing" if name == names[0] else "queued")

    listed: list[str] = []
    req = bq_pb2.ListOperationsRequest(page_size=3)
    while True:
        page = await s.admin.list_operations(req)
        assert page.pagination_info == bq_pb2.PaginationInfo(
            start_index=len(listed), total_entries=7
        )
        if not page.operations:
            break
        listed += [o.name for o in page.operations]
        req.start_after.operation_name = listed[-1]
    assert listed == sorted(names)
    stage = await s.admin.list_operations(
        bq_pb2.ListOperationsRequest(page_size=10, filter_stage=re_pb2.ExecutionStage.QUEUED)
    )
    assert [o.name for o in stage.operations] == sorted(names[1:])
