"""Redis refusing commands (out of memory, read-only replica, loading) reaches clients as
RESOURCE_EXHAUSTED or UNAVAILABLE with a fixed message, and stops when Redis recovers.

The real cases start their own redis-server (never the session one: they change its
maxmemory and make it a replica) and call a real frontend over a real channel: a
worker's Synchronize (the scheduler's Lua scripts, over the pipelined client) and a
client's BatchUpdateBlobs (the CAS, over redis-py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import hiredis
import pytest
import redis
import redis.exceptions
from google.rpc import code_pb2

from redbarn import errors
from redbarn.frontend import errors as frontend_errors
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.errors import translate
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.config import SchedulerConfig
from redbarn.runtime import fastredis
from redbarn.runtime.redis_refusals import REFUSALS, refusal
from redbarn.runtime.redisserver import RedisServer

from .conftest import MiB, digest_of, open_client_channel

SHA = "82cdd3d7ab6b96f9a5947917c9f163ca06cc907a"
OOM_MESSAGE = "Redis is out of memory (maxmemory reached): writes are refused until memory is freed"
READONLY_MESSAGE = "Redis is a read-only replica (after a failover?): writes are refused; retry"
LOADING_MESSAGE = "Redis is loading its dataset into memory; retry"


def assert_clean(message: str, server: RedisServer | None = None) -> None:
    """No script hash, script line, host or port in a client-facing message."""
    assert not re.search(r"[0-9a-f]{40}", message), message
    assert "user_script" not in message and "script:" not in message, message
    assert "127.0.0.1" not in message and "localhost" not in message, message
    if server is not None:
        assert str(server.port) not in message, message


# ------------------------------------------------------------------ the mapping itself


def _reply(text: str) -> redis.exceptions.RedisError:
    """What the pipelined client raises for the error reply `text`."""
    return fastredis._error(hiredis.ReplyError(text))


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        # redis-py strips the code from the message; the class says it.
        (
            redis.exceptions.OutOfMemoryError(
                f"command not allowed when used memory > 'maxmemory'. script: {SHA}, "
                "on @user_script:12."
            ),
            "RESOURCE_EXHAUSTED",
            OOM_MESSAGE,
        ),
        (
            redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
            "UNAVAILABLE",
            READONLY_MESSAGE,
        ),
        (
            redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
            "UNAVAILABLE",
            LOADING_MESSAGE,
        ),
        (
            redis.exceptions.MasterDownError("Link with MASTER is down"),
            "UNAVAILABLE",
            "Redis is a replica that lost its link to the primary; retry",
        ),
        # The pipelined client keeps the whole reply.
        (
            _reply(f"OOM command not allowed when used memory > 'maxmemory'. script: {SHA}, on @user_script:3."),
            "RESOURCE_EXHAUSTED",
            OOM_MESSAGE,
        ),
        (
            _reply(f"READONLY You can't write against a read only replica. script: {SHA}, on @user_script:9."),
            "UNAVAILABLE",
            READONLY_MESSAGE,
        ),
        (_reply("LOADING Redis is loading the dataset in memory"), "UNAVAILABLE", LOADING_MESSAGE),
        (
            _reply("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."),
            "UNAVAILABLE",
            "Redis is busy running a script; retry",
        ),
        (
            _reply("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."),
            "UNAVAILABLE",
            "Redis refuses writes because it cannot persist to disk; retry",
        ),
        # Redis 6 wraps an error raised inside a script in ERR.
        (
            redis.exceptions.ResponseError(
                f"Error running script (call to f_{SHA}): @user_script:12: -OOM command not "
                "allowed when used memory > 'maxmemory'. "
            ),
            "RESOURCE_EXHAUSTED",
            OOM_MESSAGE,
        ),
    ],
)  # fmt: skip
def test_refusals_map_to_fixed_messages(
    exc: redis.exceptions.RedisError, code: str, message: str
) -> None:
    err = translate(exc, "Test.method(Request)")
    assert (err.code, err.message) == (code, message)
    assert_clean(err.message)


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
        redis.exceptions.ResponseError("ERR Error running script: @user_script:1: bad argument"),
        redis.exceptions.ConnectionError("Connection refused"),
        ValueError("OOM is only a word here"),
    ],
)
def test_other_errors_are_not_refusals(exc: BaseException) -> None:
    assert refusal(exc) is None
    assert translate(exc, "Test.method(Request)").code in ("UNAVAILABLE", "INTERNAL")


def test_every_refusal_has_a_retryable_code() -> None:
    for cls, _ in REFUSALS.values():
        assert cls in (errors.ResourceExhausted, errors.Unavailable)


# ------------------------------------------------------------------ against a real Redis


@dataclass
class Cluster:
    redis: RedisServer
    server: FrontendServer
    channel: grpc.aio.Channel


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def cluster(own_redis: RedisServer) -> AsyncIterator[Cluster]:
    config = FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=own_redis.url,
        max_blob_size=32 * MiB,
        health_interval=0.2,
        grace_period=0.2,
    )
    server, port = await create_server(
        config, hooks=[scheduling_hook(SchedulerConfig(idle_sync_timeout=0.2))]
    )
    await server.start()
    channel = open_client_channel(port)
    try:
        yield Cluster(own_redis, server, channel)
    finally:
        await channel.close()
        await server.stop(0)


async def synchronize(channel: grpc.aio.Channel) -> tuple[str, str]:
    """An idle worker's Synchronize: ("OK", "") or the status code's name and details."""
    stub = rw_grpc.OperationQueueStub(channel)  # type: ignore[no-untyped-call]
    request = rw_pb2.SynchronizeRequest(
        worker_id={"thread": "0", "host": "refusal-test"},
        current_state=rw_pb2.CurrentState(idle={}),
        prefer_being_idle=True,
    )
    try:
        await stub.Synchronize(request, timeout=20)
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


async def write_blob(channel: grpc.aio.Channel, data: bytes) -> tuple[str, str]:
    """ByteStream.Write of `data` in 1 MiB pieces: ("OK", "") or the code name and details."""
    d = digest_of(data)
    name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"

    async def requests() -> AsyncIterator[bs_pb2.WriteRequest]:
        for offset in range(0, len(data), MiB):
            yield bs_pb2.WriteRequest(
                resource_name=name if offset == 0 else "",
                write_offset=offset,
                data=data[offset : offset + MiB],
                finish_write=offset + MiB >= len(data),
            )

    stub = bs_grpc.ByteStreamStub(channel)  # type: ignore[no-untyped-call]
    try:
        await stub.Write(requests(), timeout=20)
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


async def find_missing(
    channel: grpc.aio.Channel, digests: list[re_pb2.Digest]
) -> tuple[str, list[re_pb2.Digest]]:
    stub = re_grpc.ContentAddressableStorageStub(channel)  # type: ignore[no-untyped-call]
    try:
        reply = await stub.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=digests), timeout=20
        )
    except grpc.aio.AioRpcError as err:
        return err.code().name, []
    return "OK", list(reply.missing_blob_digests)


async def put_blob(channel: grpc.aio.Channel, data: bytes) -> tuple[str, str]:
    """BatchUpdateBlobs of one blob: ("OK", "") or the code name and message of the
    call's status or of the blob's."""
    stub = re_grpc.ContentAddressableStorageStub(channel)  # type: ignore[no-untyped-call]
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    request = re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=digest_of(data), data=data)])
    try:
        reply = await stub.BatchUpdateBlobs(request, timeout=20)
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""
    status = reply.responses[0].status
    return code_pb2.Code.Name(status.code), status.message


async def test_full_redis_is_resource_exhausted_then_recovers(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="redbarn")
    monkeypatch.setattr(frontend_errors, "_refusals_logged", {})  # unit tests above logged
    assert await synchronize(cluster.channel) == ("OK", "")
    r = redis.Redis(port=cluster.redis.port)
    try:
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", str(used + 4 * MiB))  # noeviction, as RedisServer starts it
        # A client fills it with ordinary uploads, as the reproduction did.
        blobs = [os.urandom(MiB) for _ in range(32)]
        results = [await put_blob(cluster.channel, blob) for blob in blobs]
        codes = [code for code, _ in results]
        assert "RESOURCE_EXHAUSTED" in codes, codes
        refused = codes.index("RESOURCE_EXHAUSTED")
        assert set(codes[:refused]) == {"OK"}, codes
        assert results[refused][1] == OOM_MESSAGE
        assert_clean(results[refused][1], cluster.redis)

        # At the limit, used memory moves by the size of each refused request's buffer, so
        # a small command may slip under it. Pin Redis over the limit: still full.
        r.config_set("maxmemory", str(int(r.info("memory")["used_memory"]) // 2))
        # The scheduler's Lua script (EVALSHA over the pipelined client) is refused too.
        code, details = await synchronize(cluster.channel)
        assert (code, details) == ("RESOURCE_EXHAUSTED", OOM_MESSAGE)
        assert_clean(details, cluster.redis)
        # Reads still work: a full Redis refuses only what would grow it.
        stored = [digest_of(blob) for blob in blobs[:refused]]
        assert await find_missing(cluster.channel, stored) == ("OK", [])
        # So is a ByteStream upload, whichever of its steps meets the full Redis (last:
        # a refused upload may delete what it staged, and so free some memory).
        code, details = await write_blob(cluster.channel, os.urandom(3 * MiB))
        assert (code, details) == ("RESOURCE_EXHAUSTED", OOM_MESSAGE)
        # The operator learns Redis's own words from the frontend's log.
        assert "Redis refused a command (OOM): " in caplog.text
        assert "maxmemory" in caplog.text
        assert caplog.text.count("Redis refused a command (OOM)") == 1  # not once per call

        r.config_set("maxmemory", "0")
        assert await synchronize(cluster.channel) == ("OK", "")
        assert await put_blob(cluster.channel, os.urandom(MiB)) == ("OK", "")
    finally:
        r.close()


async def wait_for_link(replica: redis.Redis) -> None:
    for _ in range(200):
        info = replica.info("replication")
        if info.get("master_link_status") == "up" and not replica.info("persistence")["loading"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replication never came up: {replica.info('replication')}")


async def test_read_only_replica_is_unavailable_then_recovers(cluster: Cluster) -> None:
    assert await synchronize(cluster.channel) == ("OK", "")
    primary = RedisServer().start()
    r = redis.Redis(port=cluster.redis.port)
    try:
        r.replicaof("127.0.0.1", primary.port)  # what a failover does to the old primary
        await wait_for_link(r)
        code, details = await synchronize(cluster.channel)
        assert (code, details) == ("UNAVAILABLE", READONLY_MESSAGE)
        assert_clean(details, cluster.redis)
        assert str(primary.port) not in details
        assert await put_blob(cluster.channel, b"a blob for a replica") == (
            "UNAVAILABLE",
            READONLY_MESSAGE,
        )

        r.replicaof("NO", "ONE")
        assert await synchronize(cluster.channel) == ("OK", "")
        assert await put_blob(cluster.channel, b"a blob for a primary") == ("OK", "")
    finally:
        r.close()
        primary.cleanup()


@pytest.mark.parametrize(
    ("message", "clean"),
    [
        ("Error 111 connecting to 127.0.0.1:6379. Connection refused.",
         "Error 111 connecting. Connection refused."),
        ("Error -2 connecting to redis-cas:6379. Name or service not known.",
         "Error -2 connecting. Name or service not known."),
        ("Error connecting to Redis at 10.0.0.5:6380: timed out",
         "Error connecting to Redis: timed out"),
        ("Timeout reading from Redis at [::1]:6379: no reply for 30s",
         "Timeout reading from Redis: no reply for 30s"),
        ("Connection to Redis at /run/redbarn/redis.sock lost: closed by server",
         "Connection to Redis lost: closed by server"),
        ("Error 2 connecting to unix socket: /run/redis.sock. No such file or directory.",
         "Error 2 connecting to unix socket. No such file or directory."),
        ("Error connecting to Redis at 127.0.0.1:6379: [Errno 111] Connect call failed "
         "('127.0.0.1', 6379)",
         "Error connecting to Redis: [Errno 111] Connect call failed"),
        ("Error 111 connecting to ::1:6379. Connect call failed ('::1', 6379, 0, 0).",
         "Error 111 connecting. Connect call failed."),
        ("Connection refused", "Connection refused"),
    ],
)  # fmt: skip
def test_unavailable_messages_name_no_address(message: str, clean: str) -> None:
    err = translate(redis.exceptions.ConnectionError(message), "Test.method(Request)")
    assert (err.code, err.message) == ("UNAVAILABLE", f"Storage unavailable: {clean}")


async def test_unreachable_redis_is_unavailable_without_its_address(cluster: Cluster) -> None:
    assert await synchronize(cluster.channel) == ("OK", "")
    cluster.redis.stop()
    code, details = await synchronize(cluster.channel)
    assert code == "UNAVAILABLE"
    assert details.startswith("Storage unavailable: "), details
    assert_clean(details, cluster.redis)
    code, details = await put_blob(cluster.channel, b"a blob for nobody")
    assert code == "UNAVAILABLE"
    assert details.startswith("Storage unavailable: "), details
    assert_clean(details, cluster.redis)
