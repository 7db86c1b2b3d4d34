"""Malicious inputs and outputs: INVALID_ARGUMENT, and nothing written outside the
build directory."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2
from worker_fakes import Cluster, Tree, outside_snapshot, upload_tree

from redbarn.proto import remote_execution_pb2 as re_pb2


def _raw_root(cluster: Cluster, build: object) -> re_pb2.Digest:
    """A root Directory built by hand (names the tree helper could not express)."""
    s = cluster.storage
    payload = s.put(b"owned\n")
    inner = s.put_message(re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=payload)]))
    d = re_pb2.Directory()
    kind, names = build  # type: ignore[misc]
    for name in names:
        if kind == "file":
            d.files.add(name=name, digest=payload)
        elif kind == "dir":
            d.directories.add(name=name, digest=inner)
        elif kind == "mixed":
            d.files.add(name=name, digest=payload)
            d.directories.add(name=name, digest=inner)
    return s.put_message(d)


BAD_NAMES = [
    ("file", ["."]),
    ("file", [".."]),
    ("file", [""]),
    ("file", ["a/b"]),
    ("file", ["../../../escaped"]),
    ("dir", [".."]),
    ("dir", ["x/../.."]),
    ("file", ["dup", "dup"]),
    ("mixed", ["dup"]),
]


@pytest.mark.parametrize("build", BAD_NAMES, ids=[f"{k}:{n}" for k, n in BAD_NAMES])
async def test_bad_input_names(cluster: Cluster, build: tuple[str, list[str]]) -> None:
    before = outside_snapshot(cluster.tmp)
    root = _raw_root(cluster, build)
    resp = await cluster.run(["sh", "-c", "touch ran"], root=root, output_paths=["ran"])
    assert resp.status.code == code_pb2.INVALID_ARGUMENT, resp.status
    assert not resp.result.output_files
    assert outside_snapshot(cluster.tmp) == before
    assert cluster.build_dirs() == []


BAD_SYMLINKS = {
    "absolute": {"l": "/etc/passwd"},
    "dotdot": {"l": "../outside"},
    "deep dotdot": {"d/e/l": "../../../outside"},
    "through a symlink": {"b": ".", "a": "b/.."},
    "through a nested symlink": {"d/up": "..", "d/x": "up/.."},
    "empty": {"l": ""},
}


@pytest.mark.parametrize("links", BAD_SYMLINKS.values(), ids=BAD_SYMLINKS.keys())
async def test_escaping_symlinks(cluster: Cluster, links: dict[str, str]) -> None:
    before = outside_snapshot(cluster.tmp)
    tree = Tree(files={"d/e/keep": (b"k", False)}, symlinks=links)
    resp = await cluster.run(["true"], tree=tree)
    assert resp.status.code == code_pb2.INVALID_ARGUMENT, resp.status
    assert "escapes the input root" in resp.status.message
    assert outside_snapshot(cluster.tmp) == before


async def test_symlinks_inside_root_are_fine(cluster: Cluster) -> None:
    tree = Tree(
        files={"d/e/keep": (b"k", False)},
        symlinks={"d/up": "..", "d/e/l": "../../d/e/keep", "dangling": "nothing/here"},
    )
    resp = await cluster.run(["cat", "d/e/l"], tree=tree)
    assert resp.status.code == code_pb2.OK, resp.status
    assert cluster.storage.get(resp.result.stdout_digest) == b"k"


BAD_OUTPUTS = {
    "absolute path": {"output_paths": ["/tmp/redbarn-escape"]},
    "dotdot path": {"output_paths": ["../escape"]},
    "dotdot inside path": {"output_paths": ["a/../../escape"]},
    "legacy file": {"output_files": ["../escape"]},
    "legacy dir": {"output_directories": ["/abs"]},
    "working directory": {"working_directory": "../"},
    "absolute working directory": {"working_directory": "/tmp"},
    "escape from working directory": {"working_directory": "w", "output_paths": ["../../x"]},
}


@pytest.mark.parametrize("kwargs", BAD_OUTPUTS.values(), ids=BAD_OUTPUTS.keys())
async def test_bad_output_paths(cluster: Cluster, kwargs: dict[str, object]) -> None:
    before = outside_snapshot(cluster.tmp)
    resp = await cluster.run(["sh", "-c", "touch ran"], **kwargs)
    assert resp.status.code == code_pb2.INVALID_ARGUMENT, resp.status
    assert outside_snapshot(cluster.tmp) == before


async def test_output_through_action_made_symlink(cluster: Cluster) -> None:
    """The action points an output's parent outside: the worker refuses to read it."""
    secret = cluster.tmp / "secret"
    secret.mkdir()
    (secret / "f").write_bytes(b"do not upload")
    before = outside_snapshot(cluster.tmp)
    # The worker created "link" as the output's parent; the action swaps in a symlink.
    resp = await cluster.run(
        ["sh", "-c", f"rmdir link && ln -s {secret} link"], output_paths=["link/f"]
    )
    assert resp.status.code == code_pb2.INVALID_ARGUMENT, resp.status
    assert b"do not upload" not in cluster.storage.blobs.values()
    assert outside_snapshot(cluster.tmp) == before


async def test_empty_arguments(cluster: Cluster) -> None:
    resp = await cluster.run([])
    assert resp.status.code == code_pb2.INVALID_ARGUMENT
    assert "arguments" in resp.status.message


async def test_missing_input_is_failed_precondition(cluster: Cluster) -> None:
    root = upload_tree(cluster.storage, Tree(files={"x": (b"gone", False)}))
    del cluster.storage.blobs[next(k for k, v in cluster.storage.blobs.items() if v == b"gone")]
    resp = await cluster.run(["true"], root=root)
    assert resp.status.code == code_pb2.FAILED_PRECONDITION, resp.status
    assert resp.status.details  # PreconditionFailure with the missing blob
