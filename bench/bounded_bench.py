"""What a merely large request costs: Redis keys looked up, Redis time, frontend memory.

    .venv/bin/python bench/bounded_bench.py [--real-blobs 50]

Starts a private redis-server and one frontend process (`python -m redbarn frontend
--max-action-size 1MiB`, everything else default), then runs issue 15's reproductions
over a real gRPC channel and prints one line per load:

- lookups: keyspace hits + misses in Redis's INFO stats during the load (one per key a
  read command looked up: a probe costs 1 for an absent blob, 1 for a STRING, 4 for a
  HASH; TTL refreshes are not counted);
- calls: Redis commands run (INFO commandstats: the commands inside scripts, plus each
  EVAL/EVALSHA itself; the bench's own INFO/CONFIG/SLOWLOG left out);
- slowest: the longest single Redis command (SLOWLOG with a 0 us threshold);
- rss / peak: the frontend's VmRSS before and after the load, and how far its VmHWM
  rose above the first during it (the bench resets VmHWM through clear_refs).

Loads: FindMissingBlobs of one digest of 2^62 bytes; of 2,000 absent digests of 1 GiB;
of 2,000 present chunked blobs (3 chunks of 1 KiB each, written directly: a HASH probe
costs the same whatever its chunk size); of `--real-blobs` present blobs of 2 MiB
(uploaded through the frontend: two 1 MiB chunks each), a BatchReadBlobs of two of
them, and 2,000 absent digests of 2 MiB;
GetActionResult of a stored result naming a 2^62-byte output; Execute of a 24 MiB
Action over --max-action-size, four times.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import redis.asyncio as aioredis

from redbarn.digests import Digest
from redbarn.frontend.storage.redis import RedisActionCache, RedisBlobStore
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.runtime.redisserver import RedisServer, free_port

MiB = 1 << 20
GiB = 1 << 30


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid: int) -> None:
    """VmHWM := VmRSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def fake(size: int, seed: int) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(b"%d" % seed).hexdigest(), size_bytes=size)


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


_OURS = ("cmdstat_info", "cmdstat_config", "cmdstat_slowlog")  # the bench's own commands


async def counters(r: aioredis.Redis) -> tuple[int, int]:
    stats = await r.info("stats")
    commands = await r.info("commandstats")
    ours = [k for k in commands if not k.startswith(_OURS)]
    calls = sum(commands[k]["calls"] for k in ours)
    return stats["keyspace_hits"] + stats["keyspace_misses"], calls


async def measure(
    label: str, r: aioredis.Redis, pid: int, load: Callable[[], Awaitable[str]]
) -> None:
    await r.config_set("slowlog-log-slower-than", 0)
    await r.config_set("slowlog-max-len", 100_000)
    await r.slowlog_reset()
    keys0, calls0 = await counters(r)
    reset_peak(pid)
    peak0 = status(pid, "VmHWM")  # = VmRSS now
    start = time.perf_counter()
    outcome = await load()
    elapsed = time.perf_counter() - start
    keys1, calls1 = await counters(r)
    slow = await r.slowlog_get(100_000)
    ours = [e for e in slow if not str(e.get("command", b"")).startswith(("b'SLOWLOG", "b'INFO"))]
    slowest = max((e["duration"] for e in ours), default=0) / 1000
    print(
        f"{label:<58} lookups {keys1 - keys0:>6}  calls {calls1 - calls0:>5}  "
        f"slowest {slowest:6.2f} ms  wall {elapsed * 1000:7.1f} ms  "
        f"rss {peak0 / MiB:5.1f} -> {status(pid, 'VmRSS') / MiB:5.1f} MiB, "
        f"peak +{(status(pid, 'VmHWM') - peak0) / MiB:4.1f} MiB"
        f"  -> {outcome}"
    )


