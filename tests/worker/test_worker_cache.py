"""The local input cache: LRU eviction within its size, pins, rebuilt after restart."""

# ruff: noqa: ASYNC230, ASYNC240  (tiny local file reads in test assertions)

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest
from worker_fakes import FakeScheduler, FakeStorage, start_server

from redbarn.errors import FailedPrecondition
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cache import LocalCache, Want
from redbarn.worker.cas import CasClient, Scope

SCOPE = Scope("", re_pb2.DigestFunction.SHA256)


async def test_lru_eviction_pins_and_restart(tmp_path: Path) -> None:
    storage = FakeStorage()
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        cas = CasClient(channel)
        a, b, c = (Want(storage.put(bytes([i]) * 1000), False) for i in range(3))
        cache = LocalCache(str(tmp_path / "c"), 2500)
        for w in (a, b):
            cache.unpin(await cache.ensure(cas, SCOPE, [w]))
        cache.unpin(await cache.ensure(cas, SCOPE, [a]))  # a is now the most recent
        cache.unpin(await cache.ensure(cas, SCOPE, [c]))  # evicts b
        assert os.path.exists(cache.path(SCOPE, a))
        assert not os.path.exists(cache.path(SCOPE, b))
        assert cache.total_bytes == 2000 and cache.evictions == 1
        # Pinned entries survive even when over budget.
        pinned = await cache.ensure(cas, SCOPE, [a, c])
        cache.unpin(await cache.ensure(cas, SCOPE, [b]))
        assert all(os.path.exists(p) for p in pinned)
        cache.unpin(pinned)
        # An executable copy is separate and made locally from the plain one.
        reads = storage.calls["BatchReadBlobs"]
        exe = Want(a.digest, True)
        cache.unpin(await cache.ensure(cas, SCOPE, [exe]))
        assert storage.calls["BatchReadBlobs"] == reads
        assert os.access(cache.path(SCOPE, exe), os.X_OK)
        assert not os.access(cache.path(SCOPE, a), os.X_OK)
        # A second process may not share it; a restart rebuilds the index.
        with pytest.raises(FailedPrecondition):
            LocalCache(str(tmp_path / "c"), 2500)
        files, total = len(cache), cache.total_bytes
        cache.close()
        again = LocalCache(str(tmp_path / "c"), 2500)
        assert (len(again), again.total_bytes) == (files, total)
        again.close()
    finally:
        await channel.close()
        await server.stop(None)


async def test_corrupt_blob_is_rejected(tmp_path: Path) -> None:
    storage = FakeStorage()
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        d = storage.put(b"genuine")
        storage.blobs[f"{d.hash}-{d.size_bytes}"] = b"forged!"
        cache = LocalCache(str(tmp_path / "c"), 1 << 20)
        with pytest.raises(Exception, match="has contents with digest"):
            await cache.ensure(CasClient(channel), SCOPE, [Want(d, False)])
        assert len(cache) == 0
        cache.close()
    finally:
        await channel.close()
        await server.stop(None)


async def test_shared_fetch_survives_the_owner_being_cancelled(tmp_path: Path) -> None:
    storage = FakeStorage()
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        cas = CasClient(channel)
        want = Want(storage.put(b"shared" * 1000), False)
        cache = LocalCache(str(tmp_path / "c"), 1 << 20)
        first = asyncio.ensure_future(cache.ensure(cas, SCOPE, [want]))
        await asyncio.sleep(0)  # first now owns the download
        second = asyncio.ensure_future(cache.ensure(cas, SCOPE, [want]))
        await asyncio.sleep(0)
        first.cancel()
        paths = await asyncio.wait_for(second, 10)
        with open(paths[0], "rb") as f:
            assert f.read() == b"shared" * 1000
        cache.unpin(paths)
        cache.close()
    finally:
        await channel.close()
        await server.stop(None)


def test_restart_drops_truncated_entries(tmp_path: Path) -> None:
    cache = LocalCache(str(tmp_path / "c"), 1 << 20)
    cache.close()
    shard = tmp_path / "c" / "plain" / "sha256" / "ab"
    shard.mkdir(parents=True)
    (shard / ("ab" * 32 + "-10")).write_bytes(b"short")
    (shard / ("ab" * 31 + "cd-5")).write_bytes(b"whole")
    again = LocalCache(str(tmp_path / "c"), 1 << 20)
    assert (len(again), again.total_bytes) == (1, 5)
    assert sorted(os.listdir(shard)) == ["ab" * 31 + "cd-5"]
    again.close()
