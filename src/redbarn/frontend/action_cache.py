"""ActionCache servicer: wire only, over a (completeness-checking) `ActionCacheStore`."""

from __future__ import annotations

from typing import Any

from redbarn.digests import Digest, parse_field, validate_instance_name
from redbarn.errors import InvalidArgument
from redbarn.frontend.errors import grpc_errors
from redbarn.frontend.storage import ActionCacheStore, BlobStore
from redbarn.frontend.storage.inlining import inline_outputs
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc


def _instance_and_action(
    request: re_pb2.GetActionResultRequest | re_pb2.UpdateActionResultRequest,
) -> tuple[str, Digest]:
    """The instance name and action digest that both ActionCache requests carry."""
    instance = validate_instance_name(request.instance_name)
    return instance, parse_field(request, "action_digest", request.digest_function)


class ActionCacheServicer(re_grpc.ActionCacheServicer):
    def __init__(
        self, action_cache: ActionCacheStore, blobs: BlobStore, *, inline_budget: int
    ) -> None:
        self._ac = action_cache
        self._blobs = blobs
        self._inline_budget = inline_budget

    @grpc_errors
    async def GetActionResult(
        self, request: re_pb2.GetActionResultRequest, context: Any
    ) -> re_pb2.ActionResult:
        instance, digest = _instance_and_action(request)
        result = await self._ac.get(instance, digest)
        await inline_outputs(
            self._blobs, instance, result,
            stdout=request.inline_stdout, stderr=request.inline_stderr,
            output_files=request.inline_output_files, budget=self._inline_budget,
        )  # fmt: skip
        return result

    @grpc_errors
    async def UpdateActionResult(
        self, request: re_pb2.UpdateActionResultRequest, context: Any
    ) -> re_pb2.ActionResult:
        instance, digest = _instance_and_action(request)
        if not request.HasField("action_result"):
            raise InvalidArgument("No action result provided")
        await self._ac.put(instance, digest, request.action_result)
        return request.action_result
