"""Bounded input roots (issue 16 item 4): an input root is measured per distinct
Directory before anything is built, and one over a limit fails the action with
FAILED_PRECONDITION naming the limit; a real worker survives a tree bomb."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from bounded_setup import peak_rss, real_workers
from google.rpc import code_pb2
from worker_fakes import FakeScheduler, FakeStorage, Tree, digest, start_server

from redbarn.errors import DeadlineExceeded, FailedPrecondition
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker import inputs
from redbarn.worker.cache import LocalCache
from redbarn.worker.cas import CasClient, Scope
from redbarn.worker.inputs import InputLimits

SCOPE = Scope("", re_pb2.DigestFunction.SHA256)
MiB = 1 << 20


def bomb(storage: FakeStorage, depth: int, content: bytes = b"bomb") -> re_pb2.Digest:
    """An input root whose every directory lists the same child twice, `depth` levels
    down to one file: depth+1 blobs that expand to 2**depth files."""
    d = storage.put_message(
        re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=storage.put(content))])
    )
    for _ in range(depth):
        d = storage.put_message(
            re_pb2.Directory(
                directories=[
                    re_pb2.DirectoryNode(name="a", digest=d),
                    re_pb2.DirectoryNode(name="b", digest=d),
                ]
            )
        )
    return d


def wide(storage: FakeStorage, dirs: int, files_per_dir: int, size: int = 100) -> re_pb2.Digest:
    """`dirs` distinct directories of `files_per_dir` files each (digests only: the
    file blobs are not stored, measuring needs none of them)."""
    root = re_pb2.Directory()
    for i in range(dirs):
        sub = re_pb2.Directory(
            files=[
                re_pb2.FileNode(
                    name=f"f{j:05d}",
                    digest=digest(b"%d" % (i * files_per_dir + j)),
                )
                for j in range(files_per_dir)
            ]
        )
        for f in sub.files:
            f.digest.size_bytes = size
        root.directories.add(name=f"d{i:04d}", digest=storage.put_message(sub))
    return storage.put_message(root)


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


async def test_bomb_is_measured_without_expanding_it(
    cas: tuple[FakeStorage, CasClient],
) -> None:
    storage, client = cas
    root = bomb(storage, 30)
    with pytest.raises(FailedPrecondition) as caught:
        await inputs.fetch_tree(client, SCOPE, root)
    assert caught.value.message == (
        "Input root has 1073741824 files, over --max-input-files 1000000"
    )
    assert caught.value.missing == ()
    assert storage.calls["BatchReadBlobs"] == 31  # one per level, each Directory once


async def test_measure_counts_the_expanded_tree(cas: tuple[FakeStorage, CasClient]) -> None:
    storage, client = cas
    root = bomb(storage, 40, b"12345")
    parsed, _paths, _read = await inputs._fetch_directories(
        client, SCOPE, root, None, InputLimits()
    )
    size = inputs.measure(parsed, f"{root.hash}-{root.size_bytes}")
    assert size == inputs.TreeSize(files=2**40, directories=2**41 - 2, depth=40, bytes=5 * 2**40)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (InputLimits(files=255), "Input root has 256 files, over --max-input-files 255"),
        (
            InputLimits(directories=509),
            "Input root has 510 directories, over --max-input-directories 509",
        ),
        (
            InputLimits(depth=7),
            "Input root has directories nested 8 deep, over --max-input-depth 7",
        ),
        (
            InputLimits(bytes=1000),
            "Input root has 1024 bytes of files, over --max-input-bytes 1000",
        ),
    ],
)
async def test_each_limit_is_named(
    cas: tuple[FakeStorage, CasClient], limits: InputLimits, message: str
) -> None:
    storage, client = cas
    root = bomb(storage, 8, b"four")  # 256 files of 4 bytes, 510 directories, depth 8
    with pytest.raises(FailedPrecondition) as caught:
        await inputs.fetch_tree(client, SCOPE, root, limits=limits)
    assert caught.value.message == message
    exact = InputLimits(files=256, directories=510, depth=8, bytes=1024)
    tree = await inputs.fetch_tree(client, SCOPE, root, limits=exact)
    assert len(tree.files) == 256 and len(tree.directories) == 510


async def test_a_deep_chain_is_refused_before_it_is_all_fetched(
    cas: tuple[FakeStorage, CasClient],
) -> None:
    storage, client = cas
    d = storage.put_message(re_pb2.Directory())
    for i in range(300):
        d = storage.put_message(
            re_pb2.Directory(directories=[re_pb2.DirectoryNode(name=f"l{i}", digest=d)])
        )
    with pytest.raises(FailedPrecondition) as caught:
        await inputs.fetch_tree(client, SCOPE, d)
    assert caught.value.message == (
        "Input root has directories nested 257 deep, over --max-input-depth 256"
    )
    assert storage.calls["BatchReadBlobs"] == 257


async def test_hundred_thousand_inputs_are_within_the_defaults(
    cas: tuple[FakeStorage, CasClient],
) -> None:
    storage, client = cas
    root = wide(storage, 100, 1000)
    tree = await inputs.fetch_tree(client, SCOPE, root)
    assert len(tree.files) == 100_000 and len(tree.directories) == 100
    assert tree.files[0][0] == "d0000/f00000" and tree.files[-1][0] == "d0099/f00999"


class _Stalling(FakeStorage):
    async def BatchReadBlobs(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.sleep(30)
        return await super().BatchReadBlobs(request, context)


async def test_input_fetch_has_a_deadline(tmp_path: Path) -> None:
    storage = _Stalling()
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    cache = LocalCache(str(tmp_path / "cache"), 1 << 30)
    try:
        root = bomb(storage, 2)
        (tmp_path / "root").mkdir()
        with pytest.raises(DeadlineExceeded) as caught:
            await inputs.materialise(
                CasClient(channel), cache, SCOPE, root, str(tmp_path / "root"),
                limits=InputLimits(fetch_timeout=0.3),
            )  # fmt: skip
        assert caught.value.message == ("Input root not fetched within --input-fetch-timeout 300ms")
    finally:
        cache.close()
        await channel.close()
        await server.stop(None)


@pytest.mark.system
async def test_real_worker_survives_a_depth_30_tree_bomb(redis_url: str, tmp_path: Path) -> None:
    async with real_workers(redis_url, tmp_path) as setup:
        proc = await setup.start_worker("w1")
        response = await setup.run(["true"], root=bomb(setup.storage, 30))
        assert response.status.code == code_pb2.FAILED_PRECONDITION
        assert response.status.message == (
            "Failed to obtain input root: "
            "Input root has 1073741824 files, over --max-input-files 1000000"
        )
        assert not response.status.details  # no blob is missing
        assert peak_rss(proc.pid) < 300 * MiB
        # The same worker process serves the next action, with a real input tree.
        tree = Tree(files={f"src/d{i % 20}/f{i}": (b"%d\n" % i, False) for i in range(2000)})
        response = await setup.run(["sh", "-c", "cat src/d7/f1987; find src -type f | wc -l"],
                                   tree=tree)  # fmt: skip
        assert response.status.code == code_pb2.OK, response.status
        assert response.result.exit_code == 0
        assert setup.storage.get(response.result.stdout_digest) == b"1987\n2000\n"
        assert proc.returncode is None
