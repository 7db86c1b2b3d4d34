"""Redis ACL users, passwords and TLS through the URL, and no secret in any log line.

Each test starts its own redis-server (never the session one: it changes the
server's users and passwords) and talks to a real frontend over a real channel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from redbarn.frontend.config import FrontendConfig, redact_url
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import create_server
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.config import SchedulerConfig
from redbarn.runtime.redisserver import RedisServer, find_redis_server, free_port

from .conftest import digest_of
from .test_security_tls import Pki, make_pki

ACL_PASSWORD = "acl-pw-5f1e9c"
DEFAULT_PASSWORD = "default-pw-77aa01"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    """A private redis-server with an ACL user `redbarn` and a password on `default`."""
    server = RedisServer().start()
    try:
        with redis.Redis(port=server.port) as r:
            r.acl_setuser(
                "redbarn", enabled=True, passwords=[f"+{ACL_PASSWORD}"],
                keys=["*"], channels=["*"], commands=["+@all"],
            )  # fmt: skip
            r.config_set("requirepass", DEFAULT_PASSWORD)
        yield server
    finally:
        server.cleanup()


def _url(port: int, userinfo: str, scheme: str = "redis", query: str = "") -> str:
    return f"{scheme}://{userinfo}@127.0.0.1:{port}/0{query}"


async def _serve_and_probe(url: str) -> tuple[int, str, str]:
    """Start a frontend on `url`; return (health, FindMissingBlobs code, Synchronize code)."""
    config = FrontendConfig(
        listen="127.0.0.1:0", redis_url=url, health_interval=0.2, grace_period=0.2
    )
    sched = SchedulerConfig(idle_sync_timeout=0.3)
    server, port = await create_server(config, hooks=[scheduling_hook(sched)])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            codes = []
            for call in (
                re_grpc.ContentAddressableStorageStub(ch).FindMissingBlobs(
                    re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b"x")]), timeout=10
                ),
                rw_grpc.OperationQueueStub(ch).Synchronize(
                    rw_pb2.SynchronizeRequest(
                        worker_id={"thread": "0"},
                        current_state=rw_pb2.CurrentState(idle={}),
                        prefer_being_idle=True,
                    ),
                    timeout=10,
                ),
            ):
                try:
                    await call
                    codes.append("OK")
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code().name)
                    assert ACL_PASSWORD not in (err.details() or "")
                    assert DEFAULT_PASSWORD not in (err.details() or "")
            return health.status, codes[0], codes[1]
    finally:
        await server.stop(0)


async def test_acl_user_and_password_urls(
    locked_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = locked_redis.port
    right = [
        _url(port, f"redbarn:{ACL_PASSWORD}"),  # ACL user
        _url(port, f":{DEFAULT_PASSWORD}"),  # requirepass (the default user)
        f"redis://127.0.0.1:{port}/0?username=redbarn&password={ACL_PASSWORD}",
    ]
    for url in right:
        assert await _serve_and_probe(url) == (SERVING, "OK", "OK"), redact_url(url)
    wrong = [
        _url(port, "redbarn:not-the-password"),
        _url(port, f"nobody:{ACL_PASSWORD}"),
        f"redis://127.0.0.1:{port}/0",  # no password at all
    ]
    for url in wrong:
        assert await _serve_and_probe(url) == (NOT_SERVING, "UNAVAILABLE", "UNAVAILABLE"), url
    assert "health check redis failed" in caplog.text  # the failures were logged...
    assert ACL_PASSWORD not in caplog.text  # ...without the secrets
    assert DEFAULT_PASSWORD not in caplog.text


def test_redact_url() -> None:
    cases = {
        "redis://127.0.0.1:6379/0": "redis://127.0.0.1:6379/0",
        "redis://app:s3cret@r:6379/0": "redis://app:***@r:6379/0",
        "rediss://:s3cret@r:6380/0?ssl_ca_certs=/ca.pem": "rediss://:***@r:6380/0?ssl_ca_certs=/ca.pem",
        "redis://r/0?username=app&password=s3cret": "redis://r/0?username=app&password=***",
        "unix:///run/redis.sock?password=s3cret&db=2": "unix:///run/redis.sock?password=***&db=2",
        "redis://app@r/0": "redis://app@r/0",
        "app:s3cret@r:6379": "***@r:6379",
        "localhost:6379": "localhost:6379",
    }  # fmt: skip
    assert {url: redact_url(url) for url in cases} == cases


def test_frontend_process_logs_no_redis_password(locked_redis: RedisServer) -> None:
    """The real `redbarn frontend` at debug level, right and wrong password: no secret logged."""
    for password, serving in ((ACL_PASSWORD, True), (f"{ACL_PASSWORD}-wrong", False)):
        url = _url(locked_redis.port, f"redbarn:{password}")
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "redbarn", "frontend", "--listen", f"127.0.0.1:{port}",
             "--redis", url, "--log-level", "debug", "--grace-period", "0.2s"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                grpc.channel_ready_future(ch).result(timeout=30)
                health = health_pb2_grpc.HealthStub(ch)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    status = health.Check(health_pb2.HealthCheckRequest()).status
                    if (status == SERVING) == serving:
                        break
                    time.sleep(0.1)
                assert (status == SERVING) == serving
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=30)[0].decode(errors="replace")
        assert f"redis redis://redbarn:***@127.0.0.1:{locked_redis.port}/0" in output, output
        assert ACL_PASSWORD not in output, output


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("redis-pki"))


@pytest.fixture(params=["no", "yes"], ids=["tls", "mtls"])
def tls_redis(
    request: pytest.FixtureRequest,
    pki: Pki,
    tmp_path: Path,
) -> Iterator[tuple[int, str]]:
    """A private redis-server speaking only TLS, with a password; with `yes`, it also
    requires a client certificate. Yields (port, the URL query a client needs)."""
    auth_clients = request.param
    query = f"?ssl_ca_certs={pki.ca}"
    if auth_clients == "yes":
        query += f"&ssl_certfile={pki.worker_cert}&ssl_keyfile={pki.worker_key}"
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", auth_clients,
         "--requirepass", DEFAULT_PASSWORD, "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.skip(f"redis-server without TLS support: {err.strip()[-200:]}")
            try:
                with redis.Redis.from_url(_url(port, f":{DEFAULT_PASSWORD}", "rediss", query)) as r:
                    r.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, query
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


async def test_rediss_url_with_ca_and_password(tls_redis: tuple[int, str], pki: Pki) -> None:
    port, query = tls_redis
    good = _url(port, f":{DEFAULT_PASSWORD}", "rediss", query)
    assert await _serve_and_probe(good) == (SERVING, "OK", "OK")
    # Plaintext to a TLS port, TLS trusting the wrong CA, and (with mTLS) no client
    # certificate: all fail closed.
    wrong = [
        _url(port, f":{DEFAULT_PASSWORD}"),
        _url(port, f":{DEFAULT_PASSWORD}", "rediss", query.replace(str(pki.ca), str(pki.rogue_ca))),
    ]
    if "ssl_certfile" in query:
        wrong.append(_url(port, f":{DEFAULT_PASSWORD}", "rediss", f"?ssl_ca_certs={pki.ca}"))
    for url in wrong:
        probe = await asyncio.wait_for(_serve_and_probe(url), 60)
        assert probe == (NOT_SERVING, "UNAVAILABLE", "UNAVAILABLE"), redact_url(url)
