"""BuildQueueState over a real channel: every RPC against live frontends and a worker."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from redbarn.frontend.config import FrontendConfig
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import buildqueuestate_pb2_grpc as bq_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue.reaper import Reaper
from redbarn.queue.registry import Registry
from redbarn.queue.scripts import Scripts

from .test_execution import (
    PLATFORM,
    SCHED,
    Cluster,
    SimWorker,
    cluster,  # noqa: F401 - fixture
    collect,
    invocation,
    metadata_of,
    response_of,
    upload_action,
)

SCQ = bq_pb2.SizeClassQueueName(platform_queue_name=bq_pb2.PlatformQueueName(platform=PLATFORM))


async def test_admin_reads_and_writes(cluster: Cluster) -> None:  # noqa: F811
    a, b = await cluster.add(), await cluster.add()
    admin = bq_grpc.BuildQueueStateStub(b.channel)
    hold = asyncio.Event()
    worker = SimWorker(a, hold=hold)
    await worker.register()
    worker.start()
    try:
        digest = await upload_action(a, ["sleep"])
        stream = a.execution.Execute(
            re_pb2.ExecuteRequest(action_digest=digest), metadata=invocation("inv-1")
        )
        first = await stream.read()
        await asyncio.wait_for(worker.assigned_event.wait(), 5)

        queues = await admin.ListPlatformQueues(empty_pb2.Empty())
        assert [q.name.platform for q in queues.platform_queues] == [PLATFORM]
        scq = queues.platform_queues[0].size_class_queues[0]
        assert scq.workers_count == 1 and scq.drains_count == 0

        got = await admin.GetOperation(bq_pb2.GetOperationRequest(operation_name=first.name))
        assert got.operation.action_digest == digest
        assert got.operation.WhichOneof("stage") == "executing"

        ops = await admin.ListOperations(bq_pb2.ListOperationsRequest(page_size=10))
        assert [o.name for o in ops.operations] == [first.name]
        assert ops.pagination_info.total_entries == 1

        workers = await admin.ListWorkers(
            bq_pb2.ListWorkersRequest(
                filter=bq_pb2.ListWorkersRequest.Filter(all=SCQ), page_size=10
            )
        )
        assert [dict(w.id) for w in workers.workers] == [worker.worker_id]
        assert workers.workers[0].current_operation.action_digest == digest

        pattern = {"thread": "w1"}
        await admin.AddDrain(
            bq_pb2.AddOrRemoveDrainRequest(size_class_queue_name=SCQ, worker_id_pattern=pattern)
        )
        drains = await admin.ListDrains(bq_pb2.ListDrainsRequest(size_class_queue_name=SCQ))
        assert [dict(d.worker_id_pattern) for d in drains.drains] == [pattern]
        await admin.RemoveDrain(
            bq_pb2.AddOrRemoveDrainRequest(size_class_queue_name=SCQ, worker_id_pattern=pattern)
        )
        assert not (
            await admin.ListDrains(bq_pb2.ListDrainsRequest(size_class_queue_name=SCQ))
        ).drains

        killed = status_pb2.Status(
            code=grpc.StatusCode.CANCELLED.value[0], message="killed by test"
        )
        await admin.KillOperations(
            bq_pb2.KillOperationsRequest(
                filter=bq_pb2.KillOperationsRequest.Filter(operation_name=first.name), status=killed
            )
        )
        ops = await asyncio.wait_for(collect(stream), 10)
        assert response_of(ops[-1]).status == killed
    finally:
        hold.set()
        await worker.stop()


async def test_admin_errors(cluster: Cluster) -> None:  # noqa: F811
    node = await cluster.add()
    admin = bq_grpc.BuildQueueStateStub(node.channel)
    cases = [
        (
            admin.GetOperation(bq_pb2.GetOperationRequest(operation_name="nope")),
            grpc.StatusCode.NOT_FOUND,
            'Operation "nope" not found',
        ),
        (
            admin.KillOperations(bq_pb2.KillOperationsRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unknown filter provided",
        ),
        (
            admin.ListDrains(bq_pb2.ListDrainsRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "No platform queue name provided",
        ),
        (
            admin.ListDrains(bq_pb2.ListDrainsRequest(size_class_queue_name=SCQ)),
            grpc.StatusCode.NOT_FOUND,
            "Size class queue not found",
        ),
        (
            admin.ListInvocationChildren(bq_pb2.ListInvocationChildrenRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "No invocation name provided",
        ),
    ]
    for call, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code, err.value
        assert err.value.details() == text


async def test_terminate_workers_drains_them_for_good(cluster: Cluster) -> None:  # noqa: F811
    node = await cluster.add()
    admin = bq_grpc.BuildQueueStateStub(node.channel)
    worker = SimWorker(node)
    await worker.register()
    await asyncio.wait_for(
        admin.TerminateWorkers(bq_pb2.TerminateWorkersRequest(worker_id_pattern={"thread": "w1"})),
        5,
    )
    workers = await admin.ListWorkers(
        bq_pb2.ListWorkersRequest(filter=bq_pb2.ListWorkersRequest.Filter(all=SCQ), page_size=10)
    )
    assert [w.drained for w in workers.workers] == [True]


async def test_first_synchronize_survives_a_reaper_pass_midway(
    cluster: Cluster,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's first Synchronize registers its platform queue and records the worker
    in two Redis steps. Registered first, a reaper pass of another frontend in between
    found the queue registered but empty and removed it; the worker was recorded anyway,
    its frontend did not register the queue again for 5 cache periods, and an Execute
    got "No workers exist" (seen once in a full run of test_admin_reads_and_writes).
    Here another frontend's reaper runs a whole pass on each side of the registration,
    so one falls between the two steps whichever order they are in."""
    node = await cluster.add()
    redis = aioredis.Redis.from_url(cluster.config.redis_url)
    other = Reaper(Registry(redis, SCHED, "other-frontend"), Scripts(redis), SCHED)
    register = Registry.register
    removed = []

    async def reaped_around(self: Registry, domain: str, prefix: str, pjson: str) -> None:
        removed.append((await other.reap()).domains_removed)
        await register(self, domain, prefix, pjson)
        removed.append((await other.reap()).domains_removed)

    monkeypatch.setattr(Registry, "register", reaped_around)
    try:
        await SimWorker(node).register()
    finally:
        monkeypatch.undo()
        await redis.aclose()
    assert removed == [0, 0]
    admin = bq_grpc.BuildQueueStateStub(node.channel)
    queues = await admin.ListPlatformQueues(empty_pb2.Empty())
    assert [q.name.platform for q in queues.platform_queues] == [PLATFORM]
    assert queues.platform_queues[0].size_class_queues[0].workers_count == 1
    digest = await upload_action(node, ["true"])
    stream = node.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest))
    try:
        first = await stream.read()  # not UNAVAILABLE "No workers exist"
        assert metadata_of(first).stage == re_pb2.ExecutionStage.QUEUED
    finally:
        stream.cancel()


