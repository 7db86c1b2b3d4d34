"""The Execution service (Execute, WaitExecution): wire only, over `redbarn.queue`.

Execute validates the request in Buildbarn's order (instance name, digest function,
action digest), reads the Action from the CAS, answers from the Action Cache when
`skip_cache_lookup` is false and a complete result is there, and otherwise enqueues
and streams the operation: the first Operation at once, one on every stage change,
a keep-alive every execution-update interval, and the done Operation carrying its
ExecuteResponse. `Operation.error` is never set. When this frontend shuts down, open
streams end with UNAVAILABLE so clients reattach with WaitExecution elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from redbarn import errors
from redbarn.frontend import digests
from redbarn.frontend.errors import grpc_errors
from redbarn.frontend.storage import ActionCacheStore, BlobStore
from redbarn.frontend.storage.redis import RedisBlobStore, stored
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.queue.scheduler import MissingBlobs, OperationView, Scheduler
from redbarn.queue.scripts import RequiredBlobs

REQUEST_METADATA_HEADER = "build.bazel.remote.execution.v2.requestmetadata-bin"
_REQUEST_METADATA_URL = "type.googleapis.com/" + re_pb2.RequestMetadata.DESCRIPTOR.full_name


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


async def read_action(
    blobs: BlobStore, instance_name: str, digest: digests.Digest, *, check_inputs: bool = True
) -> tuple[re_pb2.Action, list[digests.Digest]]:
    """The Action and the digests of its Command and input root. With `check_inputs`,
    those are checked present (and their TTL refreshed) in one more round trip;
    without, the caller has the enqueue script check them (`RequiredBlobs`)."""
    try:
        action = re_pb2.Action.FromString(await blobs.get(instance_name, digest))
    except errors.NotFound as err:
        raise errors.FailedPrecondition(
            f"Failed to obtain action: {err.message}", [digest.subject]
        ) from err
    except DecodeError as err:
        raise errors.InvalidArgument(
            f"Failed to obtain action: Action {digest} is not an Action: {err}"
        ) from err
    needed = [
        digests.parse_field(action, field)
        for field in ("command_digest", "input_root_digest")
        if action.HasField(field)
    ]
    if not action.HasField("command_digest"):
        raise errors.InvalidArgument(f"Action {digest} has no command digest")
    if check_inputs:
        missing = await blobs.find_missing(instance_name, needed)
        if missing:
            raise missing_inputs(digest, missing)
    return action, needed


def missing_inputs(
    digest: digests.Digest, missing: Sequence[digests.Digest]
) -> errors.RedbarnError:
    names = ", ".join(str(d) for d in missing)
    return errors.FailedPrecondition(
        f"Failed to obtain inputs of action {digest}: Blobs {names} not found",
        [d.subject for d in missing],
    )


def cached_operation(
    action_digest: digests.Digest, result: re_pb2.ActionResult
) -> operations_pb2.Operation:
    """A done Operation for an Action Cache hit (`cached_result=true`)."""
    op = operations_pb2.Operation(name=f"cached/{uuid.uuid4()}", done=True)
    op.metadata.Pack(
        re_pb2.ExecuteOperationMetadata(
            stage=re_pb2.ExecutionStage.COMPLETED,
            action_digest=action_digest.to_proto(),
            digest_function=re_pb2.DigestFunction.SHA256,
        )
    )
    op.response.Pack(re_pb2.ExecuteResponse(result=result, cached_result=True))
    return op


class ExecutionServicer(re_grpc.ExecutionServicer):
    def __init__(
        self, scheduler: Scheduler, blobs: BlobStore, action_cache: ActionCacheStore
    ) -> None:
        self._scheduler = scheduler
        self._blobs = blobs
        self._ac = action_cache
        # With the CAS in the scheduler's own (non-cluster) Redis, the enqueue script
        # checks the Command and input root itself: one round trip fewer per Execute.
        self._cas_in_scheduler = (
            isinstance(blobs, RedisBlobStore)
            and blobs.client is scheduler.redis
            and blobs.uses_scripts
        )

    def _required(
        self, needed: Sequence[digests.Digest]
    ) -> tuple[RequiredBlobs | None, list[digests.Digest]]:
        if not self._cas_in_scheduler:
            return None, []
        assert isinstance(self._blobs, RedisBlobStore)
        checked = stored(needed)
        if not checked:
            return None, []
        keys = [self._blobs.blob_keys(d) for d in checked]
        return RequiredBlobs(keys=keys, ttl_ms=self._blobs.ttl_ms), checked

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
        action, needed = await read_action(
            self._blobs, instance, digest, check_inputs=not self._cas_in_scheduler
        )
        if not request.skip_cache_lookup and not action.do_not_cache:
            try:
                result = await self._ac.get(instance, digest)
            except errors.NotFound:
                pass
            else:
                yield cached_operation(digest, result)
                return
        header = request_metadata(context)
        metadata, aux = None, []
        if header is not None:
            # Workers get it as auxiliary metadata: the bytes as sent, packed in an Any.
            metadata = header[0]
            aux.append(any_pb2.Any(type_url=_REQUEST_METADATA_URL, value=header[1]))
        required, checked = self._required(needed)
        try:
            first = await self._scheduler.execute(
                instance_name=instance,
                action_digest=digest.to_proto(),
                action=action,
                digest_function=function,
                priority=request.execution_policy.priority,
                request_metadata=metadata,
                auxiliary_metadata=aux,
                required=required,
            )
        except MissingBlobs as err:
            raise missing_inputs(digest, [checked[i] for i in err.positions]) from None
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
        # Ends with UNAVAILABLE when this frontend shuts down (Hints.closing), so the
        # client reattaches with WaitExecution elsewhere.
        async for view in self._scheduler.watch_operation(name, first=first):
            yield view.operation()
