"""The pipelining client against real redis-server processes (private ports only)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions

from redbarn.runtime.fastredis import FastRedis, pack
from redbarn.runtime.redisserver import RedisServer


@pytest.fixture
async def fast(redis_url: str) -> AsyncIterator[FastRedis]:
    """A client of the private test server."""
    client = FastRedis.from_url(redis_url)
    assert client is not None
    try:
        yield client
    finally:
        await client.aclose()


def test_pack_is_resp() -> None:
    assert pack(["SET", b"k\r\n", 12]) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"


def test_from_url() -> None:
    c = FastRedis.from_url("redis://alice:p%40ss@10.0.0.1:6380/3")
    assert c is not None
    assert (c.host, c.port, c.db, c.username, c.password) == ("10.0.0.1", 6380, 3, "alice", "p@ss")
    u = FastRedis.from_url("unix:///run/redis.sock?db=2")
    assert u is not None and (u.path, u.db) == ("/run/redis.sock", 2)
    # TLS and anything unusual stay with redis-py.
    assert FastRedis.from_url("rediss://r:6380/0?ssl_ca_certs=/ca.pem") is None
    q = FastRedis.from_url("redis://r:6379/0?username=bob&password=pw")
    assert q is not None and (q.username, q.password) == ("bob", "pw")


async def test_commands_pipeline_in_order(fast: FastRedis) -> None:
    replies = await asyncio.gather(*(fast.execute("INCR", "fast:n") for _ in range(500)))
    assert sorted(replies) == list(range(1, 501))
    # Each caller got its own reply: INCR results arrive in the order sent.
    assert replies == list(range(1, 501))
    await fast.execute("SET", "fast:b", b"\x00\xff")
    assert await fast.execute("GET", "fast:b") == b"\x00\xff"
    assert await fast.execute("GET", "fast:missing") is None
    with pytest.raises(exceptions.ResponseError, match="WRONGTYPE"):
        await fast.execute("HGET", "fast:b", "f")
    assert await fast.execute("PING") == b"PONG"  # still usable after an error reply


async def test_scripts_load_on_noscript(real_redis: aioredis.Redis, fast: FastRedis) -> None:
    script = fast.script("return {KEYS[1], ARGV[1], 7}")
    assert await script(keys=["k"], args=[b"v"]) == [b"k", b"v", 7]
    await real_redis.script_flush()
    assert await script(keys=["k2"], args=["w"]) == [b"k2", b"w", 7]


async def test_cancelled_call_keeps_order(fast: FastRedis) -> None:
    await fast.execute("SET", "fast:c", "1")
    slow = asyncio.ensure_future(fast.execute("BLPOP", "fast:never", "0.3"))
    await asyncio.sleep(0.05)
    slow.cancel()
    # The next call waits behind the cancelled one and still gets its own reply.
    assert await fast.execute("GET", "fast:c") == b"1"


async def test_password_and_database() -> None:
    server = RedisServer().start()
    with redis.Redis(port=server.port) as admin:
        admin.config_set("requirepass", "s3cret")
    try:
        fast = FastRedis(port=server.port, password="s3cret", db=2)
        await fast.execute("SET", "k", "in-db-2")
        async with aioredis.Redis(port=server.port, password="s3cret", db=2) as r:
            assert await r.get("k") == b"in-db-2"
        await fast.aclose()
        wrong = FastRedis(port=server.port, password="nope")
        with pytest.raises(exceptions.AuthenticationError):
            await wrong.execute("PING")
        await wrong.aclose()
    finally:
        server.stop()
        server.cleanup()


async def test_lost_connection_fails_calls_and_reconnects() -> None:
    server = RedisServer().start()
    fast = FastRedis(port=server.port, connect_timeout=0.5)
    try:
        assert await fast.execute("PING") == b"PONG"
        waiting = asyncio.ensure_future(fast.execute("BLPOP", "q", "5"))
        await asyncio.sleep(0.1)
        server.stop(kill=True)
        with pytest.raises(exceptions.ConnectionError, match="lost"):
            await waiting
        with pytest.raises(exceptions.ConnectionError, match="Error connecting"):
            await fast.execute("PING")
        server.start()
        assert await fast.execute("PING") == b"PONG"
    finally:
        await fast.aclose()
        server.stop()
        server.cleanup()


async def test_overdue_reply_times_out(real_redis: aioredis.Redis, redis_url: str) -> None:
    fast = FastRedis.from_url(redis_url, reply_timeout=0.3)
    assert fast is not None
    try:
        await fast.execute("PING")
        await real_redis.execute_command("CLIENT", "PAUSE", "2500", "ALL")
        try:
            with pytest.raises(exceptions.TimeoutError, match=r"no reply for 0\.3s"):
                await fast.execute("PING")
        finally:
            await real_redis.execute_command("CLIENT", "UNPAUSE")
        assert await fast.execute("PING") == b"PONG"  # a new connection
    finally:
        await fast.aclose()


def test_under_uvloop(redis_url: str) -> None:
    """The frontend runs on uvloop (its transports are not asyncio.Transport objects)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        fast = FastRedis.from_url(redis_url)
        assert fast is not None
        try:
            replies = await asyncio.gather(*(fast.execute("INCR", "fast:uv") for _ in range(100)))
            assert replies == list(range(1, 101))
            assert await fast.script("return ARGV[1]")(args=["x"]) == b"x"
        finally:
            await fast.aclose()

    uvloop.run(scenario())


