"""The worker authenticates with its bearer token against the frontend's interceptor."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from google.rpc import code_pb2
from worker_fakes import FakeScheduler, FakeStorage, make_action, start_server

from redbarn.frontend.auth import AuthInterceptor, TokenTable
from redbarn.worker.auth import read_token
from redbarn.worker.cli import serve
from redbarn.worker.config import WorkerConfig


async def test_worker_sends_bearer_token(tmp_path: Path) -> None:
    (tmp_path / "workers").write_text("# worker tokens\nsecret-worker-token\n")
    (tmp_path / "clients").write_text("client-token\n")
    table = TokenTable.from_files(
        clients=str(tmp_path / "clients"), workers=str(tmp_path / "workers"), admins=None
    )
    storage, scheduler = FakeStorage(), FakeScheduler()
    server, port = await start_server(storage, scheduler, interceptors=[AuthInterceptor(table)])
    config = WorkerConfig(
        frontend=f"127.0.0.1:{port}",
        concurrency=1,
        build_dir=str(tmp_path / "build"),
        cache_dir=str(tmp_path / "cache"),
        token=read_token(str(tmp_path / "workers")),
    )
    shutdown = asyncio.Event()
    worker = asyncio.create_task(serve(config, shutdown))
    try:
        digest, action = make_action(storage, ["sh", "-c", "echo authed"])
        resp = await asyncio.wait_for(scheduler.submit(digest, action).result, 20)
        assert resp.status.code == code_pb2.OK, resp.status
        assert storage.get(resp.result.stdout_digest) == b"authed\n"
        assert storage.ac  # the AC write was accepted for the worker role
    finally:
        shutdown.set()
        await asyncio.wait_for(worker, 15)
        await server.stop(None)
    assert dataclasses.asdict(config)["token"] == "secret-worker-token"
    assert "secret-worker-token" not in repr(config)
