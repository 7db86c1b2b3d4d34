"""The Execution service (Execute, WaitExecution): wire only, over `redbarn.queue`.

Execute validates the request in Buildbarn's order (instance name, digest function,
action digest) and reads the RequestMetadata header; the core (`redbarn.queue.intake`)
reads the Action, answers from the Action Cache or enqueues; this module streams the
operation's views as longrunning Operations: the first at once, one on every stage
change, a keep-alive every execution-update interval, and the done Operation carrying
its ExecuteResponse. `Operation.error` is never set (R51). When this frontend shuts
down, open streams end with UNAVAILABLE so clients reattach with WaitExecution elsewhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from google.longrunning import operations_pb2
from google.protobuf.message import DecodeError

from redbarn import digests, errors
from redbarn.frontend.errors import grpc_errors
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.queue import codec
from redbarn.queue.intake import Intake
from redbarn.queue.operations import Operations, OperationView

REQUEST_METADATA_HEADER = "build.bazel.remote.execution.v2.requestmetadata-bin"
Stage = re_pb2.ExecutionStage
_METADATA_URL = "type.googleapis.com/" + re_pb2.ExecuteOperationMetadata.DESCRIPTOR.full_name
_RESPONSE_URL = "type.googleapis.com/" + re_pb2.ExecuteResponse.DESCRIPTOR.full_name
# Worker stage letters (OperationView.worker_stages): where each stage's start goes, and
# the stages whose end is the next one's start.
_STAGE_STARTS = {
    "s": "worker_start_timestamp",
    "f": "input_fetch_start_timestamp",
    "r": "execution_start_timestamp",
    "u": "output_upload_start_timestamp",
}
_STAGE_ENDS = {
    "f": ("r", "input_fetch_completed_timestamp"),
    "r": ("u", "execution_completed_timestamp"),
}


def request_metadata(
    context: grpc.aio.ServicerContext[Any, Any],
) -> tuple[re_pb2.RequestMetadata, bytes] | None:
    """The first `requestmetadata-bin` header value that parses (Buildbarn, IMBQ:412),
    parsed and as sent."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_METADATA_HEADER and isinstance(value, bytes):
            try:
                return re_pb2.RequestMetadata.FromString(value), value
            except DecodeError:
                continue
    return None


def partial_execution_metadata(view: OperationView) -> re_pb2.ExecutedActionMetadata:
    """The worker's progress so far: each stage's start, and the end of the stages it
    has left behind (REAPI's partial_execution_metadata)."""
    at = {part[0]: int(part[1:]) for part in view.worker_stages.split() if len(part) > 1}
    meta = re_pb2.ExecutedActionMetadata(worker=view.worker)
    codec.set_ms_timestamp(meta.queued_timestamp, view.queued_ms)
    for stage, name in _STAGE_STARTS.items():
        if stage in at:
            codec.set_ms_timestamp(getattr(meta, name), at[stage])
    for stage, (after, name) in _STAGE_ENDS.items():
        if stage in at and after in at:
            codec.set_ms_timestamp(getattr(meta, name), at[after])
    return meta


def operation_message(view: OperationView) -> operations_pb2.Operation:
    """The longrunning.Operation of a view (never `error`, R51)."""
    md = re_pb2.ExecuteOperationMetadata(
        stage=cast(Any, view.stage),
        action_digest=view.action_digest,
        digest_function=cast(Any, view.digest_function),
    )
    if view.stage == Stage.EXECUTING and view.worker_stages:
        md.partial_execution_metadata.CopyFrom(partial_execution_metadata(view))
    # Any's fields set directly: what Any.Pack does, without its Python-level lookups
    # (this runs for every message of every Execute stream).
    op = operations_pb2.Operation(name=view.name)
    op.metadata.type_url = _METADATA_URL
    op.metadata.value = md.SerializeToString()
    if view.done and view.response is not None:
        op.done = True
        op.response.type_url = _RESPONSE_URL
        op.response.value = view.response.SerializeToString()
    return op


class ExecutionServicer(re_grpc.ExecutionServicer):
    def __init__(self, intake: Intake, operations: Operations) -> None:
        self._intake = intake
        self._operations = operations

    @grpc_errors
    async def Execute(
        self, request: re_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[operations_pb2.Operation]:
        instance = digests.validate_instance_name(request.instance_name)
        if not request.HasField("action_digest"):
            raise errors.InvalidArgument("Failed to extract digest for action: No digest provided")
        function = digests.resolve_function(
            request.digest_function, len(request.action_digest.hash)
        )
        try:
            digest = digests.parse_field(request, "action_digest", function)
        except errors.InvalidArgument as err:
            raise errors.wrap("Failed to extract digest for action", err) from err
        first = await self._intake.execute(
            instance_name=instance,
            action_digest=digest,
            digest_function=function,
            skip_cache_lookup=request.skip_cache_lookup,
            priority=request.execution_policy.priority,
            request_metadata=request_metadata(context),
        )
        async for op in self._stream(first.name, first):
            yield op

    @grpc_errors
    async def WaitExecution(
        self, request: re_pb2.WaitExecutionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[operations_pb2.Operation]:
        async for op in self._stream(request.name, None):
            yield op

    async def _stream(
        self, name: str, first: OperationView | None
    ) -> AsyncIterator[operations_pb2.Operation]:
        # A done first view (an Action Cache hit) is the whole stream. Ends with UNAVAILABLE when this frontend shuts down (Hints.closing), so the
        # client reattaches with WaitExecution elsewhere.
        async for view in self._operations.watch_operation(name, first=first):
            yield operation_message(view)
