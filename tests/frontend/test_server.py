"""Server wiring: capabilities, health, reflection, hooks, shutdown, and the CLI settings."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from redbarn.cli import build_parser
from redbarn.config import ConfigError
from redbarn.frontend import cli as frontend_cli
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.server import EXECUTION, Frontend, create_server
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import semver_pb2
from redbarn.queue.config import SchedulerConfig
from redbarn.runtime import grpcenv
from redbarn.runtime.redisserver import RedisServer, free_port

from .conftest import Client, MiB, client_for, digest_of, open_client_channel, start_frontend

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def expected_capabilities(exec_enabled: bool) -> re_pb2.ServerCapabilities:
    return re_pb2.ServerCapabilities(
        cache_capabilities=re_pb2.CacheCapabilities(
            digest_functions=[re_pb2.DigestFunction.SHA256],
            action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(
                update_enabled=True
            ),
            max_batch_total_size_bytes=4 * MiB,
            symlink_absolute_path_strategy=re_pb2.SymlinkAbsolutePathStrategy.DISALLOWED,
            max_cas_blob_size_bytes=32 * MiB,
            supported_compressors=[re_pb2.Compressor.ZSTD],
            supported_batch_update_compressors=[re_pb2.Compressor.ZSTD],
        ),
        execution_capabilities=re_pb2.ExecutionCapabilities(
            digest_function=re_pb2.DigestFunction.SHA256,
            digest_functions=[re_pb2.DigestFunction.SHA256],
            exec_enabled=exec_enabled,
            execution_priority_capabilities=re_pb2.PriorityCapabilities(
                priorities=[
                    re_pb2.PriorityCapabilities.PriorityRange(
                        min_priority=-(2**31), max_priority=2**31 - 1
                    )
                ]
            ),
        ),
        deprecated_api_version=semver_pb2.SemVer(major=2, minor=0),
        low_api_version=semver_pb2.SemVer(major=2, minor=0),
        high_api_version=semver_pb2.SemVer(major=2, minor=3),
    )


async def test_capabilities(redis_client: Client) -> None:
    reply = await redis_client.capabilities.GetCapabilities(
        re_pb2.GetCapabilitiesRequest(instance_name="x")
    )
    assert reply == expected_capabilities(exec_enabled=False)


async def test_hook_adds_a_service_and_enables_execution(frontend_config: FrontendConfig) -> None:
    seen: list[Frontend] = []

    def hook(frontend: Frontend) -> None:
        seen.append(frontend)
        frontend.exec_enabled = True
        frontend.service_names.append(EXECUTION)  # as add_service would, for reflection

    server, port = await create_server(frontend_config, hooks=[hook])
    await server.start()
    channel = open_client_channel(port)
    try:
        client = client_for(channel, server, frontend_config)
        reply = await client.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest())
        assert reply == expected_capabilities(exec_enabled=True)
        assert seen[0].blobs is server.frontend.blobs
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> reflection_pb2.ServerReflectionRequest:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for reply in stub.ServerReflectionInfo(ask()):
            names |= {s.name for s in reply.list_services_response.service}
        assert {
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "build.bazel.remote.execution.v2.ActionCache",
            "build.bazel.remote.execution.v2.Capabilities",
            "build.bazel.remote.execution.v2.Execution",
            "google.bytestream.ByteStream",
            "grpc.health.v1.Health",
        } <= names
    finally:
        await channel.close()
        await server.stop(0)


async def test_health_follows_redis(frontend_config: FrontendConfig) -> None:
    redis_server = RedisServer(port=free_port()).start()
    config = dataclasses.replace(frontend_config, redis_url=redis_server.url)
    server, port = await start_frontend(config)
    channel = open_client_channel(port)
    client = client_for(channel, server, config)

    async def status_becomes(want: int, service: str = "") -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reply = await client.health.Check(health_pb2.HealthCheckRequest(service=service))
            if reply.status == want:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"health of {service!r} never became {want}")

    try:
        await status_becomes(SERVING)
        await status_becomes(SERVING, "build.bazel.remote.execution.v2.ContentAddressableStorage")
        redis_server.stop()
        await status_becomes(NOT_SERVING)
        await status_becomes(NOT_SERVING, "google.bytestream.ByteStream")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            request = re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b"x")])
            await client.cas.FindMissingBlobs(request)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        redis_server.start()
        await status_becomes(SERVING)
    finally:
        await channel.close()
        await server.stop(0)
        redis_server.cleanup()


async def test_stop_enters_not_serving_and_finishes(redis_client: Client) -> None:
    await redis_client.server.stop(0.1)
    with pytest.raises(grpc.aio.AioRpcError):
        await redis_client.capabilities.GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=1)


def parse(*argv: str) -> FrontendConfig:
    import argparse

    parser = argparse.ArgumentParser()
    frontend_cli.add_arguments(parser)
    return frontend_cli.config_from_args(parser.parse_args(list(argv)))


def test_cli_builds_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDBARN_CAS_TTL", "2h")
    config = parse(
        "--listen", "0.0.0.0:9000", "--redis", "redis://r:1/0", "--cas-redis", "redis://c:2/0",
        "--storage", "grpc://storage:8980", "--max-blob-size", "2GiB", "--max-batch-size", "2MiB",
    )  # fmt: skip
    assert config == FrontendConfig(
        listen="0.0.0.0:9000",
        redis_url="redis://r:1/0",
        cas_redis_url="redis://c:2/0",
        storage="grpc://storage:8980",
        max_blob_size=2 << 30,
        max_batch_total_size=2 * MiB,
        max_message_size=3 * MiB,
        cas_ttl=7200.0,
    )


def test_cli_scheduling_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDBARN_MAX_ATTEMPTS", "5")
    config = parse(
        "--worker-timeout", "500ms", "--idle-sync-timeout", "2s", "--max-action-timeout", "3h"
    )
    assert config.scheduler == SchedulerConfig(
        worker_timeout=0.5, idle_sync_timeout=2.0, max_action_timeout=3 * 3600.0, max_attempts=5
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nowhere"], 'invalid --listen "nowhere": expected HOST:PORT'),
        (
            ["--storage", "s3://x"],
            'invalid --storage "s3://x": use "redis", grpc://host:port or grpcs://host:port',
        ),
        (
            ["--cas-ttl", "soon"],
            'invalid duration "soon": use a number with ms, s, m or h, e.g. 2s',
        ),
        (
            ["--max-blob-size", "big"],
            'invalid size "big": use a number with K, M, G or T, e.g. 10GiB',
        ),
        (
            ["--max-attempts", "0"],
            'invalid --max-attempts "0": expected a whole number of at least 1',
        ),
        (
            ["--default-action-timeout", "3h"],
            "--default-action-timeout 3h exceeds --max-action-timeout 2h",
        ),
        (
            ["--redis", "localhost:6379"],
            'invalid --redis "localhost:6379": expected redis://host:port/db',
        ),
    ],
)
def test_cli_rejects_bad_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert str(info.value) == message


@pytest.mark.slow
def test_frontend_process_serves_and_exits_on_sigterm(redis_url: str) -> None:
    """`python -m redbarn.frontend.cli`-equivalent: the subcommand module run as a process."""
    port = free_port()
    code = (
        "import argparse, sys\n"
        "from redbarn.frontend import cli\n"
        "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
        "sys.exit(cli.run(p.parse_args(sys.argv[1:])))\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--listen",
            f"127.0.0.1:{port}",
            "--redis",
            redis_url,
            "--grace-period",
            "1s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        from redbarn.proto import remote_execution_pb2_grpc as re_grpc

        reply = re_grpc.CapabilitiesStub(channel).GetCapabilities(re_pb2.GetCapabilitiesRequest())
        assert reply.cache_capabilities.digest_functions == [re_pb2.DigestFunction.SHA256]
        assert reply.execution_capabilities.exec_enabled  # the scheduling hook is wired in
        channel.close()
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            exit_code = None
        assert exit_code == 0, (proc.kill(), proc.communicate()[0].decode(errors="replace")[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_flag_exits_non_zero_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-c",
         "import argparse, sys\n"
         "from redbarn.config import ConfigError\n"
         "from redbarn.frontend import cli\n"
         "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
         "try:\n    cli.run(p.parse_args(sys.argv[1:]))\n"
         "except ConfigError as e:\n    print(e, file=sys.stderr); sys.exit(2)\n",
         "--listen", "bad"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ['invalid --listen "bad": expected HOST:PORT']


def test_subcommand_registration_shape() -> None:
    # The lead registers `frontend` in redbarn.cli.SUBCOMMANDS; the module has the shape it needs.
    assert callable(frontend_cli.add_arguments) and callable(frontend_cli.run)
    build_parser()


async def test_cas_redis_is_a_separate_database(frontend_config: FrontendConfig) -> None:
    import redis.asyncio as aioredis

    cas_url = frontend_config.redis_url.rsplit("/", 1)[0] + "/1"
    config = dataclasses.replace(frontend_config, cas_redis_url=cas_url)
    server, port = await start_frontend(config)
    channel = open_client_channel(port)
    scheduler_db, cas_db = (
        aioredis.Redis.from_url(config.redis_url),
        aioredis.Redis.from_url(cas_url),
    )
    try:
        client = client_for(channel, server, config)
        Req = re_pb2.BatchUpdateBlobsRequest.Request
        request = re_pb2.BatchUpdateBlobsRequest(
            requests=[Req(digest=digest_of(b"blob"), data=b"blob")]
        )
        await client.cas.BatchUpdateBlobs(request)
        assert await scheduler_db.keys("redbarn:v1:cas:*") == []
        assert len(await cas_db.keys("redbarn:v1:cas:*")) == 1
    finally:
        await channel.close()
        await server.stop(0)
        await scheduler_db.aclose()
        await cas_db.aclose()


async def test_proxy_to_a_dead_upstream_is_unavailable(frontend_config: FrontendConfig) -> None:
    config = dataclasses.replace(frontend_config, storage=f"grpc://127.0.0.1:{free_port()}")
    server, port = await start_frontend(config)
    channel = open_client_channel(port)
    try:
        client = client_for(channel, server, config)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            request = re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b"x")])
            await client.cas.FindMissingBlobs(request)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = await client.health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == NOT_SERVING
    finally:
        await channel.close()
        await server.stop(0)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
async def test_a_started_frontend_batches_its_grpc_poller(frontend_config: FrontendConfig) -> None:
    # redbarn.runtime.grpcenv: SCHED_BATCH for grpc.aio's poller thread, set when the server starts.
    server, _ = await create_server(frontend_config)
    grpcenv.set_poller_policy("normal")  # whatever an earlier test left
    await server.start()
    try:
        [poller] = grpcenv.poller_threads()
        assert poller.native_id is not None
        assert os.sched_getscheduler(poller.native_id) == os.SCHED_BATCH
    finally:
        await server.stop(0)
