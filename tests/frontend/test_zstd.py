"""zstd over the wire: ByteStream compressed-blobs reads and writes, batch compressors and
Capabilities, against a real frontend (on Redis, and through the proxy where cheap)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import uuid
from collections.abc import Iterable

import grpc
import pytest
import zstandard
from grpc_health.v1 import health_pb2

from redbarn.frontend.config import FrontendConfig
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2

from .conftest import (
    Client,
    MiB,
    client_for,
    digest_of,
    open_client_channel,
    put_blobs,
    start_frontend,
)
from .test_bytestream import expect_error, read_all, read_name, write, write_name

ZSTD = re_pb2.Compressor.ZSTD
Req = re_pb2.BatchUpdateBlobsRequest.Request


def zstd(data: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def compressed_write_name(d: re_pb2.Digest, upload: str = "") -> str:
    return f"uploads/{upload or uuid.uuid4()}/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"


def compressed_read_name(d: re_pb2.Digest, instance: str = "") -> str:
    return f"{instance + '/' if instance else ''}compressed-blobs/zstd/{d.hash}/{d.size_bytes}"


def compressed_requests(
    name: str, compressed: bytes, piece: int = 64 * 1024, start: int = 0, finish: bool = True
) -> Iterable[bs_pb2.WriteRequest]:
    """REAPI's offsets: the first is `start` (uncompressed), each next one adds the
    compressed bytes sent before it."""
    cuts = list(range(0, len(compressed), piece)) or [0]
    for i, cut in enumerate(cuts):
        yield bs_pb2.WriteRequest(
            resource_name=name if i == 0 else "",
            write_offset=start + cut,
            data=compressed[cut : cut + piece],
            finish_write=finish and i == len(cuts) - 1,
        )


async def is_missing(client: Client, d: re_pb2.Digest) -> bool:
    reply = await client.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[d]))
    return list(reply.missing_blob_digests) == [d]


async def test_fifty_mib_round_trip(frontend_config: FrontendConfig) -> None:
    """Compressed write, compressed read, plain read of one 50 MiB blob."""
    config = dataclasses.replace(frontend_config, max_blob_size=64 * MiB)
    server, port = await start_frontend(config)
    channel = open_client_channel(port)
    client = client_for(channel, server, config)
    try:
        data = os.urandom(25 * MiB).hex().encode()  # 50 MiB of hex digits: compresses ~2:1
        d = digest_of(data)
        compressed = zstd(data, level=1)
        assert len(compressed) < len(data) * 0.6
        name = compressed_write_name(d)
        reply = await write(client, name, compressed_requests(name, compressed, piece=MiB))
        assert reply == bs_pb2.WriteResponse(committed_size=len(compressed))
        assert not await is_missing(client, d)

        stream = client.bytestream.Read(bs_pb2.ReadRequest(resource_name=compressed_read_name(d)))
        decoder = zstandard.ZstdDecompressor().decompressobj()
        hasher, size, received, pieces = hashlib.sha256(), 0, 0, 0
        async for response in stream:
            received += len(response.data)
            pieces += 1
            out = decoder.decompress(response.data)
            hasher.update(out)
            size += len(out)
        assert (hasher.hexdigest(), size) == (d.hash, d.size_bytes)
        assert received < len(data) * 0.6  # it came compressed
        assert pieces > 10  # streamed, not in one message
        assert await read_all(client, read_name(d)) == data
    finally:
        await channel.close()
        await server.stop(0)


async def test_compressed_upload_of_other_bytes_stores_nothing(storage_client: Client) -> None:
    declared = b"the bytes the digest names" * 100
    d = digest_of(declared)
    other = b"X" + declared[1:]  # same size, other hash
    name = compressed_write_name(d)
    details = await expect_error(
        write(storage_client, name, compressed_requests(name, zstd(other), piece=100)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details == f"Buffer has checksum {digest_of(other).hash}, while {d.hash} was expected"
    assert await is_missing(storage_client, d)

    shorter = compressed_write_name(d)
    details = await expect_error(
        write(storage_client, shorter, compressed_requests(shorter, zstd(declared[:-1]))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details == (
        f"Buffer is {len(declared) - 1} bytes in size, while {len(declared)} bytes were expected"
    )
    assert await is_missing(storage_client, d)


async def test_zstd_bomb_is_refused(redis_client: Client) -> None:
    """1 GiB of zeros in ~40 KiB of zstd (1024 frames of 1 MiB each), declared as 1 MiB:
    refused, nothing stored, the frontend healthy."""
    bomb = zstd(b"\0" * MiB, level=19) * 1024
    assert len(bomb) < 64 * 1024
    d = re_pb2.Digest(hash=hashlib.sha256(b"\0" * MiB).hexdigest(), size_bytes=MiB)
    name = compressed_write_name(d)
    details = await expect_error(
        write(redis_client, name, compressed_requests(name, bomb)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details == (
        f"Compressed data for blob {d.hash}-{MiB} decompresses to more than the {MiB} bytes "
        "expected"
    )
    assert await is_missing(redis_client, d)
    health = await redis_client.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    reply = await redis_client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=d, data=bomb, compressor=ZSTD)])
    )
    assert [(r.status.code, r.status.message) for r in reply.responses] == [(3, details)]
    assert await is_missing(redis_client, d)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not zstd at all", "unknown frame magic number 0x20746f6e"),
        (zstd(b"cut short " * 1000)[:-3], "the stream ends inside a frame"),
        (b"", "the stream holds no frame"),
    ],
)
async def test_bad_zstd_is_invalid_argument(
    redis_client: Client, data: bytes, problem: str
) -> None:
    d = digest_of(b"cut short " * 1000)
    name = compressed_write_name(d)
    details = await expect_error(
        write(redis_client, name, compressed_requests(name, data)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        details == f"Compressed data for blob {d.hash}-{d.size_bytes} is not valid zstd: {problem}"
    )
    assert await is_missing(redis_client, d)


async def test_compressed_write_offsets_count_compressed_bytes(storage_client: Client) -> None:
    data = os.urandom(200 * 1024)
    d = digest_of(data)
    compressed = zstd(data)
    name = compressed_write_name(d, "u1")
    reqs = list(compressed_requests(name, compressed, piece=50 * 1024))
    reqs[1].write_offset += 1
    details = await expect_error(
        write(storage_client, name, reqs), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details == (
        f"Invalid write offset {50 * 1024 + 1} for compressed upload u1 of blob "
        f"{d.hash}-{d.size_bytes}: expected offset {50 * 1024} (the first offset 0 plus the "
        f"{50 * 1024} compressed bytes received)"
    )
    ahead = compressed_write_name(d, "u2")
    details = await expect_error(
        write(storage_client, ahead, compressed_requests(ahead, compressed, start=10)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details == (
        f"Invalid write offset 10 for compressed upload u2 of blob {d.hash}-{d.size_bytes}: "
        "0 uncompressed bytes are staged, so it must be at most 0"
    )
    assert await is_missing(storage_client, d)


async def test_compressed_write_of_a_present_blob_answers_minus_one(storage_client: Client) -> None:
    data = os.urandom(100 * 1024)
    (d,) = await put_blobs(storage_client, data)
    name = compressed_write_name(d)
    reply = await write(storage_client, name, compressed_requests(name, zstd(data), piece=1024))
    assert reply == bs_pb2.WriteResponse(committed_size=-1)
    empty = digest_of(b"")
    name = compressed_write_name(empty)
    reply = await write(storage_client, name, compressed_requests(name, zstd(b"")))
    assert reply == bs_pb2.WriteResponse(committed_size=-1)


async def test_broken_compressed_upload_restarts(storage_client: Client) -> None:
    """A broken compressed stream leaves its decompressed bytes staged. QueryWriteStatus of
    the compressed name answers 0, so clients restart from the start (the staged bytes
    are skipped); a client that resumes at the staged uncompressed offset with a new frame
    of the rest (REAPI's offsets) is served too."""
    for restart in (True, False):
        data = os.urandom(MiB + 4321)
        d = digest_of(data)
        upload = str(uuid.uuid4())
        name = compressed_write_name(d, upload)
        part = zstandard.ZstdCompressor().compressobj()
        head = part.compress(data[: MiB // 2]) + part.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        await expect_error(
            write(storage_client, name, compressed_requests(name, head, finish=False)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        status = await storage_client.bytestream.QueryWriteStatus(
            bs_pb2.QueryWriteStatusRequest(resource_name=name)
        )
        assert status == bs_pb2.QueryWriteStatusResponse(committed_size=0, complete=False)
        plain = bs_pb2.QueryWriteStatusRequest(resource_name=write_name(d, upload))
        staged = await storage_client.bytestream.QueryWriteStatus(plain)
        assert staged == bs_pb2.QueryWriteStatusResponse(committed_size=MiB // 2, complete=False)

        start = 0 if restart else staged.committed_size
        rest = zstd(data[start:])
        reply = await write(storage_client, name, compressed_requests(name, rest, start=start))
        assert reply == bs_pb2.WriteResponse(committed_size=start + len(rest))
        assert await read_all(storage_client, read_name(d)) == data
        status = await storage_client.bytestream.QueryWriteStatus(
            bs_pb2.QueryWriteStatusRequest(resource_name=name)
        )
        assert status.complete


async def test_compressed_reads(storage_client: Client) -> None:
    data = os.urandom(300 * 1024) + b"a" * (300 * 1024)
    d = digest_of(data)
    name = compressed_write_name(d)
    await write(storage_client, name, compressed_requests(name, zstd(data)))
    whole = await read_all(storage_client, compressed_read_name(d, "inst"))
    assert unzstd(whole) == data and len(whole) < len(data)
    # read_offset is an offset into the uncompressed blob (REAPI).
    assert (
        unzstd(await read_all(storage_client, compressed_read_name(d), offset=1000)) == data[1000:]
    )
    assert unzstd(await read_all(storage_client, compressed_read_name(d), offset=len(data))) == b""
    details = await expect_error(
        read_all(storage_client, compressed_read_name(d), limit=10),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details == (
        f"Invalid read limit 10 for compressed blob {d.hash}-{d.size_bytes}: compressed reads "
        "must have read_limit 0"
    )
    await expect_error(
        read_all(storage_client, compressed_read_name(d), offset=len(data) + 1),
        grpc.StatusCode.OUT_OF_RANGE,
    )
    absent = digest_of(b"absent")
    details = await expect_error(
        read_all(storage_client, compressed_read_name(absent)), grpc.StatusCode.NOT_FOUND
    )
    assert details == f"Blob {absent.hash}-{absent.size_bytes} not found"
    assert unzstd(await read_all(storage_client, compressed_read_name(digest_of(b"")))) == b""


async def test_batch_round_trip_with_zstd(storage_client: Client) -> None:
    blobs = [b"small", os.urandom(10_000), b"z" * 200_000, b""]
    digests = [digest_of(b) for b in blobs]
    bad = digest_of(b"bad data")
    reply = await storage_client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[
                Req(digest=digests[0], data=blobs[0]),  # identity and zstd mix
                *(
                    Req(digest=d, data=zstd(b), compressor=ZSTD)
                    for d, b in zip(digests[1:], blobs[1:], strict=True)
                ),
                Req(digest=bad, data=b"bad data", compressor=ZSTD),  # not zstd
            ]
        )
    )
    assert [(r.digest, r.status.code, r.status.message) for r in reply.responses] == [
        *((d, 0, "") for d in digests),
        (bad, 3, f"Compressed data for blob {bad.hash}-8 is not valid zstd: unknown frame magic number 0x20646162"),
    ]  # fmt: skip
    absent = digest_of(b"absent")
    request = re_pb2.BatchReadBlobsRequest(
        digests=[*digests, absent], acceptable_compressors=[re_pb2.Compressor.DEFLATE, ZSTD]
    )
    reply = await storage_client.cas.BatchReadBlobs(request)
    assert [(r.digest, r.status.code, r.compressor) for r in reply.responses] == [
        *((d, 0, ZSTD) for d in digests), (absent, 5, re_pb2.Compressor.IDENTITY)
    ]  # fmt: skip
    assert [unzstd(r.data) for r in reply.responses[:-1]] == blobs
    assert len(reply.responses[2].data) < 1000
    plain = await storage_client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=digests))
    assert [(r.data, r.compressor) for r in plain.responses] == [
        (b, re_pb2.Compressor.IDENTITY) for b in blobs
    ]


async def test_batch_limit_counts_uncompressed_sizes(redis_client: Client) -> None:
    """4 MiB batch limit: 5 MiB of zeros compress to a few hundred bytes, but the digest
    says 5 MiB, so the batch is refused before any decompression."""
    data = b"\0" * (5 * MiB)
    d = digest_of(data)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[Req(digest=d, data=zstd(data), compressor=ZSTD)]
            )
        )
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Batch of {5 * MiB} bytes exceeds the limit of {4 * MiB} bytes "
        "(max_batch_total_size_bytes); use ByteStream for large blobs",
    )


async def test_capabilities_advertise_zstd(redis_client: Client) -> None:
    reply = await redis_client.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest())
    cache = reply.cache_capabilities
    assert list(cache.supported_compressors) == [ZSTD]
    assert list(cache.supported_batch_update_compressors) == [ZSTD]


async def test_concurrent_compressed_uploads(redis_client: Client) -> None:
    blobs = [os.urandom(256 * 1024) * 2 for _ in range(8)]

    async def upload(data: bytes) -> int:
        d = digest_of(data)
        name = compressed_write_name(d)
        reply = await write(redis_client, name, compressed_requests(name, zstd(data), piece=8192))
        return int(reply.committed_size)

    sizes = await asyncio.gather(*(upload(b) for b in blobs))
    assert sizes == [len(zstd(b)) for b in blobs]
    for data in blobs:
        assert await read_all(redis_client, read_name(digest_of(data))) == data
