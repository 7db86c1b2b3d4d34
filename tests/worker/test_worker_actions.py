"""Actions end to end through the worker: outputs, inputs, exits, timeouts, big logs."""

from __future__ import annotations

import os
import stat

from google.rpc import code_pb2
from worker_fakes import Cluster, Tree, key

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import resourceusage_pb2


async def test_outputs_files_directories_symlinks(cluster: Cluster) -> None:
    script = (
        "mkdir -p out/dir/sub && printf hello > out/file && chmod +x out/file && "
        "printf a > out/dir/a && printf b > out/dir/sub/b && ln -s a out/dir/link && "
        "ln -s file out/sym && echo to-stdout && echo to-stderr >&2"
    )
    resp = await cluster.run(
        ["sh", "-c", script],
        output_paths=["out/file", "out/dir", "out/sym", "out/missing"],
    )
    assert resp.status.code == code_pb2.OK, resp.status
    r = resp.result
    assert r.exit_code == 0
    [f] = r.output_files
    assert (f.path, f.is_executable) == ("out/file", True)
    assert cluster.storage.get(f.digest) == b"hello"
    assert [(s.path, s.target) for s in r.output_symlinks] == [("out/sym", "file")]
    assert not r.output_file_symlinks  # only for the legacy fields
    [d] = r.output_directories
    assert d.path == "out/dir" and d.is_topologically_sorted
    tree = re_pb2.Tree.FromString(cluster.storage.get(d.tree_digest))
    assert [n.name for n in tree.root.files] == ["a"]
    assert [(n.name, n.target) for n in tree.root.symlinks] == [("link", "a")]
    [sub] = tree.root.directories
    [child] = tree.children
    assert sub.name == "sub"
    assert key(sub.digest) == key(
        re_pb2.Digest(
            hash=__import__("hashlib")
            .sha256(child.SerializeToString(deterministic=True))
            .hexdigest(),
            size_bytes=child.ByteSize(),
        )
    )
    assert cluster.storage.get(child.files[0].digest) == b"b"
    assert cluster.storage.get(r.stdout_digest) == b"to-stdout\n"
    assert cluster.storage.get(r.stderr_digest) == b"to-stderr\n"
    # Metadata: every timestamp, the worker name, POSIX resource usage.
    m = r.execution_metadata
    assert m.worker == '{"hostname":"testhost"}'
    for name in (
        "queued_timestamp",
        "worker_start_timestamp",
        "input_fetch_start_timestamp",
        "input_fetch_completed_timestamp",
        "execution_start_timestamp",
        "execution_completed_timestamp",
        "output_upload_start_timestamp",
        "output_upload_completed_timestamp",
        "worker_completed_timestamp",
        "virtual_execution_duration",
    ):
        assert m.HasField(name), name
    stamps = [
        getattr(m, n).ToNanoseconds()
        for n in (
            "queued_timestamp",
            "worker_start_timestamp",
            "input_fetch_start_timestamp",
            "input_fetch_completed_timestamp",
            "execution_start_timestamp",
            "execution_completed_timestamp",
            "output_upload_start_timestamp",
            "output_upload_completed_timestamp",
            "worker_completed_timestamp",
        )
    ]
    assert stamps == sorted(stamps)
    [aux] = m.auxiliary_metadata
    usage = resourceusage_pb2.POSIXResourceUsage()
    assert aux.Unpack(usage)
    assert usage.maximum_resident_set_size > 0 and usage.termination_signal == ""
    # Cached, stages reported in order, build directory removed.
    assert len(cluster.storage.ac) == 1
    stages = cluster.scheduler.stages[next(iter(cluster.scheduler.stages))]
    # Only the latest stage is sent when several queued up (Buildbarn W8), so some
    # may be skipped, but the order holds and `completed` comes last.
    assert stages[-1] == "completed"
    assert stages == sorted(
        set(stages),
        key=["started", "fetching_inputs", "running", "uploading_outputs", "completed"].index,
    )
    assert cluster.build_dirs() == []


