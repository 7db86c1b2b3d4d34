"""No action can change what a later action reads under the same digest (issue 16
item 2): inputs are copies, cache entries are sealed and checked on every reuse, and
entries found on disk after a restart are re-hashed before their first use."""

# ruff: noqa: ASYNC240  (small local files in test set-up and assertions)

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from bounded_setup import real_workers
from google.rpc import code_pb2
from worker_fakes import FakeScheduler, FakeStorage, Tree, start_server

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker import inputs
from redbarn.worker.cache import LocalCache, Want
from redbarn.worker.cas import CasClient, Scope

SCOPE = Scope("", re_pb2.DigestFunction.SHA256)
ORIGINAL = b"#!/bin/sh\necho original\n"
POISON = b"#!/bin/sh\necho poisoned\n"  # same size: a rebuild by name and size keeps it
assert len(ORIGINAL) == len(POISON)


@pytest.fixture
async def cas() -> AsyncIterator[tuple[FakeStorage, CasClient]]:
    storage = FakeStorage()
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield storage, CasClient(channel)
    finally:
        await channel.close()
        await server.stop(None)


def rewrite_in_place(path: str, data: bytes) -> None:
    """What an action running as the worker's user can do to a cache file: make it
    writable, overwrite it, and put its mode and mtime back."""
    st = os.stat(path)
    os.chmod(path, 0o755)
    with open(path, "r+b") as f:
        f.write(data)
    os.chmod(path, st.st_mode & 0o7777)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def materialise(cas: CasClient, cache: LocalCache, want: Want, dest: Path) -> bytes:
    dest.mkdir()
    tree = inputs.InputTree(files=[("tool", want)])
    sources = await cache.ensure(cas, SCOPE, [want])
    try:
        inputs.link_tree(tree, str(dest), sources, cache.link_inputs)
    finally:
        cache.unpin(sources)
    return (dest / "tool").read_bytes()


async def test_inputs_are_copies_so_a_rewrite_stays_in_the_build_directory(
    cas: tuple[FakeStorage, CasClient], tmp_path: Path
) -> None:
    storage, client = cas
    want = Want(storage.put(ORIGINAL), True)
    cache = LocalCache(str(tmp_path / "cache"), 1 << 30)
    try:
        assert await materialise(client, cache, want, tmp_path / "a") == ORIGINAL
        tool = tmp_path / "a" / "tool"
        assert os.stat(tool).st_nlink == 1 and os.stat(tool).st_mode & 0o777 == 0o555
        rewrite_in_place(str(tool), POISON)
        assert await materialise(client, cache, want, tmp_path / "b") == ORIGINAL
        assert cache.rejected == 0
    finally:
        cache.close()


async def test_an_altered_entry_is_fetched_again(
    cas: tuple[FakeStorage, CasClient], tmp_path: Path
) -> None:
    storage, client = cas
    want = Want(storage.put(ORIGINAL), True)
    cache = LocalCache(str(tmp_path / "cache"), 1 << 30)
    try:
        assert await materialise(client, cache, want, tmp_path / "a") == ORIGINAL
        reads = storage.calls["BatchReadBlobs"]
        rewrite_in_place(cache.path(SCOPE, want), POISON)
        assert await materialise(client, cache, want, tmp_path / "b") == ORIGINAL
        assert cache.rejected == 1
        assert storage.calls["BatchReadBlobs"] == reads + 1
        assert Path(cache.path(SCOPE, want)).read_bytes() == ORIGINAL
        # The fresh entry is sealed again: the next reuse reads nothing.
        assert await materialise(client, cache, want, tmp_path / "c") == ORIGINAL
        assert storage.calls["BatchReadBlobs"] == reads + 1
    finally:
        cache.close()


