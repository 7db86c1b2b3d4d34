"""A small REAPI client for system tests: upload an action, execute it like Bazel.

Bazel's behaviour that matters here: when an Execute or WaitExecution stream breaks
with UNAVAILABLE (a frontend stopping, a load balancer moving us), it reattaches with
WaitExecution using the operation name it already has, and retries Execute when it
never got one (in-flight dedup makes that safe).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

# Bazel's RemoteRetrier retries these; INTERNAL is what a stream reset by a proxy
# (nginx after its upstream frontend went away) looks like to the client.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
REQUEST_METADATA = "build.bazel.remote.execution.v2.requestmetadata-bin"


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


@dataclass
class Outcome:
    response: re_pb2.ExecuteResponse
    names: list[str]  # operation names seen (reattaches keep the same one)
    reattaches: int


class ReapiClient:
    def __init__(
        self, target: str, *, invocation: str = "", metadata: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.execution = re_grpc.ExecutionStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        md = list(metadata)
        if invocation:
            md.append(
                (
                    REQUEST_METADATA,
                    re_pb2.RequestMetadata(tool_invocation_id=invocation).SerializeToString(),
                )
            )
        self.metadata = md

    async def close(self) -> None:
        await self.channel.close()

    async def upload(self, *blobs: bytes) -> None:
        Req = re_pb2.BatchUpdateBlobsRequest.Request
        for attempt in range(20):
            try:
                reply = await self.cas.BatchUpdateBlobs(
                    re_pb2.BatchUpdateBlobsRequest(
                        requests=[Req(digest=digest_of(b), data=b) for b in blobs]
                    ),
                    metadata=self.metadata,
                    timeout=10,
                )
                assert all(r.status.code == 0 for r in reply.responses), reply
                return
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or attempt == 19:
                    raise
                await asyncio.sleep(0.2)

    async def prepare(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        platform: re_pb2.Platform | None = None,
        timeout_s: int = 0,
        output_paths: Sequence[str] = (),
        input_root: re_pb2.Directory | None = None,
        extra_blobs: Sequence[bytes] = (),
        do_not_cache: bool = False,
    ) -> re_pb2.Digest:
        command = re_pb2.Command(
            arguments=argv,
            environment_variables=[
                re_pb2.Command.EnvironmentVariable(name=k, value=v)
                for k, v in sorted((env or {}).items())
            ],
            output_paths=list(output_paths),
        )
        if platform is not None:
            command.platform.CopyFrom(platform)
        cblob = command.SerializeToString()
        root = (input_root or re_pb2.Directory()).SerializeToString()
        action = re_pb2.Action(
            command_digest=digest_of(cblob),
            input_root_digest=digest_of(root),
            do_not_cache=do_not_cache,
        )
        if platform is not None:
            action.platform.CopyFrom(platform)
        if timeout_s:
            action.timeout.CopyFrom(duration_pb2.Duration(seconds=timeout_s))
        ablob = action.SerializeToString()
        await self.upload(cblob, root, ablob, *extra_blobs)
        return digest_of(ablob)

    async def execute(
        self, digest: re_pb2.Digest, *, skip_cache_lookup: bool = True, deadline: float = 120.0
    ) -> Outcome:
        """Execute to the done Operation, reattaching like Bazel; returns its response."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        name = ""
        names: list[str] = []
        reattaches = 0
        while loop.time() < end:
            if name:
                stream = self.execution.WaitExecution(
                    re_pb2.WaitExecutionRequest(name=name), metadata=self.metadata
                )
            else:
                stream = self.execution.Execute(
                    re_pb2.ExecuteRequest(
                        action_digest=digest, skip_cache_lookup=skip_cache_lookup
                    ),
                    metadata=self.metadata,
                )
            try:
                async for op in stream:
                    if op.name and op.name != name:
                        name = op.name
                        names.append(name)
                    if op.done:
                        assert not op.HasField("error"), op
                        resp = re_pb2.ExecuteResponse()
                        op.response.Unpack(resp)
                        return Outcome(resp, names, reattaches)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND and name:
                    name = ""  # the operation is gone (e.g. Redis lost it): execute again
                elif err.code() not in RETRYABLE:
                    raise
            reattaches += 1
            await asyncio.sleep(0.1)
        raise TimeoutError(f"action {digest.hash}-{digest.size_bytes} not done within {deadline}s")
