"""Frontend fixtures: a real frontend on 127.0.0.1:0 over the private Redis, and a client.

`storage_client` is parametrised: "redis" talks to a frontend storing in Redis;
"proxy" talks to a second frontend whose `--storage grpc://` is the first, so every
CAS/ByteStream/AC test runs through the proxy too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

MiB = 1 << 20


@dataclass
class Client:
    channel: grpc.aio.Channel
    cas: Any
    bytestream: Any
    ac: Any
    capabilities: Any
    health: Any
    server: FrontendServer
    config: FrontendConfig


def client_for(channel: grpc.aio.Channel, server: FrontendServer, config: FrontendConfig) -> Client:
    return Client(
        channel=channel,
        cas=re_grpc.ContentAddressableStorageStub(channel),
        bytestream=bs_grpc.ByteStreamStub(channel),
        ac=re_grpc.ActionCacheStub(channel),
        capabilities=re_grpc.CapabilitiesStub(channel),
        health=health_pb2_grpc.HealthStub(channel),
        server=server,
        config=config,
    )


def open_client_channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 * MiB),
            ("grpc.max_send_message_length", 64 * MiB),
        ],
    )


@pytest.fixture
def frontend_config(redis_url: str) -> FrontendConfig:
    return FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        max_blob_size=32 * MiB,
        health_interval=0.2,
        grace_period=0.5,
    )


async def start_frontend(config: FrontendConfig) -> tuple[FrontendServer, int]:
    server, port = await create_server(config)
    await server.start()
    return server, port


@pytest.fixture
async def redis_client(frontend_config: FrontendConfig) -> AsyncIterator[Client]:
    server, port = await start_frontend(frontend_config)
    channel = open_client_channel(port)
    try:
        yield client_for(channel, server, frontend_config)
    finally:
        await channel.close()
        await server.stop(0)


@pytest.fixture(params=["redis", "proxy"])
async def storage_client(
    request: pytest.FixtureRequest, frontend_config: FrontendConfig
) -> AsyncIterator[Client]:
    """A client of a Redis-backed frontend, or of a proxy frontend in front of one."""
    storage, storage_port = await start_frontend(frontend_config)
    servers = [storage]
    config, port = frontend_config, storage_port
    if request.param == "proxy":
        config = dataclasses.replace(frontend_config, storage=f"grpc://127.0.0.1:{storage_port}")
        proxy, port = await start_frontend(config)
        servers.append(proxy)
    channel = open_client_channel(port)
    try:
        yield client_for(channel, servers[-1], config)
    finally:
        await channel.close()
        for server in reversed(servers):
            await server.stop(0)


# ---------------------------------------------------------------- helpers used via Client


def digest_of(data: bytes) -> Any:
    import hashlib

    from redbarn.proto import remote_execution_pb2 as re_pb2

    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


async def put_blobs(client: Client, *blobs: bytes, instance_name: str = "") -> list[Any]:
    """BatchUpdateBlobs; returns the digests; asserts every blob stored."""
    from redbarn.proto import remote_execution_pb2 as re_pb2

    Req = re_pb2.BatchUpdateBlobsRequest.Request
    reply = await client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            instance_name=instance_name, requests=[Req(digest=digest_of(b), data=b) for b in blobs]
        )
    )
    assert [r.status.code for r in reply.responses] == [0] * len(blobs)
    return [digest_of(b) for b in blobs]
