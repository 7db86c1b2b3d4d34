"""What zstd costs a frontend: wall time, frontend CPU and memory of ByteStream transfers,
plain and compressed, and of a zstd bomb.

    .venv/bin/python bench/zstd_bench.py [--blob-mib 50]

Starts a private redis-server and one frontend process (`python -m redbarn frontend`,
defaults otherwise), then over a real gRPC channel, for a compressible blob (hex
digits, ~2:1) and an incompressible one (random bytes), each `--blob-mib` MiB:
ByteStream Write and Read plain, then Write and Read as `compressed-blobs/zstd` (the
client compresses at level 1 in 1 MiB requests, as Bazel's chunker does). Last, a
bomb: 1 GiB of zeros in ~40 KiB of zstd written as a 1 MiB blob. One line each:

- wire: bytes that crossed the channel (data fields);
- wall: the call's duration, client side (the client's own (de)compression included);
- cpu: the frontend's user+system CPU during the call (/proc/<pid>/stat);
- peak: how far the frontend's VmHWM rose above its VmRSS at the start of the call.
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
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import zstandard

from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.runtime.redisserver import RedisServer, free_port

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def reset_peak(pid: int) -> None:
    """VmHWM := VmRSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def measure(label: str, pid: int, call: Awaitable[int]) -> None:
    reset_peak(pid)
    rss0, cpu0 = status(pid, "VmHWM"), cpu_seconds(pid)
    start = time.perf_counter()
    try:
        wire = await call
        outcome = "ok"
    except grpc.aio.AioRpcError as err:
        wire, outcome = 0, f"{err.code().name}: {err.details()}"
    wall = time.perf_counter() - start
    print(
        f"{label:<40} wire {wire / MiB:7.1f} MiB  wall {wall * 1000:7.0f} ms  "
        f"cpu {(cpu_seconds(pid) - cpu0) * 1000:6.0f} ms  "
        f"peak +{(status(pid, 'VmHWM') - rss0) / MiB:5.1f} MiB  {outcome[:100]}",
        flush=True,
    )


async def write(bs: bs_grpc.ByteStreamStub, name: str, pieces: list[bytes], start: int = 0) -> int:
    async def requests() -> AsyncIterator[bs_pb2.WriteRequest]:
        offset = start
        for i, piece in enumerate(pieces):
            yield bs_pb2.WriteRequest(
                resource_name=name if i == 0 else "", write_offset=offset, data=piece,
                finish_write=i == len(pieces) - 1,
            )  # fmt: skip
            offset += len(piece)

    await bs.Write(requests())
    return sum(map(len, pieces))


async def read(bs: bs_grpc.ByteStreamStub, name: str, compressed: bool) -> int:
    decoder = zstandard.ZstdDecompressor().decompressobj() if compressed else None
    wire = 0
    async for response in bs.Read(bs_pb2.ReadRequest(resource_name=name)):
        wire += len(response.data)
        if decoder is not None:
            decoder.decompress(response.data)
    return wire


def zstd_pieces(data: bytes) -> list[bytes]:
    """Level 1, one frame, flushed per 1 MiB of input (one request each)."""
    stream = zstandard.ZstdCompressor(level=1).compressobj()
    pieces = [
        stream.compress(data[i : i + MiB]) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        for i in range(0, len(data), MiB)
    ]
    pieces[-1] += stream.flush()
    return pieces


async def run(port: int, pid: int, blob_mib: int) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    bs = bs_grpc.ByteStreamStub(channel)
    await channel.channel_ready()
    size = blob_mib * MiB
    for kind, data in (
        ("hex", os.urandom(size // 2).hex().encode()),
        ("random", os.urandom(size)),
    ):
        for compressed in (False, True):
            data = data[:-1] + bytes([data[-1] ^ 1])  # a new blob each round
            d = hashlib.sha256(data).hexdigest()
            blob = f"{d}/{len(data)}"
            if compressed:
                w = f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{blob}"
                r = f"compressed-blobs/zstd/{blob}"
                pieces = zstd_pieces(data)
            else:
                w, r = f"uploads/{uuid.uuid4()}/blobs/{blob}", f"blobs/{blob}"
                pieces = [data[i : i + MiB] for i in range(0, len(data), MiB)]
            how = "zstd" if compressed else "plain"
            await measure(f"{kind} {blob_mib} MiB write {how}", pid, write(bs, w, pieces))
            await measure(f"{kind} {blob_mib} MiB read {how}", pid, read(bs, r, compressed))
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * MiB) * 1024
    zeros = hashlib.sha256(b"\0" * MiB).hexdigest()
    name = f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{zeros}/{MiB}"
    await measure("bomb: 1 GiB of zeros as a 1 MiB blob", pid, write(bs, name, [bomb]))
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blob-mib", type=int, default=50)
    args = parser.parse_args()
    server = RedisServer().start()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "redbarn", "frontend", "--listen", f"127.0.0.1:{port}",
         "--redis", server.url, "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        asyncio.run(run(port, proc.pid, args.blob_mib))
    finally:
        proc.terminate()
        proc.wait(10)
        server.cleanup()


if __name__ == "__main__":
    main()
