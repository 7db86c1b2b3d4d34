"""`--storage grpcs://` with a CA, a bearer token and mTLS, against a second real frontend.

The upstream is a redbarn frontend serving TLS (a test CA from `make_pki`) with client
and worker tokens, and mutual TLS on its worker listener. The proxy is a second
frontend whose CAS, ByteStream and Action Cache forward there. A recording interceptor
on the upstream shows which calls arrived and with which `authorization` header.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from redbarn.config import ConfigError
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

from .conftest import MiB, digest_of, open_client_channel
from .test_security_tls import Pki, make_pki

CLIENT_TOKEN = "client-tok-8c1f2a"
WORKER_TOKEN = "worker-tok-41d9e0"
AUTH_CALL_TIMEOUT = 30  # bounds every call: a broken handshake must fail, not hang the test


class Recorder(grpc.aio.ServerInterceptor):
    """Records (method, authorization header) of every call reaching the upstream."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        auth = dict(details.invocation_metadata or ()).get("authorization")
        self.calls.append((details.method, auth if isinstance(auth, str) else None))
        return await continuation(details)

    def methods(self) -> set[str]:
        return {m.rsplit("/", 1)[1] for m, _ in self.calls}


@dataclass
class Upstream:
    server: FrontendServer
    port: int  # client listener: TLS, client tokens
    worker_port: int  # worker listener: mTLS, worker tokens
    recorder: Recorder


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("proxy-pki"))


@pytest.fixture
def token_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "clients": f"# clients of the upstream\n{CLIENT_TOKEN}\n",
        "workers": f"{WORKER_TOKEN}\n",
        "client": f"{CLIENT_TOKEN}\n",
        "worker": f"  {WORKER_TOKEN}  \n",
        "wrong": "not-a-token-of-the-upstream\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {name: tmp_path / name for name in files}


@pytest.fixture
async def upstream(
    redis_url: str, pki: Pki, token_files: dict[str, Path]
) -> AsyncIterator[Upstream]:
    config = FrontendConfig(
        listen="127.0.0.1:0",
        worker_listen="127.0.0.1:0",
        redis_url=redis_url,
        max_blob_size=32 * MiB,
        health_interval=0.2,
        grace_period=0.2,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        client_tokens=str(token_files["clients"]),
        worker_tokens=str(token_files["workers"]),
    )
    recorder = Recorder()
    server, port = await create_server(config, interceptors=[recorder])
    await server.start()
    assert server.worker_port is not None
    try:
        yield Upstream(server, port, server.worker_port, recorder)
    finally:
        await server.stop(0)


def proxy_config(redis_url: str, **storage: str) -> FrontendConfig:
    return FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        max_blob_size=32 * MiB,
        health_interval=0.2,
        grace_period=0.2,
        **storage,  # type: ignore[arg-type]
    )


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]]]:
    """Starts proxy frontends; returns a plaintext client channel to each."""
    started: list[tuple[FrontendServer, grpc.aio.Channel]] = []

    async def start(config: FrontendConfig) -> grpc.aio.Channel:
        server, port = await create_server(config)
        await server.start()
        channel = open_client_channel(port)
        started.append((server, channel))
        return channel

    try:
        yield start
    finally:
        for server, channel in reversed(started):
            await channel.close()
            await server.stop(0)


def _tls_channel(port: int, pki: Pki) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.read("ca"))
    return grpc.aio.secure_channel(
        f"localhost:{port}", creds, options=[("grpc.max_receive_message_length", 64 * MiB)]
    )


async def _write(channel: grpc.aio.Channel, data: bytes) -> int:
    """ByteStream.Write of `data` in 1 MiB pieces; returns the committed size."""
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

    reply = await bs_grpc.ByteStreamStub(channel).Write(requests(), timeout=AUTH_CALL_TIMEOUT)  # type: ignore[no-untyped-call]
    return int(reply.committed_size)


async def _read(channel: grpc.aio.Channel, data: bytes) -> bytes:
    d = digest_of(data)
    stream = bs_grpc.ByteStreamStub(channel).Read(  # type: ignore[no-untyped-call]
        bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}"),
        timeout=AUTH_CALL_TIMEOUT,
    )
    return b"".join([reply.data async for reply in stream])


async def _round_trip(channel: grpc.aio.Channel) -> dict[str, Any]:
    """Every kind of storage call through `channel`; returns what the client saw."""
    cas = re_grpc.ContentAddressableStorageStub(channel)  # type: ignore[no-untyped-call]
    ac = re_grpc.ActionCacheStub(channel)  # type: ignore[no-untyped-call]
    small = b"small blob " + uuid.uuid4().bytes
    big = hashlib.sha256(small).digest() * (3 * MiB // 32 + 5)  # over the proxy's 2 MiB batches
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    update = await cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=digest_of(small), data=small)]),
        timeout=AUTH_CALL_TIMEOUT,
    )
    written = await _write(channel, big)
    missing = await cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(
            blob_digests=[digest_of(small), digest_of(big), digest_of(b"never stored")]
        ),
        timeout=AUTH_CALL_TIMEOUT,
    )
    read_back = await _read(channel, big)
    action = digest_of(b"action " + small)
    result = re_pb2.ActionResult(
        exit_code=0,
        output_files=[re_pb2.OutputFile(path="out/big", digest=digest_of(big))],
        stdout_digest=digest_of(small),
    )
    await ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=action, action_result=result),
        timeout=AUTH_CALL_TIMEOUT,
    )
    got = await ac.GetActionResult(
        re_pb2.GetActionResultRequest(action_digest=action, inline_stdout=True),
        timeout=AUTH_CALL_TIMEOUT,
    )
    return {
        "update_codes": [r.status.code for r in update.responses],
        "written": written,
        "missing": list(missing.missing_blob_digests),
        "read_back_ok": read_back == big,
        "small": small,
        "big": big,
        "action": action,
        "result": result,
        "got": got,
    }