async def test_after_a_restart_entries_are_rehashed_before_use(
    cas: tuple[FakeStorage, CasClient], tmp_path: Path
) -> None:
    storage, client = cas
    good = Want(storage.put(b"untouched\n"), False)
    bad = Want(storage.put(ORIGINAL), True)
    cache = LocalCache(str(tmp_path / "cache"), 1 << 30)
    cache.unpin(await cache.ensure(client, SCOPE, [good, bad]))
    cache.close()
    rewrite_in_place(cache.path(SCOPE, bad), POISON)
    again = LocalCache(str(tmp_path / "cache"), 1 << 30)
    try:
        assert len(again) == 2  # name and size still match: only a re-hash tells
        reads = storage.calls["BatchReadBlobs"]
        assert await materialise(client, again, bad, tmp_path / "a") == ORIGINAL
        assert again.rejected == 1 and storage.calls["BatchReadBlobs"] == reads + 1
        paths = await again.ensure(client, SCOPE, [good])
        again.unpin(paths)
        assert again.rejected == 1 and storage.calls["BatchReadBlobs"] == reads + 1
        assert Path(paths[0]).read_bytes() == b"untouched\n"
    finally:
        again.close()


async def test_hardlinks_when_asked_and_the_cache_is_private(
    cas: tuple[FakeStorage, CasClient], tmp_path: Path
) -> None:
    storage, client = cas
    want = Want(storage.put(ORIGINAL), True)
    cache = LocalCache(str(tmp_path / "cache"), 1 << 30, link_inputs=True)
    try:
        assert await materialise(client, cache, want, tmp_path / "a") == ORIGINAL
        linked = os.stat(tmp_path / "a" / "tool")
        assert linked.st_ino == os.stat(cache.path(SCOPE, want)).st_ino
        assert linked.st_uid == os.geteuid() and linked.st_mode & 0o777 == 0o555
        assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700
        # Linking changes ctime, so it is not in the seal; content changes still are.
        assert await materialise(client, cache, want, tmp_path / "b") == ORIGINAL
        assert cache.rejected == 0
        rewrite_in_place(cache.path(SCOPE, want), POISON * 2)
        assert await materialise(client, cache, want, tmp_path / "c") == ORIGINAL
        assert cache.rejected == 1
    finally:
        cache.close()


TOOL = Tree(files={"bin/tool": (ORIGINAL, True)})


@pytest.mark.system
async def test_real_worker_an_action_rewriting_its_input_leaves_the_next_intact(
    redis_url: str, tmp_path: Path
) -> None:
    async with real_workers(redis_url, tmp_path) as setup:
        await setup.start_worker("w1")
        cached = setup.cache_file("w1", setup.storage.put(ORIGINAL), executable=True)
        poison = POISON.decode()
        # Through its own input: the chmod u+w and overwrite.
        first = await setup.run(
            ["sh", "-c", f"chmod u+w bin/tool && printf '{poison}' > bin/tool && bin/tool"],
            tree=TOOL,
        )
        assert first.status.code == code_pb2.OK, first.status
        assert setup.storage.get(first.result.stdout_digest) == b"poisoned\n"
        second = await setup.run(["bin/tool"], tree=TOOL)
        assert setup.storage.get(second.result.stdout_digest) == b"original\n"
        # Through the cache file itself, as the worker's own user can.
        third = await setup.run(
            ["sh", "-c", f"chmod u+w {cached} && printf '{poison}' > {cached} && "
                         f"chmod 555 {cached} && cat {cached}"],
            tree=TOOL,
        )  # fmt: skip
        assert setup.storage.get(third.result.stdout_digest) == POISON
        fourth = await setup.run(["bin/tool"], tree=TOOL)
        assert setup.storage.get(fourth.result.stdout_digest) == b"original\n"
        assert cached.read_bytes() == ORIGINAL


@pytest.mark.system
async def test_real_worker_restart_does_not_trust_an_altered_cache(
    redis_url: str, tmp_path: Path
) -> None:
    async with real_workers(redis_url, tmp_path) as setup:
        await setup.start_worker("w1")
        cached = setup.cache_file("w1", setup.storage.put(ORIGINAL), executable=True)
        poison = POISON.decode()
        first = await setup.run(
            ["sh", "-c", f"chmod u+w {cached} && printf '{poison}' > {cached} && "
                         f"chmod 555 {cached} && touch -r bin/tool {cached}"],
            tree=TOOL,
        )  # fmt: skip
        assert first.status.code == code_pb2.OK, first.status
        assert cached.read_bytes() == POISON
        await setup.stop_worker("w1")
        await setup.start_worker("w1")
        second = await setup.run(["bin/tool"], tree=TOOL)
        assert second.status.code == code_pb2.OK, second.status
        assert setup.storage.get(second.result.stdout_digest) == b"original\n"
        assert cached.read_bytes() == ORIGINAL
