"""Buildbarn's admin API, `buildbarn.buildqueuestate.BuildQueueState`: wire only.

Reads come straight from Redis, so every frontend answers the same; writes (kill,
drains, terminate) are scheduler scripts. Behaviour and errors follow Buildbarn
(reference §2.11, §2.12, §2.15).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2

from redbarn.frontend.errors import grpc_errors
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import buildqueuestate_pb2_grpc as bq_grpc
from redbarn.queue.scheduler import Scheduler

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class BuildQueueStateServicer(bq_grpc.BuildQueueStateServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler

    @grpc_errors
    async def GetOperation(
        self, request: bq_pb2.GetOperationRequest, context: Context
    ) -> bq_pb2.GetOperationResponse:
        return await self._s.get_operation(request.operation_name)

    @grpc_errors
    async def ListOperations(
        self, request: bq_pb2.ListOperationsRequest, context: Context
    ) -> bq_pb2.ListOperationsResponse:
        return await self._s.list_operations(request)

    @grpc_errors
    async def KillOperations(
        self, request: bq_pb2.KillOperationsRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._s.kill_operations(request)
        return empty_pb2.Empty()

    @grpc_errors
    async def ListPlatformQueues(
        self, request: empty_pb2.Empty, context: Context
    ) -> bq_pb2.ListPlatformQueuesResponse:
        return await self._s.list_platform_queues()

    @grpc_errors
    async def ListInvocationChildren(
        self, request: bq_pb2.ListInvocationChildrenRequest, context: Context
    ) -> bq_pb2.ListInvocationChildrenResponse:
        return await self._s.list_invocation_children(request)

    @grpc_errors
    async def ListQueuedOperations(
        self, request: bq_pb2.ListQueuedOperationsRequest, context: Context
    ) -> bq_pb2.ListQueuedOperationsResponse:
        return await self._s.list_queued_operations(request)

    @grpc_errors
    async def ListWorkers(
        self, request: bq_pb2.ListWorkersRequest, context: Context
    ) -> bq_pb2.ListWorkersResponse:
        return await self._s.list_workers(request)

    @grpc_errors
    async def TerminateWorkers(
        self, request: bq_pb2.TerminateWorkersRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._s.terminate_workers(dict(request.worker_id_pattern), wait=True)
        return empty_pb2.Empty()

    @grpc_errors
    async def ListDrains(
        self, request: bq_pb2.ListDrainsRequest, context: Context
    ) -> bq_pb2.ListDrainsResponse:
        return await self._s.list_drains(request)

    @grpc_errors
    async def AddDrain(
        self, request: bq_pb2.AddOrRemoveDrainRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._s.modify_drain(request, add=True)
        return empty_pb2.Empty()

    @grpc_errors
    async def RemoveDrain(
        self, request: bq_pb2.AddOrRemoveDrainRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._s.modify_drain(request, add=False)
        return empty_pb2.Empty()
