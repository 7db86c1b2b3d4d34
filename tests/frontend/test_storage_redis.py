"""RedisBlobStore and RedisActionCache directly: one key per blob, TTLs, chunks, staged uploads.

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
    cas_key,
    upload_key,
)
from redbarn.proto import remote_execution_pb2 as re_pb2

CHUNK = 64 * 1024
DAY = 24 * 3600


@pytest.fixture(params=["script", "pipeline"])
def store(request: pytest.FixtureRequest, any_redis: aioredis.Redis) -> RedisBlobStore:
    """Batches through probe_blobs.lua / put_blobs.lua, and through the cluster-safe pipelines."""
    return RedisBlobStore(
        any_redis, ttl=DAY, upload_ttl=600, chunk_size=CHUNK, use_scripts=request.param == "script"
    )


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


async def test_large_blob_is_one_hash_of_chunks(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    data = os.urandom(3 * CHUNK + 10)
    d = Digest.of(data)
    await store.put_many("", [(d, data)])
    assert await keys(any_redis) == [cas_key(d)]
    assert await any_redis.type(cas_key(d)) == b"hash"
    assert await any_redis.hgetall(cas_key(d)) == {
        b"c0": data[:CHUNK],
        b"c1": data[CHUNK : 2 * CHUNK],
        b"c2": data[2 * CHUNK : 3 * CHUNK],
        b"c3": data[3 * CHUNK :],
    }
    assert 0 < await any_redis.ttl(cas_key(d)) <= DAY
    assert await store.get("", d) == data
    got = b"".join([p async for p in store.read("", d, CHUNK - 5, CHUNK + 10)])
    assert got == data[CHUNK - 5 : 2 * CHUNK + 5]
    assert b"".join([p async for p in store.read("", d, 3 * CHUNK + 3)]) == data[3 * CHUNK + 3 :]


async def test_use_refreshes_ttl(store: RedisBlobStore, any_redis: aioredis.Redis) -> None:
    data = os.urandom(2 * CHUNK)
    d = Digest.of(data)
    await store.put_many("", [(d, data)])
    await any_redis.expire(cas_key(d), 100)
    assert await store.find_missing("", [d]) == []
    assert await any_redis.ttl(cas_key(d)) > 100
    await any_redis.expire(cas_key(d), 100)
    await store.get("", d)
    assert await any_redis.ttl(cas_key(d)) > 100


async def read_all(store: RedisBlobStore, d: Digest) -> bytes:
    return b"".join([p async for p in store.read("", d)])


@pytest.mark.parametrize("field", [b"c0", b"c1", b"c2"])
async def test_lost_chunk_makes_the_blob_missing(
    store: RedisBlobStore, any_redis: aioredis.Redis, field: bytes
) -> None:
    data = os.urandom(2 * CHUNK + 1)
    d = Digest.of(data)
    await store.put_many("", [(d, data)])
    await any_redis.hdel(cas_key(d), field)
    assert await store.find_missing("", [d]) == [d]
    assert await store.get_many("", [d]) == [None]
    with pytest.raises(NotFound, match=f"Blob {d} not found"):
        await read_all(store, d)


async def test_a_value_of_another_size_is_missing(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    """A v1 manifest, a truncated STRING, a HASH with a stray field: never served."""
    big = os.urandom(2 * CHUNK + 7)
    small = b"small blob"
    d_big, d_small, d_stray = Digest.of(big), Digest.of(small), Digest.of(big[:-1])
    await any_redis.set(cas_key(d_big), f"redbarn-chunked:v1:{CHUNK}:3".encode())
    await any_redis.set(cas_key(d_small), small[:-1])
    await any_redis.hset(
        cas_key(d_stray), mapping={"c0": big[:CHUNK], "c1": big[CHUNK : 2 * CHUNK], "x": b"z"}
    )
    digests = [d_big, d_small, d_stray]
    assert await store.find_missing("", digests) == digests
    assert await store.get_many("", digests) == [None, None, None]
    for d in digests:
        with pytest.raises(NotFound):
            await read_all(store, d)
    await store.put_many("", [(d_big, big)])  # overwritten by the next upload
    assert await store.get("", d_big) == big


async def test_blobs_of_another_chunk_size_are_read(any_redis: aioredis.Redis) -> None:
    data = os.urandom(5 * CHUNK + 3)
    d = Digest.of(data)
    small_chunks = RedisBlobStore(any_redis, chunk_size=CHUNK)
    big_chunks = RedisBlobStore(any_redis, chunk_size=2 * CHUNK)
    await small_chunks.put_many("", [(d, data)])
    assert await big_chunks.find_missing("", [d]) == []
    assert await big_chunks.get("", d) == data
    assert b"".join([p async for p in big_chunks.read("", d, CHUNK + 1)]) == data[CHUNK + 1 :]


async def test_declared_size_costs_nothing(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    """A digest of 2^62 bytes is one key to probe, like any other."""
    huge = Digest("ab" * 32, 1 << 62)
    assert await store.find_missing("", [huge]) == [huge]
    assert await store.get_many("", [huge]) == [None]
    assert await store.write_status("", huge, "u") == (0, False)
    required = RedisBlobStore(any_redis).enqueue_check(any_redis, [huge])
    assert required is not None and required.keys == [[cas_key(huge)]]


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


async def test_staged_upload_is_one_hash_renamed_on_commit(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    data = os.urandom(2 * CHUNK + 100)
    d = Digest.of(data)
    session = await store.open_write("", d, "u1")
    await session.write(0, data[: CHUNK + 50])
    await session.close()  # the partial second chunk is staged too
    assert await keys(any_redis) == [upload_key(d, "u1")]
    assert await any_redis.hgetall(upload_key(d, "u1")) == {
        b"committed": str(CHUNK + 50).encode(),
        b"c0": data[:CHUNK],
        b"c1": data[CHUNK : CHUNK + 50],
    }
    assert 0 < await any_redis.ttl(upload_key(d, "u1")) <= 600
    assert await store.write_status("", d, "u1") == (CHUNK + 50, False)
    assert await store.find_missing("", [d]) == [d]

    resumed = await store.open_write("", d, "u1")  # rebuilds the hash from the staged prefix
    assert resumed.committed_size == CHUNK + 50
    await resumed.write(CHUNK + 50, data[CHUNK + 50 :])
    assert await resumed.finish() == len(data)
    assert await keys(any_redis) == [cas_key(d)]
    assert sorted(await any_redis.hkeys(cas_key(d))) == [b"c0", b"c1", b"c2"]
    assert 3600 < await any_redis.ttl(cas_key(d)) <= DAY
    assert await store.get("", d) == data
    assert await store.write_status("", d, "u1") == (len(data), True)


@pytest.mark.parametrize("size", [100, CHUNK, 2 * CHUNK])
async def test_upload_resumes_at_every_boundary(
    store: RedisBlobStore, any_redis: aioredis.Redis, size: int
) -> None:
    """Close after every piece, resume in a new session: the blob arrives whole."""
    data = os.urandom(size)
    d = Digest.of(data)
    offset, piece = 0, max(1, size // 3)
    while offset < size:
        session = await store.open_write("", d, "r")
        assert session.committed_size == offset
        await session.write(offset, data[offset : offset + piece])
        offset = min(size, offset + piece)
        if offset < size:
            await session.close()
    assert await session.finish() == size
    assert await keys(any_redis) == [cas_key(d)]
    assert await store.get("", d) == data
    expected_type = b"string" if size <= CHUNK else b"hash"
    assert await any_redis.type(cas_key(d)) == expected_type


async def test_two_streams_on_one_upload_cannot_interleave(store: RedisBlobStore) -> None:
    data = os.urandom(3 * CHUNK)
    d = Digest.of(data)
    a = await store.open_write("", d, "same")
    b = await store.open_write("", d, "same")
    await a.write(0, data[:CHUNK])
    await a.write(CHUNK, data[CHUNK : CHUNK + 10])  # the first chunk is staged now
    with pytest.raises(Aborted, match=f"{CHUNK} bytes committed"):
        await b.write(0, data[: CHUNK + 10])


async def test_commit_after_the_upload_expired_is_aborted(
    store: RedisBlobStore, any_redis: aioredis.Redis
) -> None:
    data = os.urandom(2 * CHUNK)
    d = Digest.of(data)
    session = await store.open_write("", d, "gone")
    await session.write(0, data[: CHUNK + 1])
    await any_redis.delete(upload_key(d, "gone"))
    await session.write(CHUNK + 1, data[CHUNK + 1 :])
    with pytest.raises(Aborted, match="restart from QueryWriteStatus"):
        await session.finish()
    assert await keys(any_redis) == []


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
    """20 MiB through a write session: peak Python allocation stays near the chunk size.

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


