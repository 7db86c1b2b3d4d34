"""The error decorator, through a real server: codes, messages, rich PreconditionFailure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.exceptions
from google.rpc import error_details_pb2, status_pb2

from redbarn import errors
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.errors import STATUS_DETAILS_KEY, grpc_errors
from redbarn.frontend.server import Frontend, create_server

from .conftest import open_client_channel

RAISED: dict[str, BaseException] = {
    "precondition": errors.FailedPrecondition(
        "Failed to obtain action: Blob 3f2a-142 not found",
        missing=["blobs/" + "3f" * 32 + "/142", "blobs/" + "aa" * 32 + "/7"],
    ),
    "not_found": errors.NotFound('Operation with name "x" not found'),
    "redis_down": redis.exceptions.ConnectionError("Connection refused"),
    "redis_full": redis.exceptions.OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'. script: "
        + "ab" * 20
        + ", on @user_script:7."
    ),
    "redis_replica": redis.exceptions.ReadOnlyError(
        "You can't write against a read only replica. script: " + "cd" * 20
    ),
    "bug": ValueError("boom"),
    "exhausted": errors.ResourceExhausted(
        "A worker with the same worker ID is already synchronizing"
    ),
}


class Raiser:
    """Methods raising whatever the request (a bytes key) names, in all three call shapes."""

    @grpc_errors
    async def unary(self, request: bytes, context: Any) -> bytes:
        raise RAISED[request.decode()]

    @grpc_errors
    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        raise RAISED[request.decode()]

    @grpc_errors
    async def client_stream(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for r in requests:
            raise RAISED[r.decode()]
        return b""


def add_raiser(frontend: Frontend) -> None:
    r = Raiser()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(r.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(r.stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(r.client_stream),
    }
    frontend.server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Raiser", handlers),)
    )


@pytest.fixture
async def channel(frontend_config: FrontendConfig) -> AsyncIterator[grpc.aio.Channel]:
    server, port = await create_server(frontend_config, hooks=[add_raiser])
    await server.start()
    ch = open_client_channel(port)
    try:
        yield ch
    finally:
        await ch.close()
        await server.stop(0)


async def call(channel: grpc.aio.Channel, shape: str, key: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if shape == "Unary":
            await channel.unary_unary("/test.Raiser/Unary")(key.encode())
        elif shape == "Stream":
            [m async for m in channel.unary_stream("/test.Raiser/Stream")(key.encode())]
        else:

            async def gen() -> AsyncIterator[bytes]:
                yield key.encode()

            await channel.stream_unary("/test.Raiser/ClientStream")(gen())
    return info.value


@pytest.mark.parametrize("shape", ["Unary", "Stream", "ClientStream"])
@pytest.mark.parametrize(
    ("key", "code", "message"),
    [
        ("not_found", grpc.StatusCode.NOT_FOUND, 'Operation with name "x" not found'),
        ("redis_down", grpc.StatusCode.UNAVAILABLE, "Storage unavailable: Connection refused"),
        (
            "redis_full",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Redis is out of memory (maxmemory reached): writes are refused until memory is freed",
        ),
        (
            "redis_replica",
            grpc.StatusCode.UNAVAILABLE,
            "Redis is a read-only replica (after a failover?): writes are refused; retry",
        ),
        ("bug", grpc.StatusCode.INTERNAL, None),
        (
            "exhausted",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "A worker with the same worker ID is already synchronizing",
        ),
    ],
)
async def test_error_table(
    channel: grpc.aio.Channel, shape: str, key: str, code: grpc.StatusCode, message: str | None
) -> None:
    err = await call(channel, shape, key)
    assert err.code() == code
    if message is not None:
        assert err.details() == message
    else:
        assert "ValueError: boom" in str(err.details()) and "Raiser" in str(err.details())


@pytest.mark.parametrize("shape", ["Unary", "Stream", "ClientStream"])
async def test_failed_precondition_carries_missing_blobs(
    channel: grpc.aio.Channel, shape: str
) -> None:
    err = await call(channel, shape, "precondition")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "Failed to obtain action: Blob 3f2a-142 not found"
    raw = dict(err.trailing_metadata() or ())[STATUS_DETAILS_KEY]
    status = status_pb2.Status.FromString(raw)
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    V = error_details_pb2.PreconditionFailure.Violation
    assert (status.code, status.message) == (
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
        err.details(),
    )
    assert failure == error_details_pb2.PreconditionFailure(
        violations=[
            V(type="MISSING", subject="blobs/" + "3f" * 32 + "/142"),
            V(type="MISSING", subject="blobs/" + "aa" * 32 + "/7"),
        ]
    )
