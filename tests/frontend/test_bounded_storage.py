"""Storage work follows the digests of a request, not the sizes they declare.

On the private redis-server: a GetTree level and an Action Cache completeness check
never ask the CAS for more declared bytes at once than their bounds, and refuse sizes
over the limits before reading anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from redbarn.digests import Digest
from redbarn.errors import InvalidArgument, NotFound
from redbarn.frontend.storage.completeness import CompletenessCheckingActionCache
from redbarn.frontend.storage.redis import RedisActionCache, RedisBlobStore
from redbarn.frontend.storage.tree import MAX_READ_BYTES, iter_tree_pages, slices
from redbarn.proto import remote_execution_pb2 as re_pb2

MiB = 1 << 20


class CountingStore(RedisBlobStore):
    """A RedisBlobStore that records the declared bytes of every non-empty get_many."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self.reads: list[int] = []

    async def get_many(self, instance_name: str, digests: Sequence[Digest]) -> list[bytes | None]:
        if digests:
            self.reads.append(sum(d.size_bytes for d in digests))
        return await super().get_many(instance_name, digests)


def test_slices_cut_by_declared_bytes() -> None:
    d = [Digest("ab" * 32, n) for n in (3, 3, 3, 10, 1)]
    assert slices(d, 6) == [d[0:2], d[2:3], d[3:4], d[4:5]]
    assert slices([], 6) == []


async def test_a_wide_tree_level_is_read_in_bounded_slices(real_redis: aioredis.Redis) -> None:
    store = CountingStore(real_redis)
    # 12 sibling directories of ~1 MiB each (a big file list): 12 MiB on one level.
    children = []
    for i in range(12):
        files = [
            re_pb2.FileNode(name=f"f{i}_{j:06}", digest=Digest.of(b"%d" % j).to_proto())
            for j in range(12_000)
        ]
        data = re_pb2.Directory(files=files).SerializeToString()
        d = Digest.of(data)
        await store.put_many("", [(d, data)])
        children.append(re_pb2.DirectoryNode(name=f"d{i}", digest=d.to_proto()))
    root_data = re_pb2.Directory(directories=children).SerializeToString()
    root = Digest.of(root_data)
    await store.put_many("", [(root, root_data)])
    pages = [p async for p, _ in iter_tree_pages(store, "", root, 0, "")]
    assert sum(len(p) for p in pages) == 13
    assert max(store.reads) <= MAX_READ_BYTES
    assert len(store.reads) >= 3


async def test_completeness_check_refuses_big_levels_before_reading(
    real_redis: aioredis.Redis,
) -> None:
    store = CountingStore(real_redis)
    ac = CompletenessCheckingActionCache(
        RedisActionCache(real_redis), store, max_tree_bytes=1 * MiB, max_blob_size=4 * MiB
    )
    action = Digest.of(b"action")
    wide = re_pb2.ActionResult(
        output_directories=[
            re_pb2.OutputDirectory(
                path=f"o{i}", root_directory_digest=Digest.of(os.urandom(8) * 40_000).to_proto()
            )
            for i in range(4)
        ]
    )
    await ac.put("", action, wide)
    with pytest.raises(NotFound, match="too large to check"):
        await ac.get("", action)
    assert store.reads == []  # refused on the declared sizes alone

    huge = Digest("cd" * 32, 5 * MiB)
    over = re_pb2.ActionResult(stdout_digest=huge.to_proto())
    await RedisActionCache(real_redis).put("", action, over)
    with pytest.raises(InvalidArgument, match=f"Blob {huge} is {5 * MiB} bytes in size"):
        await ac.get("", action)
    with pytest.raises(InvalidArgument, match=f"Invalid action result: Blob {huge}"):
        await ac.put("", action, over)
    assert store.reads == []


async def script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(stats.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_batch_scripts_take_at_most_2000_keys_per_call(real_redis: aioredis.Redis) -> None:
    store = RedisBlobStore(real_redis)
    blobs = [os.urandom(16) for _ in range(4500)]
    digests = [Digest.of(b) for b in blobs]
    warm = Digest.of(b"warm")  # loads the scripts (a NOSCRIPT reply counts as a call)
    await store.put_many("", [(warm, b"warm")])
    await store.get_many("", [warm])
    before = await script_calls(real_redis)
    await store.put_many("", list(zip(digests, blobs, strict=True)))
    after_put = await script_calls(real_redis)
    assert await store.find_missing("", digests) == []
    after_find = await script_calls(real_redis)
    assert await store.get_many("", digests) == blobs
    after_get = await script_calls(real_redis)
    # 4500 blobs: three calls of at most 2000 keys each, for every batch operation.
    assert (after_put - before, after_find - after_put, after_get - after_find) == (3, 3, 3)