async def run(
    server: RedisServer, proc: subprocess.Popen[bytes], port: int, real_blobs: int
) -> None:
    r = aioredis.Redis.from_url(server.url)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_receive_message_length", 256 * MiB),
                 ("grpc.max_send_message_length", 256 * MiB)],
    )  # fmt: skip
    cas = re_grpc.ContentAddressableStorageStub(channel)
    ac = re_grpc.ActionCacheStub(channel)
    execution = re_grpc.ExecutionStub(channel)
    bytestream = bs_grpc.ByteStreamStub(channel)

    async def write(data: bytes) -> None:
        d = digest_of(data)
        resource = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"
        pieces = [
            bs_pb2.WriteRequest(
                resource_name=resource, write_offset=o, data=data[o : o + MiB],
                finish_write=o + MiB >= len(data),
            )
            for o in range(0, len(data), MiB)
        ]  # fmt: skip
        await bytestream.Write(iter(pieces))

    try:
        await channel.channel_ready()
        print(f"frontend pid {proc.pid}: rss {status(proc.pid, 'VmRSS') / MiB:.1f} MiB at start")

        async def code(call: Awaitable[object]) -> str:
            try:
                await call
            except grpc.aio.AioRpcError as err:
                return err.code().name
            return "OK"

        async def find(digests: list[re_pb2.Digest]) -> str:
            reply = await cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(blob_digests=digests), timeout=60
            )
            return f"{len(reply.missing_blob_digests)} missing"

        await measure(
            "FindMissingBlobs, 1 digest of 2^62 bytes", r, proc.pid,
            lambda: code(find([fake(1 << 62, 0)])),
        )  # fmt: skip
        await measure(
            "FindMissingBlobs, 2,000 absent digests of 1 GiB", r, proc.pid,
            lambda: find([fake(GiB, i) for i in range(2000)]),
        )  # fmt: skip

        small = [os.urandom(3 * 1024) for _ in range(2000)]
        await RedisBlobStore(r, chunk_size=1024).put_many("", [(Digest.of(b), b) for b in small])
        await measure(
            "FindMissingBlobs, 2,000 present 3-chunk blobs", r, proc.pid,
            lambda: find([digest_of(b) for b in small]),
        )  # fmt: skip

        big = [os.urandom(2 * MiB) for _ in range(real_blobs)]
        for b in big:
            await write(b)
        big_digests = [digest_of(b) for b in big]
        await measure(
            f"FindMissingBlobs, {real_blobs} present blobs of 2 MiB", r, proc.pid,
            lambda: find(big_digests),
        )  # fmt: skip
        await measure(
            "FindMissingBlobs, 2,000 absent digests of 2 MiB", r, proc.pid,
            lambda: find([fake(2 * MiB, i) for i in range(2000)]),
        )  # fmt: skip

        async def batch_read() -> str:
            reply = await cas.BatchReadBlobs(
                re_pb2.BatchReadBlobsRequest(digests=big_digests[:2]), timeout=60
            )
            return f"{sum(len(x.data) for x in reply.responses) // MiB} MiB read"

        await measure("BatchReadBlobs, 2 blobs of 2 MiB", r, proc.pid, batch_read)

        action = Digest.of(b"bench action")
        result = re_pb2.ActionResult(
            output_files=[re_pb2.OutputFile(path="o", digest=fake(1 << 62, 1))]
        )
        await RedisActionCache(r).put("", action, result)
        await measure(
            "GetActionResult, stored result naming a 2^62-byte output", r, proc.pid,
            lambda: code(ac.GetActionResult(
                re_pb2.GetActionResultRequest(action_digest=action.to_proto()), timeout=60
            )),
        )  # fmt: skip

        command = re_pb2.Command(arguments=["true"]).SerializeToString()
        blob = re_pb2.Action(
            command_digest=digest_of(command), salt=os.urandom(24 * MiB)
        ).SerializeToString()
        await write(command)
        await write(blob)

        async def execute_four() -> str:
            codes = []
            for _ in range(4):
                try:
                    async for _op in execution.Execute(
                        re_pb2.ExecuteRequest(action_digest=digest_of(blob)), timeout=60
                    ):
                        pass
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code().name)
            return ",".join(codes)

        await measure("Execute x4, 24 MiB Action over --max-action-size 1MiB", r, proc.pid,
                      execute_four)  # fmt: skip
    finally:
        await channel.close()
        await r.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-blobs", type=int, default=50, help="2 MiB blobs really stored")
    args = parser.parse_args()
    server = RedisServer().start()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "redbarn", "frontend", "--listen", f"127.0.0.1:{port}",
         "--redis", server.url, "--max-action-size", "1MiB", "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        asyncio.run(run(server, proc, port, args.real_blobs))
    finally:
        proc.terminate()
        proc.wait(10)
        server.cleanup()


if __name__ == "__main__":
    main()
