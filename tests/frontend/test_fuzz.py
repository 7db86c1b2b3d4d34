"""Undecodable request bytes against every method a frontend serves, over a real channel.

A real `redbarn frontend` process (scheduling included) is the target. For every
method of every service it registers (read from the descriptors, so a new method is
fuzzed without editing this file) hypothesis sends raw bytes through grpc's generic
calls: random bytes, and valid requests cut short or with bytes appended. Each call
must end with a gRPC status within the deadline (never a hang), an unexpected
exception in a servicer (INTERNAL "Internal error in ...", or UNKNOWN) fails the
test, and afterwards the process is still up and runs a normal action for another
client through a real worker.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redbarn.proto import bytestream_pb2, remote_execution_pb2, remoteworker_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.runtime.redisserver import RedisServer, free_port

DEADLINE = 10.0  # seconds; a call still open after this is a hang
SERVICES = [
    remote_execution_pb2.DESCRIPTOR.services_by_name["ContentAddressableStorage"],
    remote_execution_pb2.DESCRIPTOR.services_by_name["ActionCache"],
    remote_execution_pb2.DESCRIPTOR.services_by_name["Capabilities"],
    remote_execution_pb2.DESCRIPTOR.services_by_name["Execution"],
    bytestream_pb2.DESCRIPTOR.services_by_name["ByteStream"],
    remoteworker_pb2.DESCRIPTOR.services_by_name["OperationQueue"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
# grpcio-health-checking's aio HealthServicer does not implement List (its generated
# base raises NotImplementedError, which grpc reports as UNKNOWN): not redbarn's method.
NOT_SERVED = {"/grpc.health.v1.Health/List"}
METHODS: dict[str, descriptor.MethodDescriptor] = {
    name: method
    for service in SERVICES
    for method in service.methods
    if (name := f"/{service.full_name}/{method.name}") not in NOT_SERVED
}
# Calls that legitimately stay open (Watch streams health changes until cancelled):
# one response is enough.
OPEN_ENDED = {"/grpc.health.v1.Health/Watch"}


@dataclass
class Frontend:
    port: int
    proc: subprocess.Popen[bytes]
    redis: RedisServer
    log: Path


@pytest.fixture(scope="module")
def frontend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    tmp = tmp_path_factory.mktemp("fuzz")
    redis = RedisServer().start()
    port = free_port()
    log = tmp / "frontend.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "redbarn", "frontend", "--listen", f"127.0.0.1:{port}",
             "--redis", redis.url, "--idle-sync-timeout", "300ms", "--grace-period", "1s",
             "--max-blob-size", "1MiB"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
        yield Frontend(port, proc, redis, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        redis.cleanup()


@pytest.fixture(scope="module")
def channel(frontend: Frontend) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as ch:
        yield ch


def _valid(method: descriptor.MethodDescriptor) -> bytes:
    """A plausible request of the method's input type, for the cut and padded variants."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(method.input_type)
    msg = cls()
    digest = re_pb2.Digest(hash=hashlib.sha256(b"x").hexdigest(), size_bytes=1)
    for field in method.input_type.fields:
        if field.type == field.TYPE_STRING and not field.is_repeated:
            setattr(msg, field.name, "blobs/" + digest.hash + "/1")
        elif field.message_type is re_pb2.Digest.DESCRIPTOR:
            if field.is_repeated:
                getattr(msg, field.name).append(digest)
            else:
                getattr(msg, field.name).CopyFrom(digest)
    data: bytes = msg.SerializeToString()
    return data


def garbage(method: descriptor.MethodDescriptor) -> st.SearchStrategy[bytes]:
    valid = _valid(method)
    cut = st.integers(0, max(len(valid) - 1, 0)).map(lambda n: valid[:n])
    padded = st.binary(min_size=1, max_size=64).map(lambda b: valid + b)
    flipped = st.tuples(st.integers(0, max(len(valid) - 1, 0)), st.integers(1, 255)).map(
        lambda t: valid[: t[0]] + bytes([valid[t[0]] ^ t[1]]) + valid[t[0] + 1 :] if valid else b""
    )
    return st.one_of(st.binary(max_size=512), cut, padded, flipped)


def _call(channel: grpc.Channel, name: str, payloads: list[bytes]) -> grpc.StatusCode:
    """Send raw `payloads` to method `name`; the status it ended with (OK included)."""
    method = METHODS[name]
    try:
        if method.client_streaming and method.server_streaming:
            responses = channel.stream_stream(name)(iter(payloads), timeout=DEADLINE)
        elif method.client_streaming:
            channel.stream_unary(name)(iter(payloads), timeout=DEADLINE)
            return grpc.StatusCode.OK
        elif method.server_streaming:
            responses = channel.unary_stream(name)(payloads[0], timeout=DEADLINE)
        else:
            channel.unary_unary(name)(payloads[0], timeout=DEADLINE)
            return grpc.StatusCode.OK
        for _ in responses:
            if name in OPEN_ENDED:
                responses.cancel()
                return grpc.StatusCode.OK
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        details = err.details() or ""
        assert code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN), (
            name,
            payloads,
            code,
            details,
        )
        assert not details.startswith("Internal error in"), (name, payloads, details)
        if details.startswith("Undecodable request: "):
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, payloads, code)
        if name in OPEN_ENDED and code == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK
        return code


