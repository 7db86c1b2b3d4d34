"""Buildbarn's admin API, `buildbarn.buildqueuestate.BuildQueueState`.

Writes (kill, drains, terminate) are decoded here into the core's terms and run as
scheduler scripts (`redbarn.queue.control`). Reads come straight from Redis
(`redbarn.queue.admin`), so every frontend answers the same; their requests and
replies are BuildQueueState's own messages, which are the admin read model (a second
set of domain types mirroring them field for field would add code and no meaning).
Behaviour and errors follow Buildbarn (reference §2.11, §2.12, §2.15).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2

from redbarn.errors import InvalidArgument
from redbarn.frontend.errors import grpc_errors
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import buildqueuestate_pb2_grpc as bq_grpc
from redbarn.queue.scheduler import Scheduler

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


async def kill_operations(scheduler: Scheduler, request: bq_pb2.KillOperationsRequest) -> None:
    """KillOperations (R57-R59): by operation name, or every queued operation of a size
    class queue without workers."""
    which = request.filter.WhichOneof("type") if request.HasField("filter") else None
    if which == "operation_name":
        await scheduler.control.kill_operation(request.filter.operation_name, request.status)
    elif which == "size_class_queue_without_workers":
        scq = request.filter.size_class_queue_without_workers
        if not scq.HasField("platform_queue_name"):
            raise InvalidArgument("No platform queue name provided")
        await scheduler.control.kill_queued_operations(
            instance_name_prefix=scq.platform_queue_name.instance_name_prefix,
            platform=scq.platform_queue_name.platform,
            size_class=scq.size_class,
            status=request.status,
        )
    else:
        raise InvalidArgument("Unknown filter provided")


async def set_drain(
    scheduler: Scheduler, request: bq_pb2.AddOrRemoveDrainRequest, *, add: bool
) -> None:
    """AddDrain (add=True) / RemoveDrain (R60)."""
    if not request.HasField("size_class_queue_name"):
        raise InvalidArgument("No size class queue name provided")
    scq = request.size_class_queue_name
    if not scq.HasField("platform_queue_name"):
        raise InvalidArgument("No platform queue name provided")
    await scheduler.control.set_drain(
        add=add,
        instance_name_prefix=scq.platform_queue_name.instance_name_prefix,
        platform=scq.platform_queue_name.platform,
        size_class=scq.size_class,
        pattern=dict(request.worker_id_pattern),
    )


class BuildQueueStateServicer(bq_grpc.BuildQueueStateServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler
        self._admin = scheduler.admin

    @grpc_errors
    async def GetOperation(
        self, request: bq_pb2.GetOperationRequest, context: Context
    ) -> bq_pb2.GetOperationResponse:
        return await self._admin.get_operation(request.operation_name)

    @grpc_errors
    async def ListOperations(
        self, request: bq_pb2.ListOperationsRequest, context: Context
    ) -> bq_pb2.ListOperationsResponse:
        return await self._admin.list_operations(request)

    @grpc_errors
    async def KillOperations(
        self, request: bq_pb2.KillOperationsRequest, context: Context
    ) -> empty_pb2.Empty:
        await kill_operations(self._s, request)
        return empty_pb2.Empty()

    @grpc_errors
    async def ListPlatformQueues(
        self, request: empty_pb2.Empty, context: Context
    ) -> bq_pb2.ListPlatformQueuesResponse:
        return await self._admin.list_platform_queues()

    @grpc_errors
    async def ListInvocationChildren(
        self, request: bq_pb2.ListInvocationChildrenRequest, context: Context
    ) -> bq_pb2.ListInvocationChildrenResponse:
        return await self._admin.list_invocation_children(request)

    @grpc_errors
    async def ListQueuedOperations(
        self, request: bq_pb2.ListQueuedOperationsRequest, context: Context
    ) -> bq_pb2.ListQueuedOperationsResponse:
        return await self._admin.list_queued_operations(request)

    @grpc_errors
    async def ListWorkers(
        self, request: bq_pb2.ListWorkersRequest, context: Context
    ) -> bq_pb2.ListWorkersResponse:
        return await self._admin.list_workers(request)

    @grpc_errors
    async def TerminateWorkers(
        self, request: bq_pb2.TerminateWorkersRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._s.control.terminate_workers(dict(request.worker_id_pattern), wait=True)
        return empty_pb2.Empty()

    @grpc_errors
    async def ListDrains(
        self, request: bq_pb2.ListDrainsRequest, context: Context
    ) -> bq_pb2.ListDrainsResponse:
        return await self._admin.list_drains(request)

    @grpc_errors
    async def AddDrain(
        self, request: bq_pb2.AddOrRemoveDrainRequest, context: Context
    ) -> empty_pb2.Empty:
        await set_drain(self._s, request, add=True)
        return empty_pb2.Empty()

    @grpc_errors
    async def RemoveDrain(
        self, request: bq_pb2.AddOrRemoveDrainRequest, context: Context
    ) -> empty_pb2.Empty:
        await set_drain(self._s, request, add=False)
        return empty_pb2.Empty()
