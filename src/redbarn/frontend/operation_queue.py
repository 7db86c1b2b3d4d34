"""Buildbarn's worker protocol: `buildbarn.remoteworker.OperationQueue/Synchronize`.

Wire only: the scheduler core does the report, the assignment and the parking (an
idle or completed report with nothing to do is held until work is assigned to this
worker, from any frontend, or the jittered idle timeout passes).
"""

from __future__ import annotations

from typing import Any

import grpc

from redbarn.frontend.errors import grpc_errors
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.scheduler import Scheduler


class OperationQueueServicer(rw_grpc.OperationQueueServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    @grpc_errors
    async def Synchronize(
        self, request: rw_pb2.SynchronizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rw_pb2.SynchronizeResponse:
        return await self._scheduler.synchronize(request)
