"""BuildQueueState reads and admin requests, on real Redis and fakeredis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.rpc import status_pb2
from qhelpers import action, assigned, execute, make, request, synchronize

from redbarn.errors import InvalidArgument, NotFound
from redbarn.frontend.buildqueuestate import kill_operations, set_drain
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue.admin import invocation_id

SCQ = bq_pb2.SizeClassQueueName(platform_queue_name=bq_pb2.PlatformQueueName(), size_class=0)


def inv(*tools: str) -> bq_pb2.InvocationName:
    return bq_pb2.InvocationName(
        size_class_queue_name=SCQ, ids=[invocation_id("t", t) for t in tools]
    )


async def test_reads(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    await synchronize(s, request("2"))
    a = [await execute(s, n, tool="A") for n in range(3)]
    b = await execute(s, 10, tool="B", priority=-5)
    d = assigned(await synchronize(s, request("1")))
    assert d == action(10)[0]  # B: better priority

    got = await s.admin.get_operation(a[0].name)
    assert got.operation.name == ""
    assert got.operation.WhichOneof("stage") == "queued"
    assert got.operation.action_digest == action(0)[0]
    assert got.operation.expected_duration.seconds == 1800
    with pytest.raises(NotFound, match='Operation "x" not found'):
        await s.admin.get_operation("x")

    ops = await s.admin.list_operations(bq_pb2.ListOperationsRequest(page_size=2))
    names = sorted([*(v.name for v in a), b.name])
    assert [o.name for o in ops.operations] == names[:2]
    assert ops.pagination_info == bq_pb2.PaginationInfo(start_index=0, total_entries=4)
    page2 = await s.admin.list_operations(
        bq_pb2.ListOperationsRequest(
            page_size=10,
            start_after=bq_pb2.ListOperationsRequest.StartAfter(operation_name=names[1]),
        )
    )
    assert [o.name for o in page2.operations] == names[2:]
    assert page2.pagination_info.start_index == 2
    executing = await s.admin.list_operations(
        bq_pb2.ListOperationsRequest(page_size=10, filter_stage=re_pb2.ExecutionStage.EXECUTING)
    )
    assert [o.name for o in executing.operations] == [b.name]
    by_inv = await s.admin.list_operations(
        bq_pb2.ListOperationsRequest(page_size=10, filter_invocation_id=invocation_id("t", "A"))
    )
    assert sorted(o.name for o in by_inv.operations) == sorted(v.name for v in a)

    pqs = await s.admin.list_platform_queues()
    (pq,) = pqs.platform_queues
    (scq,) = pq.size_class_queues
    assert scq.workers_count == 2
    root = scq.root_invocation
    assert root.queued_operations_count.indirect == 3
    assert root.executing_workers_count == 1
    assert (
        root.children_count == 2
        and root.active_children_count == 2
        and root.queued_children_count == 1
    )

    children = await s.admin.list_invocation_children(
        bq_pb2.ListInvocationChildrenRequest(
            invocation_name=inv(), filter=bq_pb2.ListInvocationChildrenRequest.ALL
        )
    )
    assert [c.state.queued_operations_count.direct for c in children.children] == [3, 0]
    queued_children = await s.admin.list_invocation_children(
        bq_pb2.ListInvocationChildrenRequest(
            invocation_name=inv(), filter=bq_pb2.ListInvocationChildrenRequest.QUEUED
        )
    )
    assert len(queued_children.children) == 1
    with pytest.raises(NotFound, match="Invocation not found"):
        await s.admin.list_invocation_children(
            bq_pb2.ListInvocationChildrenRequest(invocation_name=inv("nope"))
        )

    queued = await s.admin.list_queued_operations(
        bq_pb2.ListQueuedOperationsRequest(invocation_name=inv("A"), page_size=10)
    )
    assert [o.action_digest for o in queued.queued_operations] == [action(n)[0] for n in range(3)]

    workers = await s.admin.list_workers(
        bq_pb2.ListWorkersRequest(filter=bq_pb2.ListWorkersRequest.Filter(all=SCQ), page_size=10)
    )
    assert [dict(w.id) for w in workers.workers] == [
        {"host": "h", "thread": "1"},
        {"host": "h", "thread": "2"},
    ]
    assert workers.workers[0].current_operation.action_digest == action(10)[0]
    assert workers.workers[0].timeout.seconds > 0
    running = await s.admin.list_workers(
        bq_pb2.ListWorkersRequest(
            filter=bq_pb2.ListWorkersRequest.Filter(executing=inv("B")), page_size=10
        )
    )
    assert len(running.workers) == 1


async def test_admin_requests(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await synchronize(s, request("1"))
    v = await execute(s, 1)
    await set_drain(
        s,
        bq_pb2.AddOrRemoveDrainRequest(
            size_class_queue_name=SCQ, worker_id_pattern={"thread": "1"}
        ),
        add=True,
    )
    drains = await s.admin.list_drains(bq_pb2.ListDrainsRequest(size_class_queue_name=SCQ))
    assert len(drains.drains) == 1 and drains.drains[0].created_timestamp.seconds > 0
    await set_drain(
        s,
        bq_pb2.AddOrRemoveDrainRequest(
            size_class_queue_name=SCQ, worker_id_pattern={"thread": "1"}
        ),
        add=False,
    )
    assert not (
        await s.admin.list_drains(bq_pb2.ListDrainsRequest(size_class_queue_name=SCQ))
    ).drains
    with pytest.raises(InvalidArgument, match="No size class queue name provided"):
        await set_drain(s, bq_pb2.AddOrRemoveDrainRequest(), add=True)
    with pytest.raises(InvalidArgument, match="Unknown filter provided"):
        await kill_operations(s, bq_pb2.KillOperationsRequest())
    status = status_pb2.Status(code=1, message="stop")
    await kill_operations(
        s,
        bq_pb2.KillOperationsRequest(
            filter=bq_pb2.KillOperationsRequest.Filter(operation_name=v.name), status=status
        ),
    )
    done = await s.operations.get_operation_view(v.name)
    assert done.response is not None and done.response.status == status
    await asyncio.sleep(0)


def _calls(stats: dict[str, dict[str, int]]) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if "calls" in v}


async def _commands_of(r: aioredis.Redis, read: Any) -> tuple[Any, dict[str, int]]:
    """`await read()`'s result and the commands it sent to `r`'s server (INFO commandstats
    before and after; this test's private server has no other client)."""
    before = _calls(await r.info("commandstats"))
    result = await read()
    after = _calls(await r.info("commandstats"))
    spent = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    spent["info"] -= 1  # the second INFO itself
    return result, {k: n for k, n in spent.items() if n}


async def test_list_operations_costs_the_page_not_every_operation(
    real_redis: aioredis.Redis,
) -> None:
    """1,000 queued operations: a page of 10 sends a number of commands bounded by the
    page (a range of the name index, then two reads per operation of the page), not two
    per operation as before; pages of 10 concatenate to the whole list in name order, with
    Buildbarn's start_index and total."""
    s = make(real_redis)
    await synchronize(s, request("1"))
    ops = [await execute(s, n, tool=f"tool{n % 3}") for n in range(1000)]
    names = sorted(op.name for op in ops)

    page, spent = await _commands_of(
        real_redis, lambda: s.admin.list_operations(bq_pb2.ListOperationsRequest(page_size=10))
    )
    assert [o.name for o in page.operations] == names[:10]
    assert page.pagination_info == bq_pb2.PaginationInfo(start_index=0, total_entries=1000)
    per_operation = spent.get("zscore", 0) + spent.get("hmget", 0) - 1  # 1: the page's records
    assert per_operation == 2 * 10, spent
    # O(page): HGETALL platforms, ZCARD, ZRANGEBYLEX, one HMGET of the page's records, and
    # 20 reads; nothing that walks every operation.
    assert "hscan" not in spent and sum(spent.values()) <= 25, spent

    # In the middle of the list, the position comes from ZLEXCOUNT, not a walk.
    mid, spent = await _commands_of(
        real_redis,
        lambda: s.admin.list_operations(
            bq_pb2.ListOperationsRequest(
                page_size=10,
                start_after=bq_pb2.ListOperationsRequest.StartAfter(operation_name=names[499]),
            )
        ),
    )
    assert [o.name for o in mid.operations] == names[500:510]
    assert mid.pagination_info == bq_pb2.PaginationInfo(start_index=500, total_entries=1000)
    assert "hscan" not in spent and sum(spent.values()) <= 26, spent

    listed: list[str] = []
    start_after = None
    while True:
        req = bq_pb2.ListOperationsRequest(page_size=10)
        if start_after is not None:
            req.start_after.operation_name = start_after
        got = await s.admin.list_operations(req)
        assert got.pagination_info == bq_pb2.PaginationInfo(
            start_index=len(listed), total_entries=1000
        )
        if not got.operations:
            break
        listed += [o.name for o in got.operations]
        start_after = listed[-1]
    assert listed == names

    # Filters keep their meaning and the same bounded cost.
    tool1 = sorted(op.name for n, op in enumerate(ops) if n % 3 == 1)
    by_inv, spent = await _commands_of(
        real_redis,
        lambda: s.admin.list_operations(
            bq_pb2.ListOperationsRequest(
                page_size=5,
                filter_invocation_id=invocation_id("t", "tool1"),
                start_after=bq_pb2.ListOperationsRequest.StartAfter(operation_name=tool1[9]),
            )
        ),
    )
    assert [o.name for o in by_inv.operations] == tool1[10:15]
    assert by_inv.pagination_info == bq_pb2.PaginationInfo(start_index=10, total_entries=len(tool1))
    assert sum(spent.values()) <= 20, spent
    executing = await s.admin.list_operations(
        bq_pb2.ListOperationsRequest(page_size=10, filter_stage=re_pb2.ExecutionStage.EXECUTING)
    )
    assert executing.pagination_info.total_entries == 0
    queued, spent = await _commands_of(
        real_redis,
        lambda: s.admin.list_operations(
            bq_pb2.ListOperationsRequest(page_size=10, filter_stage=re_pb2.ExecutionStage.QUEUED)
        ),
    )
    assert [o.name for o in queued.operations] == names[:10]
    assert queued.pagination_info.total_entries == 1000
    assert sum(spent.values()) <= 30, spent


async def test_background_learning_invocation_is_named_as_buildbarn_names_it(
    any_redis: aioredis.Redis,
) -> None:
    """Background learning runs sit in their own invocation, which BuildQueueState names
    Any(BackgroundLearning), as bb_scheduler does, and such a name finds it again."""
    s = make(any_redis)
    bg = invocation_id("b", "")
    assert bg.Is(bq_pb2.BackgroundLearning.DESCRIPTOR)
    assert s.admin._path([bg]) == "/b"
    assert s.admin._path([invocation_id("t", "x")]) == "/tx"
