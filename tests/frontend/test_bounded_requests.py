"""Issue 15's reproductions against a real frontend process and a real redis-server.

A request that is merely large gets a clear error or an answer, never a stalled frontend
or Redis: a digest of 2^62 bytes is INVALID_ARGUMENT naming it (FindMissingBlobs,
GetActionResult via a stored result, Execute via an input root), 2,000 digests of 1 GiB
cost Redis 2,000 keys (no SLOWLOG entry over 50 ms), an Action over --max-action-size is
refused unread, and a chunked blob that lost a chunk reads as missing everywhere.

The frontend runs as its own process (`python -m redbarn frontend`), so its memory is
its own: the tests read VmHWM (peak RSS) from /proc/<pid>/status.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from redbarn.digests import Digest
from redbarn.frontend.storage.cas_keys import cas_key
from redbarn.frontend.storage.redis import RedisActionCache, RedisBlobStore
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.runtime.redisserver import free_port

MiB = 1 << 20
GiB = 1 << 30
HUGE = 1 << 62
MAX_ACTION = 1 * MiB


def peak_rss(pid: int) -> int:
    """VmHWM of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@dataclass
class Frontend:
    proc: subprocess.Popen[bytes]
    channel: grpc.aio.Channel
    log: Path

    @property
    def cas(self) -> re_grpc.ContentAddressableStorageStub:
        return re_grpc.ContentAddressableStorageStub(self.channel)

    @property
    def ac(self) -> re_grpc.ActionCacheStub:
        return re_grpc.ActionCacheStub(self.channel)

    @property
    def execution(self) -> re_grpc.ExecutionStub:
        return re_grpc.ExecutionStub(self.channel)

    @property
    def bytestream(self) -> bs_grpc.ByteStreamStub:
        return bs_grpc.ByteStreamStub(self.channel)

    async def healthy(self) -> bool:
        reply = await health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def peak_rss(self) -> int:
        return peak_rss(self.proc.pid)


@pytest.fixture
def frontend_process(
    redis_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    log = tmp_path / "frontend.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "redbarn", "frontend", "--listen", f"127.0.0.1:{port}",
             "--redis", redis_url, "--max-action-size", str(MAX_ACTION)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        yield proc, port, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def frontend(
    frontend_process: tuple[subprocess.Popen[bytes], int, Path],
) -> AsyncIterator[Frontend]:
    proc, port, log = frontend_process
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * MiB)]
    )
    try:
        await channel.channel_ready()
        yield Frontend(proc, channel, log)
    finally:
        await channel.close()
        if proc.poll() is not None:
            print(log.read_text())


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def fake_digest(size: int, seed: int = 0) -> re_pb2.Digest:
    """A well-formed digest of `size` bytes that nothing stores."""
    return re_pb2.Digest(hash=hashlib.sha256(b"%d" % seed).hexdigest(), size_bytes=size)


def name(d: re_pb2.Digest) -> str:
    return f"{d.hash}-{d.size_bytes}"


async def write_blob(frontend: Frontend, data: bytes) -> re_pb2.Digest:
    """ByteStream Write in 1 MiB pieces."""
    d = digest_of(data)
    resource = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"

    async def requests() -> AsyncIterator[bs_pb2.WriteRequest]:
        for offset in range(0, len(data), MiB):
            piece = data[offset : offset + MiB]
            yield bs_pb2.WriteRequest(
                resource_name=resource if offset == 0 else "", write_offset=offset, data=piece,
                finish_write=offset + len(piece) == len(data),
            )  # fmt: skip

    reply = await frontend.bytestream.Write(requests())
    assert reply.committed_size == len(data)
    return d


async def put_small(frontend: Frontend, *blobs: bytes) -> list[re_pb2.Digest]:
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    reply = await frontend.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=digest_of(b), data=b) for b in blobs])
    )
    assert [r.status.code for r in reply.responses] == [0] * len(blobs)
    return [digest_of(b) for b in blobs]


async def execute_error(frontend: Frontend, action: re_pb2.Digest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in frontend.execution.Execute(re_pb2.ExecuteRequest(action_digest=action)):
            pass
    return caught.value


async def slowlog_reset(redis: aioredis.Redis) -> None:
    await redis.config_set("slowlog-log-slower-than", 50_000)  # microseconds: 50 ms
    await redis.slowlog_reset()


# ---------------------------------------------------------------- a digest of 2^62 bytes


async def test_find_missing_of_a_2_62_byte_digest_is_refused_at_once(frontend: Frontend) -> None:
    before = frontend.peak_rss()
    huge = fake_digest(HUGE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await frontend.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[huge]), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert name(huge) in (caught.value.details() or "")
    assert await frontend.healthy()
    small = fake_digest(10)
    reply = await frontend.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[small]), timeout=5
    )
    assert list(reply.missing_blob_digests) == [small]
    assert frontend.peak_rss() - before < 32 * MiB