async def test_proxy_over_tls_with_token_reaches_the_upstream(
    redis_url: str,
    pki: Pki,
    token_files: dict[str, Path],
    upstream: Upstream,
    start_proxy: Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="redbarn")
    channel = await start_proxy(
        proxy_config(
            redis_url,
            storage=f"grpcs://localhost:{upstream.port}",
            storage_tls_ca=str(pki.ca),
            storage_token_file=str(token_files["client"]),
        )
    )
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    seen = await _round_trip(channel)
    assert seen["update_codes"] == [0]
    assert seen["written"] == len(seen["big"])
    assert seen["missing"] == [digest_of(b"never stored")]
    assert seen["read_back_ok"]
    expected = re_pb2.ActionResult()
    expected.CopyFrom(seen["result"])
    expected.stdout_raw = seen["small"]
    assert seen["got"] == expected

    # Everything went to the upstream, each call with the proxy's token.
    methods = upstream.recorder.methods()
    for method in (
        "BatchUpdateBlobs", "FindMissingBlobs", "Write", "Read",
        "UpdateActionResult", "GetActionResult", "GetCapabilities",
    ):  # fmt: skip
        assert method in methods, (method, methods)
    assert {auth for _, auth in upstream.recorder.calls} == {f"Bearer {CLIENT_TOKEN}"}

    # The upstream holds the blobs and the result: ask it directly.
    async with _tls_channel(upstream.port, pki) as direct:
        md = [("authorization", f"Bearer {CLIENT_TOKEN}")]
        cas = re_grpc.ContentAddressableStorageStub(direct)  # type: ignore[no-untyped-call]
        missing = await cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(
                blob_digests=[digest_of(seen["small"]), digest_of(seen["big"])]
            ),
            metadata=md,
            timeout=AUTH_CALL_TIMEOUT,
        )
        assert list(missing.missing_blob_digests) == []
        ac = re_grpc.ActionCacheStub(direct)  # type: ignore[no-untyped-call]
        direct_result = await ac.GetActionResult(
            re_pb2.GetActionResultRequest(action_digest=seen["action"]),
            metadata=md,
            timeout=AUTH_CALL_TIMEOUT,
        )
        assert direct_result == seen["result"]
    assert CLIENT_TOKEN not in caplog.text


async def test_proxy_with_mtls_to_the_upstream_worker_listener(
    redis_url: str,
    pki: Pki,
    token_files: dict[str, Path],
    upstream: Upstream,
    start_proxy: Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]],
) -> None:
    channel = await start_proxy(
        proxy_config(
            redis_url,
            storage=f"grpcs://localhost:{upstream.worker_port}",
            storage_tls_ca=str(pki.ca),
            storage_tls_cert=str(pki.worker_cert),
            storage_tls_key=str(pki.worker_key),
            storage_token_file=str(token_files["worker"]),
        )
    )
    seen = await _round_trip(channel)
    assert seen["update_codes"] == [0]
    assert seen["written"] == len(seen["big"])
    assert seen["missing"] == [digest_of(b"never stored")]
    assert seen["read_back_ok"]
    assert {auth for _, auth in upstream.recorder.calls} == {f"Bearer {WORKER_TOKEN}"}


async def test_upstream_worker_listener_refuses_a_proxy_without_client_certificate(
    redis_url: str,
    pki: Pki,
    token_files: dict[str, Path],
    upstream: Upstream,
    start_proxy: Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]],
) -> None:
    channel = await start_proxy(
        proxy_config(
            redis_url,
            storage=f"grpcs://localhost:{upstream.worker_port}",
            storage_tls_ca=str(pki.ca),
            storage_token_file=str(token_files["worker"]),
        )
    )
    err = await _find_missing_error(channel)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert str(err.details()).startswith("The --storage upstream is unavailable: "), err.details()
    assert upstream.recorder.calls == []


async def _health(channel: grpc.aio.Channel) -> int:
    """The proxy's health as its first check left it (create_server checks once at start)."""
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=AUTH_CALL_TIMEOUT)
    return int(reply.status)


async def _find_missing_error(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    cas = re_grpc.ContentAddressableStorageStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b"x")]),
            timeout=AUTH_CALL_TIMEOUT,
        )
    return info.value