async def test_connect_timeout() -> None:
    """A server that accepts but never answers (here: to AUTH) fails the call in time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        fast = FastRedis(port=silent.getsockname()[1], password="x", connect_timeout=0.3)
        with pytest.raises(exceptions.ConnectionError, match="timed out"):
            await asyncio.wait_for(fast.execute("PING"), 5)
        await fast.aclose()


async def test_refusals_raise_what_redis_py_raises() -> None:
    """Out of memory, a read-only replica and a replica without its primary: the same
    classes (and codes) as redis-py's, for plain commands and inside scripts."""
    server, primary = RedisServer().start(), RedisServer().start()
    fast = FastRedis(port=server.port)
    slow = aioredis.Redis(port=server.port)
    write = "return redis.call('SET', KEYS[1], ARGV[1])"
    try:
        await slow.config_set("maxmemory", "1")
        for call in (fast.execute("SET", "k", "v"), fast.script(write)(keys=["k"], args=["v"])):
            with pytest.raises(exceptions.OutOfMemoryError) as oom:
                await call
            assert oom.value.status_code == "OOM"
        with pytest.raises(exceptions.OutOfMemoryError):
            await slow.register_script(write)(keys=["k"], args=["v"])
        await slow.config_set("maxmemory", "0")

        await slow.replicaof("127.0.0.1", primary.port)
        for _ in range(200):
            if (await slow.info("replication")).get("master_link_status") == "up":
                break
            await asyncio.sleep(0.05)
        with pytest.raises(exceptions.ReadOnlyError) as readonly:
            await fast.script(write)(keys=["k"], args=["v"])
        assert readonly.value.status_code == "READONLY"
        primary.cleanup()
        await slow.config_set("replica-serve-stale-data", "no")
        with pytest.raises(exceptions.MasterDownError) as down:
            await fast.execute("GET", "k")
        assert down.value.status_code == "MASTERDOWN"
        with pytest.raises(exceptions.MasterDownError):
            await slow.get("k")
    finally:
        await fast.aclose()
        await slow.aclose()
        primary.cleanup()
        server.cleanup()


