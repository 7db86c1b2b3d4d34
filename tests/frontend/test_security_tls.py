"""TLS on both listeners and mutual TLS on the worker listener, with throwaway certificates.

A test-time CA signs the server certificate (SAN 127.0.0.1 and localhost) and a worker
client certificate; a second, untrusted CA signs a rogue client certificate. Keys are
generated with the `openssl` CLI into tmp_path and never committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.queue.config import SchedulerConfig
from redbarn.worker.cli import serve as serve_worker
from redbarn.worker.config import WorkerConfig

SCHED = SchedulerConfig(
    idle_sync_timeout=1.0, worker_timeout=3.0, busy_sync_interval=0.3, waiter_poll_interval=0.2
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    worker_cert: Path
    worker_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path

    def read(self, name: str) -> bytes:
        path: Path = getattr(self, name)
        return path.read_bytes()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    cert, key, csr, extfile = (d / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    extfile.write_text(ext)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(extfile),
    )  # fmt: skip
    return cert, key


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a worker client certificate,
    and a rogue CA with a client certificate of its own, all under `d`."""
    d.mkdir(parents=True, exist_ok=True)
    ca, rogue = _ca(d, "test-ca"), _ca(d, "rogue-ca")
    server = _leaf(
        d, "localhost", ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client_ext = "extendedKeyUsage=clientAuth\n"
    worker = _leaf(d, "worker", ca, client_ext)
    rogue_client = _leaf(d, "rogue-worker", rogue, client_ext)
    return Pki(ca[0], *server, *worker, rogue[0], *rogue_client)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_config(redis_url: str, pki: Pki) -> FrontendConfig:
    return FrontendConfig(
        listen="127.0.0.1:0",
        worker_listen="127.0.0.1:0",
        redis_url=redis_url,
        health_interval=0.2,
        grace_period=0.2,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )


@pytest.fixture
async def frontend(tls_config: FrontendConfig) -> AsyncIterator[tuple[FrontendServer, int, int]]:
    server, port = await create_server(tls_config, hooks=[scheduling_hook(SCHED)])
    await server.start()
    assert server.worker_port is not None
    try:
        yield server, port, server.worker_port
    finally:
        await server.stop(0)


def _tls(pki: Pki, *, ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read(ca),
        private_key=pki.read(f"{client}_key") if client else None,
        certificate_chain=pki.read(f"{client}_cert") if client else None,
    )


async def _capabilities(channel: grpc.aio.Channel) -> str:
    """OK, or the status code name the call failed with (bounded: handshakes can hang)."""
    async with channel:
        stub = re_grpc.CapabilitiesStub(channel)
        try:
            await stub.GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code().name
    return "OK"


def _secure(port: int, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


def _plain(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_client_listener_tls(frontend: tuple[FrontendServer, int, int], pki: Pki) -> None:
    _, port, _ = frontend
    assert await _capabilities(_secure(port, _tls(pki))) == "OK"  # right CA
    # A client certificate is accepted but not required on the client listener.
    assert await _capabilities(_secure(port, _tls(pki, client="worker"))) == "OK"
    assert await _capabilities(_plain(port)) == "UNAVAILABLE"  # plaintext
    assert await _capabilities(_secure(port, _tls(pki, ca="rogue_ca"))) == "UNAVAILABLE"  # wrong CA


async def test_worker_listener_requires_a_client_certificate(
    frontend: tuple[FrontendServer, int, int], pki: Pki
) -> None:
    _, _, worker_port = frontend
    assert await _capabilities(_secure(worker_port, _tls(pki, client="worker"))) == "OK"
    assert await _capabilities(_secure(worker_port, _tls(pki))) == "UNAVAILABLE"  # no client cert
    assert await _capabilities(_secure(worker_port, _tls(pki, client="rogue"))) == "UNAVAILABLE"
    assert await _capabilities(_plain(worker_port)) == "UNAVAILABLE"


async def test_tls_without_client_ca_serves_both_listeners_without_client_certs(
    tls_config: FrontendConfig, pki: Pki
) -> None:
    config = dataclasses.replace(tls_config, tls_client_ca="")
    server, port = await create_server(config)
    await server.start()
    try:
        assert server.worker_port is not None
        for p in (port, server.worker_port):
            assert await _capabilities(_secure(p, _tls(pki))) == "OK"
            assert await _capabilities(_plain(p)) == "UNAVAILABLE"
    finally:
        await server.stop(0)


async def test_unreadable_certificate_is_a_config_error(tls_config: FrontendConfig) -> None:
    from redbarn.config import ConfigError

    config = dataclasses.replace(tls_config, tls_key="/nonexistent/server.key")
    with pytest.raises(ConfigError, match=r"^cannot read --tls-key /nonexistent/server.key: "):
        await create_server(config)


# ---------------------------------------------------------- a real worker over mTLS + token


class Recorder(grpc.aio.ServerInterceptor):
    """Records (method, bearer header) of every call that reaches the servicers."""

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


def _digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


async def _execute(channel: grpc.aio.Channel, md: list[tuple[str, str]]) -> Any:
    """Upload and run `echo secure` like Bazel; returns the ExecuteResponse."""
    cas = re_grpc.ContentAddressableStorageStub(channel)
    execution = re_grpc.ExecutionStub(channel)
    command = re_pb2.Command(arguments=["sh", "-c", "echo secure"]).SerializeToString()
    root = re_pb2.Directory().SerializeToString()
    action = re_pb2.Action(
        command_digest=_digest(command), input_root_digest=_digest(root)
    ).SerializeToString()
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    await cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[Req(digest=_digest(b), data=b) for b in (command, root, action)]
        ),
        metadata=md,
    )
    for _ in range(100):  # until the worker's platform queue exists
        try:
            async for op in execution.Execute(
                re_pb2.ExecuteRequest(action_digest=_digest(action)), metadata=md
            ):
                if op.done:
                    response = re_pb2.ExecuteResponse()
                    op.response.Unpack(response)
                    return response
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("no worker picked the action up")


async def test_worker_over_mtls_with_token_and_client_over_tls_with_token(
    tls_config: FrontendConfig, pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "clients").write_text("client-secret\n")
    (tmp_path / "workers").write_text("worker-secret\n")
    config = dataclasses.replace(
        tls_config,
        client_tokens=str(tmp_path / "clients"),
        worker_tokens=str(tmp_path / "workers"),
        allow_client_ac_writes=False,
    )
    recorder = Recorder()
    server, port = await create_server(
        config, hooks=[scheduling_hook(SCHED)], interceptors=[recorder]
    )
    await server.start()
    worker_config = WorkerConfig(
        frontend=f"127.0.0.1:{server.worker_port}",
        concurrency=1,
        build_dir=str(tmp_path / "build"),
        cache_dir=str(tmp_path / "cache"),
        token="worker-secret",
        tls_ca=str(pki.ca),
        tls_cert=str(pki.worker_cert),
        tls_key=str(pki.worker_key),
        sync_timeout=5.0,
    )
    shutdown = asyncio.Event()
    worker = asyncio.create_task(serve_worker(worker_config, shutdown))
    try:
        async with _secure(port, _tls(pki)) as channel:
            md = [("authorization", "Bearer client-secret")]
            response = await asyncio.wait_for(_execute(channel, md), 30)
            assert response.status.code == code_pb2.OK, response.status
            assert response.result.exit_code == 0
            cas = re_grpc.ContentAddressableStorageStub(channel)
            read = await cas.BatchReadBlobs(
                re_pb2.BatchReadBlobsRequest(digests=[response.result.stdout_digest]), metadata=md
            )
            assert read.responses[0].data == b"secure\n"
    finally:
        shutdown.set()
        await asyncio.wait_for(worker, 15)
        await server.stop(0)
    worker_calls = [(m, a) for m, a in recorder.calls if a != "Bearer client-secret"]
    methods = {m for m, _ in worker_calls}
    assert "/buildbarn.remoteworker.OperationQueue/Synchronize" in methods
    assert "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities" in methods
    assert any("ContentAddressableStorage" in m or "ByteStream" in m for m in methods), methods
    # The worker wrote the action's result to the AC though clients may not.
    assert "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult" in methods
    assert {a for _, a in worker_calls} == {"Bearer worker-secret"}, worker_calls


def test_worker_cli_tls_flags(pki: Pki, tmp_path: Path) -> None:
    import argparse

    from redbarn.config import ConfigError
    from redbarn.worker import cli

    def parse(*argv: str) -> WorkerConfig:
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return cli.config_from_args(parser.parse_args(list(argv)))

    config = parse(
        "--tls-ca", str(pki.ca), "--tls-cert", str(pki.worker_cert),
        "--tls-key", str(pki.worker_key), "--build-dir", str(tmp_path / "b"),
    )  # fmt: skip
    assert (config.tls_ca, config.tls_cert, config.tls_key) == (
        str(pki.ca),
        str(pki.worker_cert),
        str(pki.worker_key),
    )
    assert parse().tls_ca == ""
    for argv, message in [
        (["--tls-ca", str(pki.ca), "--tls-cert", str(pki.worker_cert)],
         "--tls-cert and --tls-key must be given together"),
        (["--tls-cert", str(pki.worker_cert), "--tls-key", str(pki.worker_key)],
         "--tls-cert needs --tls-ca (the CA of the frontend's certificate)"),
        (["--tls-ca", "/nonexistent/ca.pem"], "cannot read --tls-ca /nonexistent/ca.pem: no such file"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            parse(*argv)
        assert str(info.value) == message
