"""Storage throughput of one frontend (Redis-backed) and of a proxy frontend in front of it.

    .venv/bin/python bench/storage_bench.py [--blob-mib 64] [--seconds 3]

Starts a private redis-server and the frontends in this process, then measures over a
real gRPC channel: FindMissingBlobs (1000 digests per call), BatchUpdateBlobs and
BatchReadBlobs (256 x 4 KiB), and ByteStream Write/Read of one large blob in 1 MiB
pieces. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.server import create_server
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.runtime.redisserver import RedisServer

MiB = 1 << 20


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


async def timed(fn: Callable[[], Awaitable[object]], seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        await fn()
        latencies.append(time.perf_counter() - t)
    return latencies


def report(name: str, latencies: list[float], unit_per_call: float = 0, unit: str = "") -> None:
    total = sum(latencies)
    line = f"{name:<44} {len(latencies) / total:9.1f} calls/s  p50 {statistics.median(latencies) * 1e3:7.2f} ms"
    if unit_per_call:
        line += f"  {unit_per_call * len(latencies) / total:9.1f} {unit}"
    print(line, flush=True)


async def bench(port: int, label: str, blob_mib: int, seconds: float) -> None:
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 * MiB),
            ("grpc.max_send_message_length", 64 * MiB),
        ],
    )
    cas = re_grpc.ContentAddressableStorageStub(channel)
    bs = bs_grpc.ByteStreamStub(channel)

    small = [os.urandom(4096) for _ in range(256)]
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    update = re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=digest(b), data=b) for b in small])
    report(
        f"{label}: BatchUpdateBlobs 256 x 4 KiB",
        await timed(lambda: cas.BatchUpdateBlobs(update), seconds),
        1.0,
        "MiB/s",
    )
    read = re_pb2.BatchReadBlobsRequest(digests=[digest(b) for b in small])
    report(
        f"{label}: BatchReadBlobs 256 x 4 KiB",
        await timed(lambda: cas.BatchReadBlobs(read), seconds),
        1.0,
        "MiB/s",
    )
    present = [digest(b) for b in small] * 2
    absent = [digest(os.urandom(16)) for _ in range(488)]
    find = re_pb2.FindMissingBlobsRequest(blob_digests=present + absent)
    report(
        f"{label}: FindMissingBlobs 1000 digests",
        await timed(lambda: cas.FindMissingBlobs(find), seconds),
        1000,
        "digests/s",
    )

    blob = os.urandom(blob_mib * MiB)
    d = digest(blob)

    async def write() -> None:
        name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"

        async def gen() -> AsyncIterator[bs_pb2.WriteRequest]:
            for off in range(0, len(blob), MiB):
                yield bs_pb2.WriteRequest(
                    resource_name=name if off == 0 else "", write_offset=off,
                    data=blob[off : off + MiB], finish_write=off + MiB >= len(blob),
                )  # fmt: skip

        await bs.Write(gen())

    # A fresh digest per write would need fresh data; instead drop the blob between runs.
    report(
        f"{label}: ByteStream Write {blob_mib} MiB (first upload)",
        await timed(write, 0.0001),
        blob_mib,
        "MiB/s",
    )

    async def read_all() -> None:
        request = bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}")
        async for _ in bs.Read(request):
            pass

    report(
        f"{label}: ByteStream Read {blob_mib} MiB",
        await timed(read_all, seconds),
        blob_mib,
        "MiB/s",
    )
    await channel.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--blob-mib", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    redis_server = RedisServer().start()
    try:
        config = FrontendConfig(
            listen="127.0.0.1:0", redis_url=redis_server.url, max_blob_size=1 << 30
        )
        storage, port = await create_server(config)
        await storage.start()
        await bench(port, "redis", args.blob_mib, args.seconds)
        proxy_config = dataclasses.replace(config, storage=f"grpc://127.0.0.1:{port}")
        proxy, proxy_port = await create_server(proxy_config)
        await proxy.start()
        import redis

        with redis.Redis.from_url(redis_server.url) as r:
            r.flushall()
        await bench(proxy_port, "proxy", args.blob_mib, args.seconds)
        await proxy.stop(0)
        await storage.stop(0)
    finally:
        redis_server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
