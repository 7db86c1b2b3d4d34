"""RedisBlobStore and RedisActionCache directly: key layout, TTLs, chunks, staged uploads.

Runs on the private redis-server and on fakeredis (`any_redis`).
"""

from __future__ import annotations

import os

import pytest
import redis.asyncio as aioredis

from redbarn.digests import Digest
from redbarn.errors import Aborted, InvalidArgument, NotFound, OutOfRange
from redbarn.frontend.storage.redis import (
    RedisActionCache,
    RedisBlobStore,
    ac_key,
    cas_chunk_key,
    cas_key,
    upload_chunk_key,
    upload_key,
)
from redbarn.proto import remote_execution_pb2 as re_pb2

CHUNK = 64 * 1024
DAY = 24 * 3600


@pytest.fixture(params=["script", "pipeline"])
def store(request: pytest.FixtureRequest, any_redis: aioredis.Redis) -> RedisBlobStore:
    """FindMissing through touch_blobs.lua, and through the cluster-safe pipeline."""
    return RedisBlobStore(
        any_redis, ttl=DAY, upload_ttl=600, chunk_size=CHUNK, flush_size=16 * 1024,
        use_scripts=request.param == "script",
    )  # fmt: skip


async def keys(client: aioredis.Redis) -> list[str]:
    return sorted(k.decode() for k in await client.keys("redbarn:*"))


