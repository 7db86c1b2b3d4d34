"""Bad input on every servicer that takes it: the right status, a message naming what was
wrong, nothing stored, and the frontend still serving afterwards.

Complements the per-servicer catalogues (test_cas, test_bytestream, test_ac,
test_execution): those cover FindMissingBlobs digests, ByteStream Read names, write
offsets, blobs over the maximum, mismatching bytes and sizes, unsorted platforms and
too-long timeouts; this file covers the same classes on the remaining methods.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import duration_pb2

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.config import SchedulerConfig

from .conftest import digest_of

MiB = 1 << 20
SCHED = SchedulerConfig(idle_sync_timeout=0.3, platform_queue_timeout=60.0)
H = "a" * 64
GOOD = digest_of(b"good")
Req = re_pb2.BatchUpdateBlobsRequest.Request
P = re_pb2.Platform.Property

# Malformed digests: (digest, message). The same parser serves every method.
BAD_DIGESTS = {
    "bad length": (re_pb2.Digest(hash="abc", size_bytes=1), "Unknown digest function"),
    "non-hex": (
        re_pb2.Digest(hash="G" * 64, size_bytes=1),
        "Non-hexadecimal character in digest hash: U+0047 'G'",
    ),
    "negative size": (re_pb2.Digest(hash=H, size_bytes=-1), "Invalid digest size: -1 bytes"),
    "other function": (
        re_pb2.Digest(hash="a" * 40, size_bytes=1),
        "Unsupported digest function SHA1: this server stores SHA256 only",
    ),
}


@dataclass
class Stubs:
    cas: Any
    ac: Any
    bs: Any
    execution: Any
    queue: Any
    caps: Any
    redis_url: str


@pytest.fixture
async def stubs(redis_url: str) -> AsyncIterator[Stubs]:
    config = FrontendConfig(
        listen="127.0.0.1:0", redis_url=redis_url, health_interval=0.2, max_blob_size=MiB
    )
    server, port = await create_server(config, hooks=[scheduling_hook(SCHED)])
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield Stubs(
            re_grpc.ContentAddressableStorageStub(ch),
            re_grpc.ActionCacheStub(ch),
            bs_grpc.ByteStreamStub(ch),
            re_grpc.ExecutionStub(ch),
            rw_grpc.OperationQueueStub(ch),
            re_grpc.CapabilitiesStub(ch),
            redis_url,
        )
        await _still_serving(server, ch)
    await server.stop(0)


async def _still_serving(server: FrontendServer, channel: grpc.aio.Channel) -> None:
    """After the bad input: the same channel still gets normal answers."""
    cas = re_grpc.ContentAddressableStorageStub(channel)
    await cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=GOOD, data=b"good")])
    )
    missing = await cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[GOOD]))
    assert list(missing.missing_blob_digests) == []


async def _outcome(call: Any) -> tuple[str, str]:
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


def _write(name: str, data: bytes = b"x") -> Callable[[Stubs], Any]:
    async def requests() -> AsyncIterator[bs_pb2.WriteRequest]:
        yield bs_pb2.WriteRequest(resource_name=name, data=data, finish_write=True)

    return lambda s: s.bs.Write(requests())


def _upload(d: re_pb2.Digest) -> str:
    return f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"


# name -> call on a digest
DIGEST_METHODS: dict[str, Callable[[Stubs, re_pb2.Digest], Any]] = {
    "BatchUpdateBlobs": lambda s, d: s.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=d, data=b"x")])
    ),
    "BatchReadBlobs": lambda s, d: s.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[d])),
    "GetTree": lambda s, d: s.cas.GetTree(re_pb2.GetTreeRequest(root_digest=d)),
    "GetActionResult": lambda s, d: s.ac.GetActionResult(
        re_pb2.GetActionResultRequest(action_digest=d)
    ),
    "UpdateActionResult": lambda s, d: s.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=d, action_result=re_pb2.ActionResult())
    ),
    "ByteStream.Write": lambda s, d: _write(_upload(d))(s),
    "QueryWriteStatus": lambda s, d: s.bs.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=_upload(d))
    ),
}


@pytest.mark.parametrize("method", DIGEST_METHODS)
@pytest.mark.parametrize("kind", BAD_DIGESTS)
async def test_malformed_digest(stubs: Stubs, method: str, kind: str) -> None:
    digest, message = BAD_DIGESTS[kind]
    got = await _outcome(DIGEST_METHODS[method](stubs, digest))
    assert got == ("INVALID_ARGUMENT", message)


# name -> call with a digest_function
FUNCTION_METHODS: dict[str, Callable[[Stubs, int], Any]] = {
    "FindMissingBlobs": lambda s, f: s.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[GOOD], digest_function=f)
    ),
    "BatchUpdateBlobs": lambda s, f: s.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(digest_function=f)
    ),
    "BatchReadBlobs": lambda s, f: s.cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(digest_function=f)
    ),
    "GetTree": lambda s, f: s.cas.GetTree(
        re_pb2.GetTreeRequest(root_digest=GOOD, digest_function=f)
    ),
    "GetActionResult": lambda s, f: s.ac.GetActionResult(
        re_pb2.GetActionResultRequest(action_digest=GOOD, digest_function=f)
    ),
    "UpdateActionResult": lambda s, f: s.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(
            action_digest=GOOD, action_result=re_pb2.ActionResult(), digest_function=f
        )
    ),
    "Execute": lambda s, f: s.execution.Execute(
        re_pb2.ExecuteRequest(action_digest=GOOD, digest_function=f)
    ),
}


@pytest.mark.parametrize("method", FUNCTION_METHODS)
@pytest.mark.parametrize(
    ("function", "message"),
    [
        (999, "Unknown digest function"),
        (re_pb2.DigestFunction.MD5, "Unsupported digest function MD5: this server stores SHA256 only"),
        (re_pb2.DigestFunction.BLAKE3, "Unsupported digest function BLAKE3: this server stores SHA256 only"),
    ],
)  # fmt: skip
async def test_unknown_digest_function(
    stubs: Stubs, method: str, function: int, message: str
) -> None:
    got = await _outcome(FUNCTION_METHODS[method](stubs, function))
    assert got == ("INVALID_ARGUMENT", message)


INSTANCE_METHODS: dict[str, Callable[[Stubs, str], Any]] = {
    "BatchUpdateBlobs": lambda s, i: s.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(instance_name=i)
    ),
    "BatchReadBlobs": lambda s, i: s.cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(instance_name=i)
    ),
    "GetTree": lambda s, i: s.cas.GetTree(re_pb2.GetTreeRequest(instance_name=i, root_digest=GOOD)),
    "GetActionResult": lambda s, i: s.ac.GetActionResult(
        re_pb2.GetActionResultRequest(instance_name=i, action_digest=GOOD)
    ),
    "UpdateActionResult": lambda s, i: s.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(
            instance_name=i, action_digest=GOOD, action_result=re_pb2.ActionResult()
        )
    ),
    "GetCapabilities": lambda s, i: s.caps.GetCapabilities(
        re_pb2.GetCapabilitiesRequest(instance_name=i)
    ),
    "ByteStream.Write": lambda s, i: _write(f"{i}/uploads/u/blobs/{GOOD.hash}/{GOOD.size_bytes}")(
        s
    ),
    "QueryWriteStatus": lambda s, i: s.bs.QueryWriteStatus(
        bs_pb2.QueryWriteStatusRequest(resource_name=f"{i}/uploads/u/blobs/{H}/1")
    ),
}


@pytest.mark.parametrize("method", INSTANCE_METHODS)
@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ("a//b", 'Invalid instance name "a//b": Instance name contains redundant slashes'),
        ("/a", 'Invalid instance name "/a": Instance name contains redundant slashes'),
        ("x/blobs", 'Invalid instance name "x/blobs": Instance name contains reserved keyword "blobs"'),
        ("operations", 'Invalid instance name "operations": Instance name contains reserved keyword "operations"'),
    ],
)  # fmt: skip
async def test_invalid_instance_name(
    stubs: Stubs, method: str, instance: str, message: str
) -> None:
    got = await _outcome(INSTANCE_METHODS[method](stubs, instance))
    assert got == ("INVALID_ARGUMENT", message)


LONG = "operations/" + "x" * 5000


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", 'Operation with name "" not found'),
        ("00000000-0000-4000-8000-000000000000", 'Operation with name "00000000-0000-4000-8000-000000000000" not found'),
        ("\x00", 'Operation with name "\x00" not found'),
        (LONG, f'Operation with name "{LONG}" not found'),
    ],
)  # fmt: skip
async def test_unknown_operation_names(stubs: Stubs, name: str, message: str) -> None:
    got = await _outcome(stubs.execution.WaitExecution(re_pb2.WaitExecutionRequest(name=name)))
    assert got == ("NOT_FOUND", message)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", 'Invalid resource name "": expected {instance_name}/uploads/{uuid}/blobs/{hash}/{size}'),
        (f"blobs/{H}/1", f'Invalid resource name "blobs/{H}/1": expected {{instance_name}}/uploads/{{uuid}}/blobs/{{hash}}/{{size}}'),
        (f"uploads//blobs/{H}/1", f'Invalid resource name "uploads//blobs/{H}/1": expected {{instance_name}}/uploads/{{uuid}}/blobs/{{hash}}/{{size}}'),
        ("uploads/u/blobs/abc", 'Invalid resource name "uploads/u/blobs/abc": expected a hash and a size after "blobs"'),
        (f"uploads/u/blobs/{H}/ten", f'Invalid resource name "uploads/u/blobs/{H}/ten": invalid digest size "ten"'),
        (f"uploads/u/compressed-blobs/deflate/{H}/1", f'Unsupported compressor "deflate" in resource name "uploads/u/compressed-blobs/deflate/{H}/1": this server supports identity and zstd only'),
    ],
)  # fmt: skip
async def test_unparseable_write_resource_names(stubs: Stubs, name: str, message: str) -> None:
    assert await _outcome(_write(name)(stubs)) == ("INVALID_ARGUMENT", message)
    query = stubs.bs.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(resource_name=name))
    assert await _outcome(query) == ("INVALID_ARGUMENT", message)


async def test_write_stream_without_requests(stubs: Stubs) -> None:
    async def nothing() -> AsyncIterator[bs_pb2.WriteRequest]:
        return
        yield  # pragma: no cover

    got = await _outcome(stubs.bs.Write(nothing()))
    assert got == ("INVALID_ARGUMENT", "Write stream carried no requests")


async def test_batch_over_max_blob_size_and_mismatches_store_nothing(stubs: Stubs) -> None:
    """A blob whose bytes or size disagree with its digest is refused per blob; none is stored."""
    data = b"declared"
    wrong_bytes = re_pb2.Digest(hash=digest_of(b"other").hash, size_bytes=len(data))
    wrong_size = re_pb2.Digest(hash=digest_of(data).hash, size_bytes=len(data) + 1)
    reply = await stubs.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[Req(digest=wrong_bytes, data=data), Req(digest=wrong_size, data=data)]
        )
    )
    assert [(r.status.code, r.status.message) for r in reply.responses] == [
        (3, f"Buffer has checksum {digest_of(data).hash}, while {wrong_bytes.hash} was expected"),
        (3, f"Buffer is {len(data)} bytes in size, while {len(data) + 1} bytes were expected"),
    ]
    missing = await stubs.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[wrong_bytes, wrong_size, digest_of(data)])
    )
    assert list(missing.missing_blob_digests) == [wrong_bytes, wrong_size, digest_of(data)]


# ------------------------------------------------------------------ Execute and Synchronize


async def _action(
    stubs: Stubs,
    platform: re_pb2.Platform | None = None,
    timeout: duration_pb2.Duration | None = None,
    action_bytes: bytes | None = None,
) -> re_pb2.Digest:
    command = re_pb2.Command(arguments=["true"], platform=platform).SerializeToString()
    root = re_pb2.Directory().SerializeToString()
    action = re_pb2.Action(
        command_digest=digest_of(command), input_root_digest=digest_of(root), platform=platform
    )
    if timeout is not None:
        action.timeout.CopyFrom(timeout)
    blob = action.SerializeToString() if action_bytes is None else action_bytes
    await stubs.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[Req(digest=digest_of(b), data=b) for b in (command, root, blob)]
        )
    )
    return digest_of(blob)


def _execute(stubs: Stubs, digest: re_pb2.Digest) -> Any:
    return stubs.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest))


ROUTE = "Failed to route action: Failed to analyze initial size class: "


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        (duration_pb2.Duration(seconds=-1), ROUTE + "Execution timeout of -1s is outside permitted range [0s, 2h0m0s]"),
        (duration_pb2.Duration(nanos=-5), ROUTE + "Execution timeout of -0.000000005s is outside permitted range [0s, 2h0m0s]"),
        (duration_pb2.Duration(seconds=1, nanos=-1), ROUTE + "Invalid execution timeout: duration (1s, -1ns) has seconds and nanos with different signs"),
        (duration_pb2.Duration(seconds=10**12), ROUTE + "Execution timeout of 277777777h46m40s is outside permitted range [0s, 2h0m0s]"),
    ],
)  # fmt: skip
async def test_execute_timeouts_out_of_range(
    stubs: Stubs, timeout: duration_pb2.Duration, message: str
) -> None:
    got = await _outcome(_execute(stubs, await _action(stubs, timeout=timeout)))
    assert got == ("INVALID_ARGUMENT", message)


async def test_execute_duplicated_platform_property(stubs: Stubs) -> None:
    dup = re_pb2.Platform(properties=[P(name="a", value="1"), P(name="a", value="1")])
    got = await _outcome(_execute(stubs, await _action(stubs, platform=dup)))
    assert got == (
        "INVALID_ARGUMENT",
        "Platform properties are not lexicographically sorted, as property "
        'name:"a" value:"1" should have been placed before property name:"a" value:"1"',
    )


async def test_execute_action_blob_that_is_not_an_action(stubs: Stubs) -> None:
    digest = await _action(stubs, action_bytes=b"\xff\xff\xff")
    code, message = await _outcome(_execute(stubs, digest))
    assert code == "INVALID_ARGUMENT"
    assert message.startswith(
        f"Failed to obtain action: Action {digest.hash}-3 is not an Action: "
    ), message


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ([P(name="b", value="1"), P(name="a", value="1")], 'as property name:"a" value:"1" should have been placed before property name:"b" value:"1"'),
        ([P(name="a", value="1"), P(name="a", value="1")], 'as property name:"a" value:"1" should have been placed before property name:"a" value:"1"'),
    ],
)  # fmt: skip
async def test_synchronize_unsorted_or_duplicated_platform(
    stubs: Stubs, properties: list[re_pb2.Platform.Property], message: str
) -> None:
    request = rw_pb2.SynchronizeRequest(
        worker_id={"thread": "0"},
        platform=re_pb2.Platform(properties=properties),
        current_state=rw_pb2.CurrentState(idle={}),
        prefer_being_idle=True,
    )
    got = await _outcome(stubs.queue.Synchronize(request))
    assert got == (
        "INVALID_ARGUMENT",
        f"Platform properties are not lexicographically sorted, {message}",
    )


@pytest.mark.parametrize("kind", BAD_DIGESTS)
async def test_synchronize_report_with_a_malformed_action_digest(stubs: Stubs, kind: str) -> None:
    """A completion for a malformed digest matches no lease: the worker is told to be idle
    and nothing reaches the Action Cache (the scheduler matches reports to its leases;
    it does not parse the reported digest)."""
    digest, _ = BAD_DIGESTS[kind]
    result = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0, stdout_raw=b"x"))
    request = rw_pb2.SynchronizeRequest(
        worker_id={"thread": "0"},
        current_state=rw_pb2.CurrentState(
            executing=rw_pb2.CurrentState.Executing(action_digest=digest, completed=result)
        ),
        prefer_being_idle=True,
    )
    reply = await stubs.queue.Synchronize(request)
    assert reply.desired_state.WhichOneof("worker_state") == "idle"
    async with aioredis.Redis.from_url(stubs.redis_url) as r:
        assert [k async for k in r.scan_iter("redbarn:v1:ac:*")] == []
