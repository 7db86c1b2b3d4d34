"""An action's environment: exactly the Command's variables over the worker's --env,
plus a TMPDIR and a HOME of its own inside its build directory, removed with it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.rpc import code_pb2
from worker_fakes import Cluster, FakeScheduler, FakeStorage, start_server

from redbarn.worker.cli import serve
from redbarn.worker.config import WorkerConfig


@pytest.fixture
async def env_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A worker in this process with --env values (one the Command overrides)."""
    storage, scheduler = FakeStorage(), FakeScheduler()
    server, port = await start_server(storage, scheduler)
    config = WorkerConfig(
        frontend=f"127.0.0.1:{port}",
        concurrency=1,
        build_dir=str(tmp_path / "build"),
        cache_dir=str(tmp_path / "cache"),
        hostname="testhost",
        backoff_max=0.2,
        environment=(("FROM_WORKER", "w"), ("BOTH", "worker"), ("TMPDIR", "/tmp")),
    )
    shutdown = asyncio.Event()
    worker = asyncio.create_task(serve(config, shutdown))
    c = Cluster(storage, scheduler, config, port, server, shutdown, worker, tmp_path)
    try:
        yield c
    finally:
        shutdown.set()
        try:
            await asyncio.wait_for(worker, 15)
        finally:
            await server.stop(None)


async def test_env_is_command_over_worker_env_plus_tmpdir_and_home(env_cluster: Cluster) -> None:
    os.environ["REDBARN_TEST_LEAK"] = "leaked"
    try:
        resp = await env_cluster.run(
            ["/usr/bin/env"], env={"BOTH": "command", "ONLY_COMMAND": "c", "HOME": "/root"}
        )
    finally:
        del os.environ["REDBARN_TEST_LEAK"]
    assert resp.status.code == code_pb2.OK, resp.status
    lines = env_cluster.storage.get(resp.result.stdout_digest).decode().splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert len(lines) == len(env)  # no variable twice
    build = env_cluster.config.build_dir + "/"
    tmpdir, home = env.pop("TMPDIR"), env.pop("HOME")
    # The Command wins over --env; the per-action TMPDIR and HOME win over both.
    assert env == {"FROM_WORKER": "w", "BOTH": "command", "ONLY_COMMAND": "c"}
    assert tmpdir.startswith(build) and tmpdir.endswith("/tmp")
    assert home.startswith(build) and home.endswith("/home")
    assert os.path.dirname(tmpdir) == os.path.dirname(home)
    assert env_cluster.build_dirs() == []  # removed with the action


async def test_tmpdir_and_home_are_writable_and_per_action(env_cluster: Cluster) -> None:
    seen = []
    for _ in range(2):
        resp = await env_cluster.run(
            ["/bin/sh", "-c", 'ls -A "$TMPDIR" "$HOME"; : > "$TMPDIR/t"; : > "$HOME/h"; '
             'echo "$TMPDIR"'], env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert resp.status.code == code_pb2.OK, resp.status
        assert resp.result.exit_code == 0
        out = env_cluster.storage.get(resp.result.stdout_digest).decode().splitlines()
        # `ls` of two empty directories prints their headers only: nothing left over.
        assert [line for line in out[:-1] if line and not line.endswith(":")] == []
        seen.append(out[-1])
    assert seen[0] != seen[1]
    assert env_cluster.build_dirs() == []