async def test_wrong_token_is_unauthenticated_naming_the_upstream(
    redis_url: str,
    pki: Pki,
    token_files: dict[str, Path],
    upstream: Upstream,
    start_proxy: Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]],
) -> None:
    channel = await start_proxy(
        proxy_config(
            redis_url,
            storage=f"grpcs://localhost:{upstream.port}",
            storage_tls_ca=str(pki.ca),
            storage_token_file=str(token_files["wrong"]),
        )
    )
    err = await _find_missing_error(channel)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert str(err.details()).startswith(
        "The --storage upstream refused this frontend's credentials: "
    ), err.details()
    assert "not-a-token" not in str(err.details())
    assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert ("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs",
            "Bearer not-a-token-of-the-upstream") in upstream.recorder.calls  # fmt: skip


async def test_no_token_is_unauthenticated(
    redis_url: str,
    pki: Pki,
    upstream: Upstream,
    start_proxy: Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]],
) -> None:
    channel = await start_proxy(
        proxy_config(
            redis_url, storage=f"grpcs://localhost:{upstream.port}", storage_tls_ca=str(pki.ca)
        )
    )
    err = await _find_missing_error(channel)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_wrong_ca_is_unavailable_not_a_hang(
    redis_url: str,
    pki: Pki,
    token_files: dict[str, Path],
    upstream: Upstream,
    start_proxy: Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]],
) -> None:
    channel = await start_proxy(
        proxy_config(
            redis_url,
            storage=f"grpcs://localhost:{upstream.port}",
            storage_tls_ca=str(pki.rogue_ca),
            storage_token_file=str(token_files["client"]),
        )
    )
    # Each call fails on its own (no wait_for_ready): none waits for the client's deadline.
    for _ in range(2):
        err = await _find_missing_error(channel)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        details = str(err.details())
        assert details.startswith("The --storage upstream is unavailable: "), details
        assert "CERTIFICATE_VERIFY_FAILED" in details or "handshake" in details.lower(), details
        assert str(upstream.port) not in details and "127.0.0.1" not in details, details
    assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert upstream.recorder.calls == []


async def test_plaintext_upstream_with_token(
    redis_url: str,
    token_files: dict[str, Path],
    start_proxy: Callable[[FrontendConfig], Awaitable[grpc.aio.Channel]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpc:// plus a token: the header comes from a client interceptor, on every call shape."""
    recorder = Recorder()
    config = FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        max_blob_size=32 * MiB,
        health_interval=0.2,
        grace_period=0.2,
        client_tokens=str(token_files["clients"]),
    )
    server, port = await create_server(config, interceptors=[recorder])
    await server.start()
    try:
        caplog.set_level(logging.DEBUG, logger="redbarn")
        channel = await start_proxy(
            proxy_config(
                redis_url,
                storage=f"grpc://127.0.0.1:{port}",
                storage_token_file=str(token_files["client"]),
            )
        )
        seen = await _round_trip(channel)
        assert seen["update_codes"] == [0]
        assert seen["written"] == len(seen["big"])
        assert seen["read_back_ok"]
        assert "Write" in recorder.methods() and "Read" in recorder.methods()
        assert {auth for _, auth in recorder.calls} == {f"Bearer {CLIENT_TOKEN}"}
        assert "crosses the network unencrypted" in caplog.text
        assert CLIENT_TOKEN not in caplog.text
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("field", "content", "message"),
    [
        ("storage_token_file", None, "cannot read --storage-token-file {path}: "),
        ("storage_token_file", "  \n\n", "--storage-token-file {path} is empty"),
        (
            "storage_token_file",
            "two words\n",
            "--storage-token-file {path} must hold one token on one line, without spaces",
        ),
        ("storage_tls_ca", None, "cannot read --storage-tls-ca {path}: "),
        ("storage_tls_ca", "", "--storage-tls-ca {path} holds no PEM certificate"),
        ("storage_tls_ca", "not a pem\n", "--storage-tls-ca {path} holds no PEM certificate"),
    ],
)
async def test_unusable_credential_files_are_config_errors(
    redis_url: str, pki: Pki, tmp_path: Path, field: str, content: str | None, message: str
) -> None:
    path = tmp_path / "credential"
    if content is not None:
        path.write_text(content)
    storage = {
        "storage": "grpcs://localhost:1",
        "storage_tls_ca": str(pki.ca),
        field: str(path),
    }
    with pytest.raises(ConfigError) as info:
        await create_server(proxy_config(redis_url, **storage))
    assert str(info.value).startswith(message.format(path=path)), str(info.value)
    assert "two" not in str(info.value)


async def test_unusable_client_key_is_a_config_error(redis_url: str, pki: Pki) -> None:
    config = proxy_config(
        redis_url,
        storage="grpcs://localhost:1",
        storage_tls_cert=str(pki.worker_cert),
        storage_tls_key=str(pki.worker_cert),  # a certificate where the key belongs
    )
    with pytest.raises(ConfigError) as info:
        await create_server(config)
    assert str(info.value) == f"--storage-tls-key {pki.worker_cert} holds no PEM private key"
