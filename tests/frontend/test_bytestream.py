"""ByteStream Read/Write/QueryWriteStatus over a real channel, on Redis and through the proxy."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest

from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2

from .conftest import Client, MiB, digest_of, put_blobs


def read_name(d: re_pb2.Digest, instance: str = "") -> str:
    return f"{instance + '/' if instance else ''}blobs/{d.hash}/{d.size_bytes}"


def write_name(d: re_pb2.Digest, upload: str = "", instance: str = "") -> str:
    upload = upload or str(uuid.uuid4())
    return f"{instance + '/' if instance else ''}uploads/{upload}/blobs/{d.hash}/{d.size_bytes}"


async def read_all(client: Client, name: str, offset: int = 0, limit: int = 0) -> bytes:
    request = bs_pb2.ReadRequest(resource_name=name, read_offset=offset, read_limit=limit)
    return b"".join([r.data async for r in client.bytestream.Read(request)])


def requests(
    name: str, data: bytes, piece: int = 64 * 1024, start: int = 0
) -> Iterable[bs_pb2.WriteRequest]:
    offsets = list(range(start, len(data), piece)) or [start]
    for i, offset in enumerate(offsets):
        yield bs_pb2.WriteRequest(
            resource_name=name if i == 0 else "",
            write_offset=offset,
            data=data[offset : offset + piece],
            finish_write=i == len(offsets) - 1,
        )


async def write(
    client: Client, name: str, reqs: Iterable[bs_pb2.WriteRequest]
) -> bs_pb2.WriteResponse:
    async def gen() -> AsyncIterator[bs_pb2.WriteRequest]:
        for r in reqs:
            yield r

    response: bs_pb2.WriteResponse = await client.bytestream.Write(gen())
    return response


async def expect_error(coro: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


async def test_write_then_read_back(storage_client: Client) -> None:
    data = os.urandom(300 * 1024)
    d = digest_of(data)
    reply = await write(
        storage_client, write_name(d, instance="main"), requests(write_name(d), data)
    )
    assert reply == bs_pb2.WriteResponse(committed_size=len(data))
    assert await read_all(storage_client, read_name(d, "main")) == data
    assert await read_all(storage_client, read_name(d)) == data  # the CAS is shared by instances
    missing = await storage_client.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[d])
    )
    assert list(missing.missing_blob_digests) == []


async def test_read_offsets_and_limits(storage_client: Client) -> None:
    data = bytes(range(256)) * 10000  # 2.5 MiB: spans three chunk keys
    (d,) = await put_blobs(storage_client, data)
    name = read_name(d)
    for offset, limit in [
        (0, 0),
        (5, 10),
        (MiB - 3, 10),
        (MiB, MiB),
        (len(data) - 1, 0),
        (len(data), 0),
        (100, 10**9),
    ]:
        got = await read_all(storage_client, name, offset, limit)
        assert got == data[offset : offset + limit if limit else None], (offset, limit)


async def test_read_pieces_are_at_most_one_chunk(storage_client: Client) -> None:
    data = os.urandom(2 * MiB + 5)
    d = digest_of(data)
    await write(storage_client, write_name(d), requests(write_name(d), data, piece=MiB))
    stream = storage_client.bytestream.Read(bs_pb2.ReadRequest(resource_name=read_name(d)))
    sizes = [len(r.data) async for r in stream]
    assert sum(sizes) == len(data) and max(sizes) <= MiB


async def test_read_errors(storage_client: Client) -> None:
    (d,) = await put_blobs(storage_client, b"0123456789")
    details = await expect_error(
        read_all(storage_client, read_name(d), offset=11), grpc.StatusCode.OUT_OF_RANGE
    )
    assert details == f"Read offset 11 is outside blob {d.hash}-10 of 10 bytes"
    await expect_error(
        read_all(storage_client, read_name(d), offset=-1), grpc.StatusCode.OUT_OF_RANGE
    )
    details = await expect_error(
        read_all(storage_client, read_name(d), limit=-1), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details == "Invalid read limit -1: it must not be negative"
    absent = digest_of(b"absent")
    details = await expect_error(
        read_all(storage_client, read_name(absent)), grpc.StatusCode.NOT_FOUND
    )
    assert details == f"Blob {absent.hash}-{absent.size_bytes} not found"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nothing/here", 'Invalid resource name "nothing/here": expected {instance_name}/blobs/{hash}/{size}'),
        ("blobs/abc", 'Invalid resource name "blobs/abc": expected a hash and a size after "blobs"'),
        (f"blobs/{'a' * 64}/ten", f'Invalid resource name "blobs/{"a" * 64}/ten": invalid digest size "ten"'),
        ("blobs/abc/3", "Unknown digest function"),
        (f"blobs/{'a' * 64}/-1", "Invalid digest size: -1 bytes"),
        (f"blobs/blake3/{'a' * 64}/1", f'Unsupported digest function "blake3" in resource name "blobs/blake3/{"a" * 64}/1": this server stores SHA256 only'),
        (f"compressed-blobs/deflate/{'a' * 64}/1", f'Unsupported compressor "deflate" in resource name "compressed-blobs/deflate/{"a" * 64}/1": this server supports identity and zstd only'),
        (f"compressed-blobs/brotli/{'a' * 64}/1", f'Unsupported compressor "brotli" in resource name "compressed-blobs/brotli/{"a" * 64}/1": this server supports identity and zstd only'),
        (f"compressed-blobs/ZSTD/{'a' * 64}/1", f'Unsupported compressor "ZSTD" in resource name "compressed-blobs/ZSTD/{"a" * 64}/1": this server supports identity and zstd only'),
        (f"a//b/blobs/{'a' * 64}/1", 'Invalid instance name "a//b": Instance name contains redundant slashes'),
        (f"blobs/{'a' * 64}/1/extra", f'Invalid resource name "blobs/{"a" * 64}/1/extra": unexpected "extra" after the size'),
    ],
)  # fmt: skip
async def test_bad_read_resource_names(redis_client: Client, name: str, message: str) -> None:
    details = await expect_error(read_all(redis_client, name), grpc.StatusCode.INVALID_ARGUMENT)
    assert details == message


async def test_identity_compressed_and_named_function_forms(storage_client: Client) -> None:
    data = b"compressed? no"
    d = digest_of(data)
    upload = (
        f"uploads/{uuid.uuid4()}/compressed-blobs/identity/{d.hash}/{d.size_bytes}/some/metadata"
    )
    assert (await write(storage_client, upload, requests(upload, data))).committed_size == len(data)
    assert (
        await read_all(storage_client, f"inst/compressed-blobs/identity/{d.hash}/{d.size_bytes}")
        == data
    )
    assert await read_all(storage_client, f"blobs/sha256/{d.hash}/{d.size_bytes}") == data


async def test_write_wrong_hash_and_wrong_size(storage_client: Client) -> None:
    data = b"payload" * 1000
    other = re_pb2.Digest(hash=hashlib.sha256(b"other").hexdigest(), size_bytes=len(data))
    name = write_name(other)
    details = await expect_error(
        write(storage_client, name, requests(name, data)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details == f"Buffer has checksum {digest_of(data).hash}, while {other.hash} was expected"
    short = re_pb2.Digest(hash=digest_of(data).hash, size_bytes=len(data) + 5)
    name = write_name(short)
    details = await expect_error(
        write(storage_client, name, requests(name, data)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        details == f"Buffer is {len(data)} bytes in size, while {len(data) + 5} bytes were expected"
    )
    missing = await storage_client.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[other, short])
    )
    assert list(missing.missing_blob_digests) == [other, short]


async def test_write_past_the_declared_size(storage_client: Client) -> None:
    data = b"0123456789"
    small = re_pb2.Digest(hash=digest_of(data[:4]).hash, size_bytes=4)
    name = write_name(small)
    details = await expect_error(
        write(storage_client, name, requests(name, data)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "exceeds the size of blob" in details


async def test_write_offsets_that_skip_or_rewind(storage_client: Client) -> None:
    data = os.urandom(1000)
    d = digest_of(data)
    upload = str(uuid.uuid4())
    name = write_name(d, upload)
    skip = [
        bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:100]),
        bs_pb2.WriteRequest(write_offset=150, data=data[150:], finish_write=True),
    ]
    details = await expect_error(
        write(storage_client, name, skip), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "Invalid write offset 150" in details and "expected offset 100" in details
    rewind = [
        bs_pb2.WriteRequest(resource_name=name, write_offset=50, data=data[50:], finish_write=True)
    ]
    details = await expect_error(
        write(storage_client, name, rewind), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "Invalid write offset 50" in details and "expected offset 100" in details
    # The 100 accepted bytes were kept: resuming at 100 completes the blob.
    status = await storage_client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name)
    )
    assert status == bs_pb2.QueryWriteStatusResponse(committed_size=100, complete=False)
    reply = await write(storage_client, name, requests(name, data, start=100))
    assert reply.committed_size == len(data)
    assert await read_all(storage_client, read_name(d)) == data


async def test_blob_over_the_maximum(storage_client: Client) -> None:
    limit = storage_client.config.max_blob_size
    d = re_pb2.Digest(hash="a" * 64, size_bytes=limit + 1)
    name = write_name(d)
    details = await expect_error(
        write(storage_client, name, requests(name, b"x")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details == (
        f"Blob {d.hash}-{limit + 1} is {limit + 1} bytes in size, while this server accepts "
        f"blobs of at most {limit} bytes"
    )


async def test_resumable_write_via_query_write_status(storage_client: Client) -> None:
    data = os.urandom(3 * MiB + 12345)
    d = digest_of(data)
    name = write_name(d)
    status = await storage_client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name)
    )
    assert status == bs_pb2.QueryWriteStatusResponse(committed_size=0, complete=False)

    # First stream: 1.5 MiB, then the client half-closes without finish_write.
    part = [r for r in requests(name, data[: 3 * MiB // 2], piece=256 * 1024)]
    part[-1].finish_write = False
    await expect_error(write(storage_client, name, part), grpc.StatusCode.INVALID_ARGUMENT)
    status = await storage_client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name)
    )
    assert status == bs_pb2.QueryWriteStatusResponse(committed_size=3 * MiB // 2, complete=False)

    # Second stream resumes at committed_size and finishes.
    reply = await write(
        storage_client, name, requests(name, data, piece=256 * 1024, start=status.committed_size)
    )
    assert reply.committed_size == len(data)
    status = await storage_client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name)
    )
    assert status == bs_pb2.QueryWriteStatusResponse(committed_size=len(data), complete=True)
    assert await read_all(storage_client, read_name(d)) == data


async def test_cancelled_stream_keeps_flushed_data(redis_client: Client) -> None:
    data = os.urandom(2 * MiB)
    d = digest_of(data)
    name = write_name(d)
    sent = asyncio.Event()

    async def gen() -> AsyncIterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, write_offset=0, data=data[:MiB])
        sent.set()
        await asyncio.sleep(3600)

    call = redis_client.bytestream.Write(gen())
    await sent.wait()
    for _ in range(100):
        status = await redis_client.bytestream.QueryWriteStatus(
            bs_pb2.QueryWriteStatusRequest(resource_name=name)
        )
        if status.committed_size == MiB:
            break
        await asyncio.sleep(0.02)
    assert status.committed_size == MiB
    call.cancel()
    reply = await write(redis_client, name, requests(name, data, start=MiB))
    assert reply.committed_size == len(data)
    assert await read_all(redis_client, read_name(d)) == data


async def test_write_of_an_existing_blob_completes_early(storage_client: Client) -> None:
    data = os.urandom(100 * 1024)
    (d,) = await put_blobs(storage_client, data)
    name = write_name(d)
    consumed = []

    async def gen() -> AsyncIterator[bs_pb2.WriteRequest]:
        for r in requests(name, data, piece=1024):
            consumed.append(r.write_offset)
            yield r

    reply = await storage_client.bytestream.Write(gen())
    assert reply == bs_pb2.WriteResponse(committed_size=len(data))
    assert len(consumed) < 100  # the server did not wait for all 100 pieces
    status = await storage_client.bytestream.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=name)
    )
    assert status == bs_pb2.QueryWriteStatusResponse(committed_size=len(data), complete=True)


async def test_empty_blob(storage_client: Client) -> None:
    d = digest_of(b"")
    name = write_name(d)
    assert (await write(storage_client, name, requests(name, b""))).committed_size == 0
    assert await read_all(storage_client, read_name(d)) == b""


async def test_twenty_mib_blob_streamed_in_chunks(storage_client: Client) -> None:
    data = os.urandom(20 * MiB)
    d = digest_of(data)
    name = write_name(d)
    reply = await write(storage_client, name, requests(name, data, piece=MiB))
    assert reply.committed_size == len(data)
    stream = storage_client.bytestream.Read(bs_pb2.ReadRequest(resource_name=read_name(d)))
    hasher, total, pieces = hashlib.sha256(), 0, 0
    async for r in stream:
        hasher.update(r.data)
        total += len(r.data)
        pieces += 1
    assert (hasher.hexdigest(), total) == (d.hash, len(data))
    assert pieces >= 20