async def test_small_blob_is_one_key_with_ttl(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    d = Digest.of(b"small")
    assert await store.put_many("", [(d, b"small")]) == [None]
    assert await keys(any_redis) == [f"redbarn:v1:cas:{{{d.hash}}}:5"]
    assert await any_redis.get(cas_key(d)) == b"small"
    assert 0 < await any_redis.ttl(cas_key(d)) <= DAY


async def test_large_blob_is_chunked_under_one_hash_tag(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    data = os.urandom(3 * CHUNK + 10)
    d = Digest.of(data)
    await store.put_many("", [(d, data)])
    assert await keys(any_redis) == sorted([cas_key(d)] + [cas_chunk_key(d, i) for i in range(4)])
    assert all(f"{{{d.hash}}}" in k for k in await keys(any_redis))
    assert await any_redis.get(cas_key(d)) == f"redbarn-chunked:v1:{CHUNK}:4".encode()
    assert max([await any_redis.strlen(k) for k in await keys(any_redis)]) == CHUNK
    assert await store.get("", d) == data
    got = b"".join([p async for p in store.read("", d, CHUNK - 5, CHUNK + 10)])
    assert got == data[CHUNK - 5 : 2 * CHUNK + 5]


async def test_use_refreshes_ttl(store: RedisBlobStore, any_redis: aioredis.Redis) -> None:
    data = os.urandom(2 * CHUNK)
    d = Digest.of(data)
    await store.put_many("", [(d, data)])
    for k in await keys(any_redis):
        await any_redis.expire(k, 100)
    assert await store.find_missing("", [d]) == []
    assert min([await any_redis.ttl(k) for k in await keys(any_redis)]) > 100
    for k in await keys(any_redis):
        await any_redis.expire(k, 100)
    await store.get("", d)
    assert min([await any_redis.ttl(k) for k in await keys(any_redis)]) > 100


async def test_lost_chunk_makes_the_blob_missing(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    data = os.urandom(2 * CHUNK + 1)
    d = Digest.of(data)
    await store.put_many("", [(d, data)])
    await any_redis.delete(cas_chunk_key(d, 1))
    assert await store.find_missing("", [d]) == [d]
    with pytest.raises(NotFound):
        [p async for p in store.read("", d)]
    assert await any_redis.exists(cas_key(d)) == 0  # the manifest went with it


async def test_read_bounds(store: RedisBlobStore) -> None:
    d = Digest.of(b"abc")
    await store.put_many("", [(d, b"abc")])
    assert [p async for p in store.read("", d, 3)] == []
    with pytest.raises(OutOfRange):
        [p async for p in store.read("", d, 4)]
    with pytest.raises(NotFound):
        [p async for p in store.read("", Digest.of(b"zzz"))]


async def test_empty_blob_is_always_present(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    empty = Digest.of(b"")
    assert await store.find_missing("", [empty]) == []
    assert await store.get_many("", [empty]) == [b""]
    assert (await store.open_write("", empty, "u")).complete
    assert await keys(any_redis) == []


async def test_put_checks_each_blob(store: RedisBlobStore) -> None:
    good, bad = Digest.of(b"good"), Digest.of(b"bad")
    results = await store.put_many("", [(good, b"good"), (bad, b"bax")])
    assert results[0] is None and isinstance(results[1], InvalidArgument)
    assert await store.find_missing("", [good, bad]) == [bad]


async def test_staged_upload_keys_then_commit(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    data = os.urandom(2 * CHUNK + 100)
    d = Digest.of(data)
    session = await store.open_write("", d, "u1")
    await session.write(0, data[: CHUNK + 50])
    await session.close()
    assert await any_redis.hget(upload_key(d, "u1"), "committed") == str(CHUNK + 50).encode()
    assert await any_redis.strlen(upload_chunk_key(d, "u1", 0)) == CHUNK
    assert await any_redis.strlen(upload_chunk_key(d, "u1", 1)) == 50
    assert 0 < await any_redis.ttl(upload_key(d, "u1")) <= 600
    assert await store.write_status("", d, "u1") == (CHUNK + 50, False)

    resumed = await store.open_write("", d, "u1")  # rebuilds the hash from the staged prefix
    assert resumed.committed_size == CHUNK + 50
    await resumed.write(CHUNK + 50, data[CHUNK + 50 :])
    assert await resumed.finish() == len(data)
    assert await keys(any_redis) == sorted([cas_key(d)] + [cas_chunk_key(d, i) for i in range(3)])
    assert await store.get("", d) == data
    assert await store.write_status("", d, "u1") == (len(data), True)


async def test_two_streams_on_one_upload_cannot_interleave(store: RedisBlobStore) -> None:
    data = os.urandom(100 * 1024)
    d = Digest.of(data)
    a = await store.open_write("", d, "same")
    b = await store.open_write("", d, "same")
    await a.write(0, data[: 20 * 1024])  # flushed: over flush_size
    with pytest.raises(Aborted):
        await b.write(0, data[: 20 * 1024])


async def test_bad_hash_drops_the_upload(store: RedisBlobStore, any_redis: aioredis.Redis) -> None:
    d = Digest(Digest.of(b"x" * 10).hash, 10)
    session = await store.open_write("", d, "u")
    await session.write(0, b"y" * 10)
    with pytest.raises(InvalidArgument):
        await session.finish()
    assert await keys(any_redis) == []


async def test_action_cache_keys_by_instance(any_redis: aioredis.Redis) -> None:
    ac = RedisActionCache(any_redis, ttl=DAY)
    action = Digest.of(b"action")
    result = re_pb2.ActionResult(exit_code=3)
    await ac.put("a/b", action, result)
    assert (
        await keys(any_redis)
        == [ac_key("a/b", action)]
        == [f"redbarn:v1:ac:{{{action.hash}}}:6:a/b"]
    )
    assert await ac.get("a/b", action) == result
    with pytest.raises(NotFound):
        await ac.get("other", action)


async def test_find_missing_many_in_batches(store: RedisBlobStore) -> None:
    blobs = [os.urandom(8) for _ in range(2500)] + [os.urandom(CHUNK + 1)]
    digests = [Digest.of(b) for b in blobs]
    stored = list(zip(digests, blobs, strict=True))[::2]
    await store.put_many("", stored)
    stored_set = {d for d, _ in stored}
    assert await store.find_missing("", digests) == [d for d in digests if d not in stored_set]


async def test_upload_is_never_held_whole(real_redis: aioredis.Redis) -> None:
    """20 MiB through a write session: peak Python allocation stays near the flush size.

    Real Redis only: fakeredis keeps the stored data in this process.
    """
    import hashlib
    import tracemalloc

    store = RedisBlobStore(real_redis, chunk_size=1 << 20)

    piece = 64 * 1024
    total = 20 << 20
    hasher = hashlib.sha256()
    for i in range(total // piece):
        hasher.update(i.to_bytes(4, "big") * (piece // 4))
    d = Digest(hasher.hexdigest(), total)
    session = await store.open_write("", d, "big")
    tracemalloc.start()
    try:
        for i in range(total // piece):
            await session.write(i * piece, i.to_bytes(4, "big") * (piece // 4))
        assert await session.finish() == total
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes"
    assert await store.find_missing("", [d]) == []