async def test_legacy_output_fields(cluster: Cluster) -> None:
    resp = await cluster.run(
        ["sh", "-c", "mkdir d && echo x > f && ln -s f fl && ln -s d dl"],
        output_files=["f", "fl"],
        output_directories=["d", "dl"],
    )
    r = resp.result
    assert resp.status.code == code_pb2.OK, resp.status
    assert [f.path for f in r.output_files] == ["f"]
    assert [d.path for d in r.output_directories] == ["d"]
    assert [s.path for s in r.output_file_symlinks] == ["fl"]
    assert [s.path for s in r.output_directory_symlinks] == ["dl"]
    assert sorted(s.path for s in r.output_symlinks) == ["dl", "fl"]


async def test_nested_input_tree_with_executable(cluster: Cluster) -> None:
    tree = Tree(
        files={
            "a/b/c/tool.sh": (b'#!/bin/sh\ncat ../../data.txt\necho "$1"\n', True),
            "a/data.txt": (b"payload\n", False),
            "top.txt": (b"payload\n", False),  # same content: one plain cache entry
        },
        symlinks={"a/b/up": "../data.txt"},
    )
    resp = await cluster.run(
        ["./tool.sh", "arg"], tree=tree, working_directory="a/b/c", output_paths=["out/x"]
    )
    assert resp.status.code == code_pb2.OK, resp.status
    assert cluster.storage.get(resp.result.stdout_digest) == b"payload\narg\n"
    cache = cluster.config.cache_dir
    execs = [f for _d, _s, fs in os.walk(os.path.join(cache, "exec")) for f in fs]
    plains = [f for _d, _s, fs in os.walk(os.path.join(cache, "plain")) for f in fs]
    assert len(execs) == 1 and len(plains) == 1
    [p] = [os.path.join(d, f) for d, _s, fs in os.walk(os.path.join(cache, "plain")) for f in fs]
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o444
    # Second run is served from the local cache: no blob reads for files.
    reads = cluster.storage.calls.get("BatchReadBlobs", 0)
    resp = await cluster.run(["./tool.sh", "again"], tree=tree, working_directory="a/b/c")
    assert cluster.storage.get(resp.result.stdout_digest) == b"payload\nagain\n"
    # command + 4 directory levels, no file blobs (each level is one batch)
    assert cluster.storage.calls["BatchReadBlobs"] - reads <= 5


async def test_environment_comes_from_command_only(cluster: Cluster) -> None:
    """The Command's variables, TMPDIR and HOME; nothing of the worker's (no PATH)."""
    os.environ["REDBARN_TEST_LEAK"] = "leaked"
    try:
        resp = await cluster.run(["/usr/bin/env"], env={"ONLY": "this"})
    finally:
        del os.environ["REDBARN_TEST_LEAK"]
    lines = cluster.storage.get(resp.result.stdout_digest).decode().splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert sorted(env) == ["HOME", "ONLY", "TMPDIR"]
    assert env["ONLY"] == "this"


async def test_non_zero_exit_is_a_result(cluster: Cluster) -> None:
    resp = await cluster.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert resp.status.code == code_pb2.OK
    assert resp.result.exit_code == 3
    assert cluster.storage.get(resp.result.stderr_digest) == b"oops\n"
    assert cluster.storage.ac == {}  # only exit 0 is cached


async def test_do_not_cache_skips_action_cache(cluster: Cluster) -> None:
    resp = await cluster.run(["true"], do_not_cache=True)
    assert resp.status.code == code_pb2.OK and resp.result.exit_code == 0
    assert cluster.storage.ac == {}


async def test_signal_gives_termination_signal(cluster: Cluster) -> None:
    resp = await cluster.run(["sh", "-c", "kill -TERM $$"])
    assert resp.status.code == code_pb2.OK
    assert resp.result.exit_code == -1
    usage = resourceusage_pb2.POSIXResourceUsage()
    assert resp.result.execution_metadata.auxiliary_metadata[0].Unpack(usage)
    assert usage.termination_signal == "TERM"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


async def test_timeout_kills_process_group_and_keeps_outputs(cluster: Cluster) -> None:
    script = "sleep 300 & echo $! > grandchild; echo started; printf partial > out; wait"
    resp = await cluster.run(["sh", "-c", script], output_paths=["grandchild", "out"], timeout=1.0)
    assert resp.status.code == code_pb2.DEADLINE_EXCEEDED, resp.status
    assert resp.result.exit_code == 0
    assert cluster.storage.get(resp.result.stdout_digest) == b"started\n"
    files = {f.path: cluster.storage.get(f.digest) for f in resp.result.output_files}
    assert files["out"] == b"partial"
    pid = int(files["grandchild"])
    assert _gone(pid)
    assert cluster.storage.ac == {}