async def test_a_worker_matched_by_a_drain_is_listed_as_drained(
    cluster: Cluster,  # noqa: F811
) -> None:
    """Buildbarn's rule (ListWorkers): a worker is drained when it is terminating or when
    any drain's pattern matches its id (every label of the pattern has the worker's value);
    removing the drain undrains it."""
    node = await cluster.add()
    admin = bq_grpc.BuildQueueStateStub(node.channel)
    worker = SimWorker(node)
    await worker.register()
    list_all = bq_pb2.ListWorkersRequest(
        filter=bq_pb2.ListWorkersRequest.Filter(all=SCQ), page_size=10
    )

    async def drained() -> list[bool]:
        return [w.drained for w in (await admin.ListWorkers(list_all)).workers]

    assert await drained() == [False]
    other = bq_pb2.AddOrRemoveDrainRequest(
        size_class_queue_name=SCQ, worker_id_pattern={"thread": "w9"}
    )
    await admin.AddDrain(other)
    assert await drained() == [False]  # a pattern naming another worker
    mine = bq_pb2.AddOrRemoveDrainRequest(
        size_class_queue_name=SCQ, worker_id_pattern={"thread": "w1"}
    )
    await admin.AddDrain(mine)
    assert await drained() == [True]
    await admin.RemoveDrain(
        bq_pb2.AddOrRemoveDrainRequest(
            size_class_queue_name=SCQ, worker_id_pattern={"thread": "w1"}
        )
    )
    assert await drained() == [False]


async def test_operation_state_target_id_and_timeout_follow_the_waiters(redis_url: str) -> None:
    """Buildbarn's rules (OperationState): target_id is the request's
    RequestMetadata.target_id; timeout is unset while any client waits on the operation
    and is the operation's removal time once the last one has gone."""
    sched = dataclasses.replace(SCHED, operation_retention=10.0, waiter_poll_interval=1.0)
    c = Cluster(
        FrontendConfig(listen="127.0.0.1:0", redis_url=redis_url, health_interval=0.2), sched
    )
    try:
        a, b = await c.add(), await c.add()
        admin = bq_grpc.BuildQueueStateStub(b.channel)
        await SimWorker(a).register()  # idle, never synchronizing again: the op stays queued
        digest = await upload_action(a, ["sleep"])
        md = re_pb2.RequestMetadata(tool_invocation_id="inv-1", target_id="//pkg:target")
        stream = a.execution.Execute(
            re_pb2.ExecuteRequest(action_digest=digest),
            metadata=[("build.bazel.remote.execution.v2.requestmetadata-bin",
                       md.SerializeToString())],
        )  # fmt: skip
        first = await stream.read()

        async def state() -> bq_pb2.OperationState:
            got = await admin.GetOperation(bq_pb2.GetOperationRequest(operation_name=first.name))
            return got.operation

        st = await state()
        assert st.target_id == "//pkg:target"
        assert not st.HasField("timeout")
        await asyncio.sleep(2.5)  # the waiter renews its lease meanwhile
        assert not (await state()).HasField("timeout")

        stream.cancel()
        left = time.time()
        deadline = left + 8
        while not (st := await state()).HasField("timeout"):
            assert time.time() < deadline, "timeout never set after the last waiter left"
            await asyncio.sleep(0.2)
        # Set within 1.5 renewal intervals of the client leaving, to the removal time:
        # at most operation_retention after the client left.
        assert time.time() - left < 1.5 * sched.touch_interval + 1
        removal = st.timeout.ToMilliseconds() / 1000
        assert left < removal <= left + sched.operation_retention + 0.5
    finally:
        await c.close()