@pytest.mark.parametrize("name", sorted(METHODS))
def test_garbage_requests_end_with_a_status(
    channel: grpc.Channel, frontend: Frontend, name: str
) -> None:
    method = METHODS[name]
    seen: set[grpc.StatusCode] = set()

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(garbage(method), min_size=1, max_size=3 if method.client_streaming else 1))
    def fuzz(payloads: list[bytes]) -> None:
        seen.add(_call(channel, name, payloads))

    fuzz()
    assert frontend.proc.poll() is None, frontend.log.read_text()[-3000:]
    assert seen  # every example ended with a status (asserted per call)


def _digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def test_after_the_fuzzing_another_client_is_served(frontend: Frontend, tmp_path: Path) -> None:
    """Still up: FindMissingBlobs, and a real action through a real worker."""
    assert frontend.proc.poll() is None
    text = frontend.log.read_text()
    # No servicer failed unexpectedly (SplitBlob/SpliceBlob answer UNIMPLEMENTED themselves).
    assert "internal error in" not in text, text[-3000:]
    unexpected = re.findall(r"Unexpected \[(\w+)\] raised by servicer method \[(\S+)\]", text)
    assert unexpected == [], unexpected
    worker = subprocess.Popen(
        [sys.executable, "-m", "redbarn", "worker", "--frontend", f"127.0.0.1:{frontend.port}",
         "--concurrency", "1", "--build-dir", str(tmp_path / "build"),
         "--cache-dir", str(tmp_path / "cache"), "--log-level", "WARNING"],
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as ch:
            cas = re_grpc.ContentAddressableStorageStub(ch)
            command = re_pb2.Command(arguments=["sh", "-c", "echo after-fuzz"]).SerializeToString()
            root = re_pb2.Directory().SerializeToString()
            action = re_pb2.Action(
                command_digest=_digest(command), input_root_digest=_digest(root)
            ).SerializeToString()
            missing = cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(blob_digests=[_digest(command)]), timeout=10
            )
            assert list(missing.missing_blob_digests) == [_digest(command)]
            Req = re_pb2.BatchUpdateBlobsRequest.Request
            cas.BatchUpdateBlobs(
                re_pb2.BatchUpdateBlobsRequest(
                    requests=[Req(digest=_digest(b), data=b) for b in (command, root, action)]
                ),
                timeout=10,
            )
            execution = re_grpc.ExecutionStub(ch)
            deadline = time.monotonic() + 60
            while True:
                try:
                    ops = list(
                        execution.Execute(
                            re_pb2.ExecuteRequest(action_digest=_digest(action)), timeout=30
                        )
                    )
                    break
                except grpc.RpcError as err:  # until the worker has registered
                    retry = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
                    if err.code() not in retry or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            response = re_pb2.ExecuteResponse()
            assert ops[-1].done and ops[-1].response.Unpack(response)
            assert response.status.code == 0 and response.result.exit_code == 0, response
            out = cas.BatchReadBlobs(
                re_pb2.BatchReadBlobsRequest(digests=[response.result.stdout_digest]), timeout=10
            )
            assert out.responses[0].data == b"after-fuzz\n"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert frontend.proc.poll() is None


FIRST_CHUNK = bytestream_pb2.WriteRequest(
    resource_name=f"uploads/u/blobs/{hashlib.sha256(b'ab').hexdigest()}/2", data=b"a"
).SerializeToString()


@pytest.mark.parametrize(
    ("name", "payloads", "message"),
    [
        ("/build.bazel.remote.execution.v2.ActionCache/GetActionResult", [b"\x00"],
         "Undecodable request: Error parsing message with type "
         "'build.bazel.remote.execution.v2.GetActionResultRequest'"),
        ("/build.bazel.remote.execution.v2.Execution/Execute", [b"\x0a\xff"],
         "Undecodable request: Error parsing message with type "
         "'build.bazel.remote.execution.v2.ExecuteRequest'"),
        ("/google.bytestream.ByteStream/Write", [FIRST_CHUNK, b"\xff\xff"],
         "Undecodable request: Error parsing message with type 'google.bytestream.WriteRequest'"),
        ("/buildbarn.remoteworker.OperationQueue/Synchronize", [b"\x12\x05ab"],
         "Undecodable request: Error parsing message with type "
         "'buildbarn.remoteworker.SynchronizeRequest'"),
    ],
)  # fmt: skip
def test_undecodable_request_is_invalid_argument(
    channel: grpc.Channel, name: str, payloads: list[bytes], message: str
) -> None:
    method = METHODS[name]
    with pytest.raises(grpc.RpcError) as info:
        if method.client_streaming:
            channel.stream_unary(name)(iter(payloads), timeout=DEADLINE)
        elif method.server_streaming:
            list(channel.unary_stream(name)(payloads[0], timeout=DEADLINE))
        else:
            channel.unary_unary(name)(payloads[0], timeout=DEADLINE)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(message), info.value.details()
