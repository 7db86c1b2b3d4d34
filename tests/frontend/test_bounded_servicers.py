"""Issue 15, item 1, at the CAS and ByteStream servicers: a digest over the blob cap and a
batch over the digest cap are INVALID_ARGUMENT before the store is asked anything.

Two set-ups over real gRPC and the private redis-server: the servicers on their own
server with small caps (so Redis's command statistics show the store was never
called), and a whole frontend with its defaults, which must stay healthy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from redbarn.frontend.bytestream import ByteStreamServicer
from redbarn.frontend.cas import ContentAddressableStorageServicer
from redbarn.frontend.storage.redis import RedisBlobStore
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

from .conftest import Client, MiB, digest_of

HUGE = 2**62
Req = re_pb2.BatchUpdateBlobsRequest.Request


@dataclass
class Stubs:
    cas: Any
    bytestream: Any
    redis: aioredis.Redis


@pytest.fixture
async def bounded(real_redis: aioredis.Redis) -> AsyncIterator[Stubs]:
    """CAS and ByteStream with a 1 MiB blob cap and a 3-digest batch cap."""
    store = RedisBlobStore(real_redis)
    server = grpc.aio.server()
    cas = ContentAddressableStorageServicer(
        store, max_batch_total_size=4 * MiB, max_blob_size=MiB, max_batch_digests=3
    )
    re_grpc.add_ContentAddressableStorageServicer_to_server(cas, server)
    bs_grpc.add_ByteStreamServicer_to_server(ByteStreamServicer(store, max_blob_size=MiB), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stubs(
            re_grpc.ContentAddressableStorageStub(channel),
            bs_grpc.ByteStreamStub(channel),
            real_redis,
        )
    finally:
        await channel.close()
        await server.stop(0)


def huge(size: int = HUGE) -> re_pb2.Digest:
    return re_pb2.Digest(hash="ab" * 32, size_bytes=size)


async def one(item: Any) -> AsyncIterator[Any]:
    yield item


async def drain(stream: Any) -> None:
    async for _ in stream:
        pass


Call = Callable[[Any, Any, re_pb2.Digest], Awaitable[object]]
CALLS: dict[str, Call] = {
    "FindMissingBlobs": lambda cas, bs, d: cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b"ok"), d])
    ),
    "BatchReadBlobs": lambda cas, bs, d: cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(digests=[d])
    ),
    "BatchUpdateBlobs": lambda cas, bs, d: cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=d, data=b"x")])
    ),
    "BatchUpdateBlobs zstd": lambda cas, bs, d: cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[Req(digest=d, data=b"x", compressor=re_pb2.Compressor.ZSTD)]
        )
    ),
    "GetTree": lambda cas, bs, d: drain(cas.GetTree(re_pb2.GetTreeRequest(root_digest=d))),
    "Read": lambda cas, bs, d: drain(
        bs.Read(bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}"))
    ),
    "Read zstd": lambda cas, bs, d: drain(
        bs.Read(bs_pb2.ReadRequest(resource_name=f"compressed-blobs/zstd/{d.hash}/{d.size_bytes}"))
    ),
    "Write": lambda cas, bs, d: bs.Write(
        one(
            bs_pb2.WriteRequest(resource_name=f"uploads/u/blobs/{d.hash}/{d.size_bytes}", data=b"x")
        )
    ),
    "Write zstd": lambda cas, bs, d: bs.Write(
        one(
            bs_pb2.WriteRequest(
                resource_name=f"uploads/u/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"
            )
        )
    ),
    "QueryWriteStatus": lambda cas, bs, d: bs.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=f"uploads/u/blobs/{d.hash}/{d.size_bytes}")
    ),
}


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), str(info.value.details())


def too_big(d: re_pb2.Digest, limit: int) -> str:
    return (
        f"Blob {d.hash}-{d.size_bytes} is {d.size_bytes} bytes in size, while this server "
        f"accepts blobs of at most {limit} bytes"
    )


async def store_commands(r: aioredis.Redis) -> dict[str, int]:
    """Calls per Redis command so far, leaving out our own INFO."""
    stats = await r.info("commandstats")
    return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}


@pytest.mark.parametrize("method", CALLS)
@pytest.mark.parametrize("size", [MiB + 1, HUGE])
async def test_a_digest_over_the_cap_never_reaches_the_store(
    bounded: Stubs, method: str, size: int
) -> None:
    before = await store_commands(bounded.redis)
    d = huge(size)
    got = await refusal(CALLS[method](bounded.cas, bounded.bytestream, d))
    assert got == (grpc.StatusCode.INVALID_ARGUMENT, too_big(d, MiB))
    assert await store_commands(bounded.redis) == before


async def test_a_digest_at_the_cap_is_served(bounded: Stubs) -> None:
    d = huge(MiB)
    reply = await bounded.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[d]))
    assert list(reply.missing_blob_digests) == [d]
    status = await bounded.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=f"uploads/u/blobs/{d.hash}/{MiB}")
    )
    assert status == bs_pb2.QueryWriteStatusResponse(committed_size=0, complete=False)


@pytest.mark.parametrize("method", ["FindMissingBlobs", "BatchReadBlobs", "BatchUpdateBlobs"])
async def test_more_digests_than_the_cap(bounded: Stubs, method: str) -> None:
    blobs = [b"a", b"b", b"c", b"d"]
    digests = [digest_of(b) for b in blobs]

    def call(n: int) -> Awaitable[Any]:
        if method == "FindMissingBlobs":
            return bounded.cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(blob_digests=digests[:n])
            )
        if method == "BatchReadBlobs":
            return bounded.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=digests[:n]))
        return bounded.cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[Req(digest=d, data=b) for d, b in zip(digests[:n], blobs, strict=False)]
            )
        )

    before = await store_commands(bounded.redis)
    assert await refusal(call(4)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{method} request carries 4 digests, while this server accepts at most 3 per "
        "request (max_batch_digests)",
    )
    assert await store_commands(bounded.redis) == before
    reply = await call(3)  # three are served
    field = "missing_blob_digests" if method == "FindMissingBlobs" else "responses"
    assert len(getattr(reply, field)) == 3


async def test_the_frontend_refuses_huge_digests_and_stays_healthy(redis_client: Client) -> None:
    """The issue's reproduction: one FindMissingBlobs digest of 2^62 bytes (and the same
    size through QueryWriteStatus, Read and Write) against a frontend with its defaults."""
    d = huge()
    for method in ("FindMissingBlobs", "QueryWriteStatus", "Read", "Write", "GetTree"):
        code, details = await refusal(CALLS[method](redis_client.cas, redis_client.bytestream, d))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, details)
        assert details.startswith(f"Blob {d.hash}-{HUGE} is {HUGE} bytes in size"), details
    health = await redis_client.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ok = digest_of(b"ok")
    reply = await redis_client.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[ok]), timeout=5
    )
    assert list(reply.missing_blob_digests) == [ok]


async def test_the_frontend_caps_digests_per_request(redis_client: Client) -> None:
    """65,537 digests fit in one 5 MiB message; the default cap is 65,536."""
    digests = [re_pb2.Digest(hash=f"{i:064x}", size_bytes=1) for i in range(65537)]
    code, details = await refusal(
        redis_client.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=digests))
    )
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FindMissingBlobs request carries 65537 digests, while this server accepts at most "
        "65536 per request (max_batch_digests)",
    )
