"""Buildbarn's worker protocol: `buildbarn.remoteworker.OperationQueue/Synchronize`.

Wire only: a SynchronizeRequest becomes a `WorkerReport`, the core records it and
answers (parking an idle or completed report until work is assigned to this worker,
from any frontend, or the jittered idle timeout passes), and its reply becomes the
SynchronizeResponse.
"""

from __future__ import annotations

from typing import Any

import grpc

from redbarn.errors import InvalidArgument
from redbarn.frontend.errors import grpc_errors
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue import codec, replies
from redbarn.queue.synchronize import WorkerReport, Workers


def decode_report(request: rw_pb2.SynchronizeRequest) -> WorkerReport:
    """The report a SynchronizeRequest makes; InvalidArgument (Buildbarn's wording)
    when its current state is missing or incomplete."""
    which = (
        request.current_state.WhichOneof("worker_state")
        if request.HasField("current_state")
        else None
    )
    if which is None:
        raise InvalidArgument("Worker did not provide its current state")
    digest = response = None
    if which == "idle":
        state = "idle"
    elif which == "executing":
        ex = request.current_state.executing
        if not ex.HasField("action_digest"):
            raise InvalidArgument("Worker is executing, but provided no action digest")
        digest = ex.action_digest
        state = ex.WhichOneof("execution_state") or "executing"
        if state == "completed":
            response = ex.completed
    else:
        raise InvalidArgument("Worker provided an unknown current state")
    return WorkerReport(
        worker_id=request.worker_id,
        instance_name_prefix=request.instance_name_prefix,
        platform=request.platform,
        size_class=request.size_class,
        state=state,
        action_digest=digest,
        response=response,
        prefer_being_idle=request.prefer_being_idle,
    )


def encode_reply(reply: replies.WorkerReply) -> rw_pb2.SynchronizeResponse:
    resp = rw_pb2.SynchronizeResponse()
    codec.set_ms_timestamp(resp.next_synchronization_at, reply.next_ms)
    if isinstance(reply, replies.Assignment):
        ex = resp.desired_state.executing
        ex.MergeFromString(reply.executing)
        codec.set_ms_timestamp(ex.queued_timestamp, reply.queued_ms)
    elif isinstance(reply, replies.Idle):
        resp.desired_state.idle.SetInParent()
    return resp


class OperationQueueServicer(rw_grpc.OperationQueueServicer):
    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    @grpc_errors
    async def Synchronize(
        self, request: rw_pb2.SynchronizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rw_pb2.SynchronizeResponse:
        return encode_reply(await self._workers.synchronize(decode_report(request)))