async def test_large_stdout(cluster: Cluster) -> None:
    resp = await cluster.run(["sh", "-c", "head -c 5242880 /dev/zero | tr '\\0' a"])
    assert resp.status.code == code_pb2.OK, resp.status
    assert resp.result.stdout_digest.size_bytes == 5 << 20
    assert cluster.storage.get(resp.result.stdout_digest) == b"a" * (5 << 20)
    assert cluster.storage.calls.get("Write", 0) >= 1  # large blobs go by ByteStream


async def test_large_input_by_bytestream(cluster: Cluster) -> None:
    big = os.urandom(3 << 20)
    resp = await cluster.run(["sh", "-c", "wc -c < big"], tree=Tree(files={"big": (big, False)}))
    assert cluster.storage.get(resp.result.stdout_digest).strip() == b"3145728"
    assert cluster.storage.calls["Read"] >= 1


async def test_uploads_only_missing_blobs(cluster: Cluster) -> None:
    await cluster.run(["sh", "-c", "echo same > f"], output_paths=["f"])
    before = cluster.storage.calls.get("BatchUpdateBlobs", 0)
    await cluster.run(["sh", "-c", "echo same > f; true"], output_paths=["f"])
    # stdout empty, the file and nothing else known already: no upload at all.
    assert cluster.storage.calls.get("BatchUpdateBlobs", 0) == before


async def test_directory_format_uploads_directories(cluster: Cluster) -> None:
    resp = await cluster.run(
        ["sh", "-c", "mkdir -p d/s && echo 1 > d/s/f"],
        output_paths=["d"],
        output_directory_format=re_pb2.Command.TREE_AND_DIRECTORY,
    )
    [d] = resp.result.output_directories
    root = re_pb2.Directory.FromString(cluster.storage.get(d.root_directory_digest))
    [sub] = root.directories
    child = re_pb2.Directory.FromString(cluster.storage.get(sub.digest))
    assert cluster.storage.get(child.files[0].digest) == b"1\n"
    assert d.HasField("tree_digest")


async def test_read_only_leftovers_are_removed(cluster: Cluster) -> None:
    resp = await cluster.run(["sh", "-c", "mkdir -p a/b && touch a/b/f && chmod -R a-w a"])
    assert resp.status.code == code_pb2.OK
    assert cluster.build_dirs() == []


async def test_transient_cas_errors_are_retried(cluster: Cluster) -> None:
    cluster.storage.fail_next = 2  # two UNAVAILABLE answers before serving
    resp = await cluster.run(["sh", "-c", "echo retried"])
    assert resp.status.code == code_pb2.OK, resp.status
    assert cluster.storage.get(resp.result.stdout_digest) == b"retried\n"
    assert cluster.storage.fail_next == 0


async def test_setsid_grandchild_is_killed_after_the_action(cluster: Cluster) -> None:
    """A child in a session of its own escapes the process-group kill; the sweep
    finds it by the action's TMPDIR in its environment."""
    script = "setsid sh -c 'echo $$ > pid; exec sleep 300' & while [ ! -s pid ]; do :; done"
    resp = await cluster.run(["sh", "-c", script], output_paths=["pid"])
    assert resp.status.code == code_pb2.OK, resp.status
    pid = int(cluster.storage.get(resp.result.output_files[0].digest))
    assert _gone(pid)


async def test_setsid_grandchild_that_left_the_directory_is_killed(cluster: Cluster) -> None:
    script = "setsid sh -c 'cd /; echo $$ > \"$OLDPWD/pid\"; exec sleep 300' & " \
        "while [ ! -s pid ]; do :; done"  # fmt: skip
    resp = await cluster.run(["sh", "-c", script], output_paths=["pid"])
    assert resp.status.code == code_pb2.OK, resp.status
    pid = int(cluster.storage.get(resp.result.output_files[0].digest))
    assert _gone(pid)