async def test_get_action_result_naming_a_2_62_byte_output_is_refused(
    frontend: Frontend, real_redis: aioredis.Redis
) -> None:
    """A result stored by anything (a worker, an older frontend) cannot make the
    completeness check work by the sizes it names."""
    before = frontend.peak_rss()
    huge = fake_digest(HUGE, seed=1)
    action = Digest.of(b"some action")
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="out", digest=huge)])
    await RedisActionCache(real_redis).put("", action, result)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await frontend.ac.GetActionResult(
            re_pb2.GetActionResultRequest(action_digest=action.to_proto()), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert name(huge) in (caught.value.details() or "")
    assert await frontend.healthy()
    assert frontend.peak_rss() - before < 32 * MiB

    with pytest.raises(grpc.aio.AioRpcError) as caught:  # and it cannot be stored either
        await frontend.ac.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(action_digest=action.to_proto(), action_result=result)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert name(huge) in (caught.value.details() or "")


async def test_execute_with_a_2_62_byte_input_root_is_refused(frontend: Frontend) -> None:
    before = frontend.peak_rss()
    huge = fake_digest(HUGE, seed=2)
    (command,) = await put_small(frontend, re_pb2.Command(arguments=["true"]).SerializeToString())
    action = re_pb2.Action(command_digest=command, input_root_digest=huge).SerializeToString()
    (action_digest,) = await put_small(frontend, action)
    err = await execute_error(frontend, action_digest)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert name(huge) in (err.details() or "")
    assert "--max-blob-size" in (err.details() or "")
    assert await frontend.healthy()
    assert frontend.peak_rss() - before < 32 * MiB


# ---------------------------------------------------------------- 2,000 digests of 1 GiB


async def test_2000_digests_of_1_gib_cost_redis_2000_keys(
    frontend: Frontend, real_redis: aioredis.Redis
) -> None:
    digests = [fake_digest(GiB, seed=i) for i in range(2000)]
    await slowlog_reset(real_redis)
    before = await real_redis.info("stats")
    reply = await frontend.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=digests), timeout=30
    )
    after = await real_redis.info("stats")
    assert list(reply.missing_blob_digests) == digests
    assert await real_redis.slowlog_get() == []
    # Every key lookup the request made, hit or miss: one per digest, not 1024 per digest.
    looked_up = sum(after[k] - before[k] for k in ("keyspace_hits", "keyspace_misses"))
    assert 2000 <= looked_up <= 2 * 2000
    assert await frontend.healthy()


async def test_2000_stored_chunked_blobs_cost_redis_2000_keys(
    frontend: Frontend, real_redis: aioredis.Redis
) -> None:
    """The same with every blob present as a HASH of chunks (written with a 1 KiB chunk
    size to stay cheap: the probe reads a HASH's field count and two field lengths,
    whatever its chunk size), so each is checked and touched."""
    writer = RedisBlobStore(real_redis, chunk_size=1024)
    blobs = [os.urandom(2 * 1024 + 1) for _ in range(2000)]
    await writer.put_many("", [(Digest.of(b), b) for b in blobs])
    assert await real_redis.type(cas_key(Digest.of(blobs[0]))) == b"hash"
    digests = [digest_of(b) for b in blobs]
    await slowlog_reset(real_redis)
    reply = await frontend.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=digests), timeout=30
    )
    assert list(reply.missing_blob_digests) == []
    read = await frontend.cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(digests=digests[:500]), timeout=30
    )
    assert [r.data for r in read.responses] == blobs[:500]
    assert await real_redis.slowlog_get() == []


# ---------------------------------------------------------------- --max-action-size


async def test_execute_of_an_action_over_max_action_size_reads_nothing(
    frontend: Frontend,
) -> None:
    (command,) = await put_small(frontend, re_pb2.Command(arguments=["true"]).SerializeToString())
    big = re_pb2.Action(command_digest=command, salt=os.urandom(24 * MiB)).SerializeToString()
    action = await write_blob(frontend, big)
    before = frontend.peak_rss()
    for _ in range(4):
        err = await execute_error(frontend, action)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert name(action) in (err.details() or "")
        assert f"at most {MAX_ACTION} bytes (--max-action-size)" in (err.details() or "")
    # Reading the Action once would have raised the peak by its 24 MiB at least.
    assert frontend.peak_rss() - before < 12 * MiB
    assert await frontend.healthy()


async def test_execute_of_a_command_over_max_action_size_is_refused(frontend: Frontend) -> None:
    command = fake_digest(MAX_ACTION + 1, seed=3)
    action = re_pb2.Action(command_digest=command).SerializeToString()
    (action_digest,) = await put_small(frontend, action)
    err = await execute_error(frontend, action_digest)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"Command {name(command)}" in (err.details() or "")


# ---------------------------------------------------------------- a partly lost blob


@pytest.mark.parametrize("loss", ["one chunk", "the whole hash"])
async def test_a_chunked_blob_that_lost_a_chunk_is_missing_everywhere(
    frontend: Frontend, real_redis: aioredis.Redis, loss: str
) -> None:
    data = os.urandom(3 * MiB + 5)
    blob = await write_blob(frontend, data)
    action = Digest.of(b"action with a chunked output")
    result = re_pb2.ActionResult(output_files=[re_pb2.OutputFile(path="out", digest=blob)])
    await frontend.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=action.to_proto(), action_result=result)
    )
    key = cas_key(Digest(blob.hash, blob.size_bytes))
    assert await real_redis.type(key) == b"hash"
    if loss == "one chunk":
        assert await real_redis.hdel(key, "c1") == 1
    else:
        assert await real_redis.delete(key) == 1

    found = await frontend.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[blob]))
    assert list(found.missing_blob_digests) == [blob]
    read = await frontend.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[blob]))
    assert [(r.status.code, r.data) for r in read.responses] == [
        (grpc.StatusCode.NOT_FOUND.value[0], b"")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in frontend.bytestream.Read(
            bs_pb2.ReadRequest(resource_name=f"blobs/{blob.hash}/{blob.size_bytes}")
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await frontend.ac.GetActionResult(
            re_pb2.GetActionResultRequest(action_digest=action.to_proto())
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert name(blob) in (caught.value.details() or "")