async def test_follows_the_resolved_master_after_it_turns_replica() -> None:
    """Sentinel failover, reduced to its two facts: the server the client talks to
    becomes a replica (READONLY), and `resolve` now names another. The script that hit
    READONLY ran nowhere and is retried once on the new master; later calls stay there."""
    old, new = RedisServer().start(), RedisServer().start()
    master = {"port": old.port}

    async def resolve() -> tuple[str, int]:
        return "127.0.0.1", master["port"]

    fast = FastRedis(resolve=resolve, where="the master of m (sentinel)")
    incr = fast.script("return redis.call('INCR', KEYS[1])")
    try:
        assert await incr(keys=["n"]) == 1
        assert fast.port == old.port
        # The old master follows the new one (as Sentinel reconfigures it) ...
        with redis.Redis(port=old.port) as r:
            r.replicaof("127.0.0.1", new.port)
        master["port"] = new.port
        # ... and our connection to it still stands: the call gets READONLY there.
        assert await incr(keys=["n"]) == 1  # the new master had no "n": written there
        assert fast.port == new.port
        assert await fast.execute("GET", "n") == b"1"
        with redis.Redis(port=new.port) as r:
            assert r.get("n") == b"1"
        # A plain command is not retried: READONLY reaches the caller, and the
        # connection is dropped so the next call resolves again.
        with redis.Redis(port=new.port) as r:
            r.replicaof("127.0.0.1", old.port)
        master["port"] = old.port
        with pytest.raises(exceptions.ReadOnlyError):
            await fast.execute("SET", "k", "v")
        with redis.Redis(port=old.port) as r:
            r.replicaof("no", "one")
        assert await fast.execute("SET", "k", "v") == b"OK"
        assert fast.port == old.port
    finally:
        await fast.aclose()
        old.cleanup()
        new.cleanup()


async def test_resolver_failure_is_a_connection_error() -> None:
    """No sentinel knows a master: the call fails like a refused connection
    (UNAVAILABLE), naming where it tried."""

    async def resolve() -> tuple[str, int]:
        raise exceptions.ConnectionError("No master found for 'm'")

    fast = FastRedis(resolve=resolve, where="the master of m (sentinel)")
    with pytest.raises(exceptions.ConnectionError, match="No master found for 'm'"):
        await fast.execute("PING")
    await fast.aclose()


LIBRARY = """#!lua name=fasttest
redis.register_function('fasttest_echo', function(keys, args)
  return {keys[1], args[1], 'fcall'}
end)
"""
FALLBACK = "return {KEYS[1], ARGV[1], 'script'}"


async def test_functions_load_on_first_call_and_after_a_flush(
    real_redis: aioredis.Redis, fast: FastRedis
) -> None:
    """FCALL finds no function on a new server (or after FUNCTION FLUSH, a restart without
    persistence): the library is loaded and the call retried, once."""
    await real_redis.config_resetstat()
    echo = fast.function(LIBRARY, "fasttest_echo", FALLBACK)
    assert await echo(keys=["k"], args=[b"v"]) == [b"k", b"v", b"fcall"]
    assert fast.functions is True
    await real_redis.function_flush()
    assert await echo(keys=["k"], args=[b"w"]) == [b"k", b"w", b"fcall"]
    stats = await real_redis.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == 4  # two found nothing, two ran
    assert "cmdstat_evalsha" not in stats


async def test_functions_fall_back_to_scripts_without_fcall(redis_url: str) -> None:
    """An ACL user that may run scripts but not functions (NOPERM) gets the same
    transition as a script, decided once per client."""
    admin = aioredis.from_url(redis_url)
    await admin.acl_setuser(
        "noscripts", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-fcall", "-function"],
    )  # fmt: skip
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    client = FastRedis(host=host, port=int(port), username="noscripts", password="pw")
    try:
        echo = client.function(LIBRARY, "fasttest_echo", FALLBACK)
        assert await echo(keys=["k"], args=[b"v"]) == [b"k", b"v", b"script"]
        assert client.functions is False
        assert await echo(keys=["k"], args=[b"v"]) == [b"k", b"v", b"script"]
    finally:
        await client.aclose()
        await admin.acl_deluser("noscripts")
        await admin.aclose()