def test_a_blobs_keys_share_one_cluster_slot() -> None:
    """commit_upload.lua RENAMEs the upload key to the CAS key: one slot on a cluster."""
    from redis.crc import key_slot

    d = Digest.of(b"slot")
    slots = {key_slot(k.encode()) for k in (cas_key(d), upload_key(d, "u"), upload_key(d, "v"))}
    assert len(slots) == 1


async def test_small_reads_over_the_pipelined_connection(
    real_redis: aioredis.Redis, redis_url: str
) -> None:
    """Reads under 64 KiB go through FastRedis: STRING values, HASH chunk sizes and
    misses come back as they do through redis-py."""
    from redbarn.runtime.fastredis import FastRedis

    fast = FastRedis.from_url(redis_url)
    assert fast is not None
    try:
        store = RedisBlobStore(real_redis, chunk_size=1024, fast=fast)
        small, chunked = b"tiny", os.urandom(2500)
        d_small, d_chunked, d_absent = Digest.of(small), Digest.of(chunked), Digest.of(b"no")
        await store.put_many("", [(d_small, small), (d_chunked, chunked)])
        assert await real_redis.type(cas_key(d_chunked)) == b"hash"
        assert await store.get_many("", [d_small, d_chunked, d_absent]) == [small, chunked, None]
        assert await store.find_missing("", [d_small, d_chunked, d_absent]) == [d_absent]
    finally:
        await fast.aclose()
