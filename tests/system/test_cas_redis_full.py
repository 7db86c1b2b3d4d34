"""Issue 15: a full CAS Redis never stops the scheduler, and never serves corrupt bytes.

Real processes: a scheduler Redis, a separate CAS Redis (as `redbarn up` and compose run
them), a frontend and a worker. The CAS Redis is filled the two ways it can be run:
`noeviction` (writes refused: clients get RESOURCE_EXHAUSTED, actions keep running) and
`allkeys-lru` (the deployed shape: writes evict least recently used blobs whole, and an
evicted blob reads as missing, never as damaged data).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis
from cluster import Cluster
from reapi_client import ReapiClient, digest_of

from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.runtime.redisserver import RedisServer

from .conftest import FAST

pytestmark = [pytest.mark.system]

MiB = 1 << 20


def _start_cas(tmp: Path, policy: str) -> RedisServer:
    return RedisServer(
        data_dir=str(tmp / "cas-redis"), extra=(f"maxmemory-policy {policy}",)
    ).start()


async def _upload_one(client: ReapiClient, blob: bytes) -> tuple[grpc.StatusCode, str] | None:
    """BatchUpdateBlobs of one blob: None when stored, else the (code, message) refusing it,
    whether the whole call or the blob's own status carried it."""
    req = re_pb2.BatchUpdateBlobsRequest.Request(digest=digest_of(blob), data=blob)
    try:
        reply = await client.cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(requests=[req]), timeout=10
        )
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    status = reply.responses[0].status
    if status.code == 0:
        return None
    return next(c for c in grpc.StatusCode if c.value[0] == status.code), status.message


def _cap(server: RedisServer, headroom: int) -> redis.Redis:
    """Limit `server` to what it uses now plus `headroom` bytes."""
    client = redis.Redis.from_url(server.url)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + headroom)
    return client


@pytest.mark.timeout(180)
def test_full_cas_redis_refuses_uploads_cleanly_while_actions_still_run(tmp_path: Path) -> None:
    cas = _start_cas(tmp_path, "noeviction")
    with Cluster(tmp_path, frontend_args=FAST) as c:
        c.add_frontend("--cas-redis", cas.url)
        target = f"127.0.0.1:{c.frontend_ports[0]}"
        c.add_worker(target)
        cas_client = _cap(cas, 4 * MiB)

        async def scenario() -> None:
            client = ReapiClient(target)
            try:
                # Actions prepared before the CAS fills; they write no outputs.
                digests = [await client.prepare(["/bin/true", str(i)]) for i in range(5)]
                refused: tuple[grpc.StatusCode, str] | None = None
                for i in range(64):
                    refused = await _upload_one(client, os.urandom(512 * 1024) + bytes([i]))
                    if refused is not None:
                        break
                assert refused is not None, "64 uploads of 512 KiB fit in 4 MiB?"
                code, message = refused
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
                assert "memory" in message.lower(), message
                for leak in ("script", "user_script", "127.0.0.1", str(cas.port)):
                    assert leak not in message, message
                # The scheduler is untouched: every action still runs to completion.
                for digest in digests:
                    outcome = await client.execute(digest, deadline=60)
                    assert outcome.response.result.exit_code == 0, outcome.response
                # Room again: uploads work at once.
                cas_client.config_set("maxmemory", 0)
                await client.upload(b"after the CAS had room again")
            finally:
                await client.close()

        try:
            asyncio.run(scenario())
        finally:
            cas_client.close()
            cas.cleanup()


@pytest.mark.timeout(180)
def test_lru_cas_evicts_whole_blobs_and_an_evicted_blob_reads_as_missing(
    tmp_path: Path,
) -> None:
    cas = _start_cas(tmp_path, "allkeys-lru")
    with Cluster(tmp_path, frontend_args=FAST) as c:
        c.add_frontend("--cas-redis", cas.url)
        target = f"127.0.0.1:{c.frontend_ports[0]}"
        cas_client = _cap(cas, 12 * MiB)

        async def scenario() -> None:
            channel = grpc.aio.insecure_channel(target)
            stub = bs_grpc.ByteStreamStub(channel)
            cas_stub = re_grpc.ContentAddressableStorageStub(channel)
            blobs = [os.urandom(3 * MiB // 2) + bytes([i]) for i in range(24)]  # chunked
            try:
                for i, blob in enumerate(blobs):
                    d = digest_of(blob)
                    name = f"uploads/u{i}/blobs/{d.hash}/{d.size_bytes}"

                    async def requests(
                        blob: bytes = blob, name: str = name
                    ) -> AsyncIterator[bs_pb2.WriteRequest]:
                        for off in range(0, len(blob), MiB):
                            yield bs_pb2.WriteRequest(
                                resource_name=name if off == 0 else "",
                                write_offset=off,
                                data=blob[off : off + MiB],
                                finish_write=off + MiB >= len(blob),
                            )

                    reply = await stub.Write(requests(), timeout=30)
                    assert reply.committed_size == len(blob)
                found = await cas_stub.FindMissingBlobs(
                    re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b) for b in blobs])
                )
                missing = {d.hash for d in found.missing_blob_digests}
                assert missing, "36 MiB of blobs fit in a 12 MiB CAS?"
                assert len(missing) < len(blobs), "the newest blobs must survive"
                for blob in blobs:
                    d = digest_of(blob)
                    read = stub.Read(
                        bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}")
                    )
                    if d.hash in missing:
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            async for _ in read:
                                pass
                        assert err.value.code() == grpc.StatusCode.NOT_FOUND
                    else:
                        data = b"".join([r.data async for r in read])
                        assert hashlib.sha256(data).hexdigest() == d.hash
            finally:
                await channel.close()

        try:
            asyncio.run(scenario())
        finally:
            cas_client.close()
            cas.cleanup()
