"""Worker test fixtures: a fake scheduler + in-memory CAS on 127.0.0.1:0, and a worker
(`redbarn.worker.cli.serve`) in the same event loop talking to it over a real channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from worker_fakes import Cluster, FakeScheduler, FakeStorage, start_server

from redbarn.worker.cli import serve
from redbarn.worker.config import WorkerConfig


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    concurrency = getattr(request, "param", 1)
    storage = FakeStorage()
    scheduler = FakeScheduler()
    server, port = await start_server(storage, scheduler)
    config = WorkerConfig(
        frontend=f"127.0.0.1:{port}",
        concurrency=concurrency,
        build_dir=str(tmp_path / "build"),
        cache_dir=str(tmp_path / "cache"),
        cache_size=1 << 30,
        hostname="testhost",
        backoff_max=0.2,
    )
    shutdown = asyncio.Event()
    worker = asyncio.create_task(serve(config, shutdown))
    c = Cluster(storage, scheduler, config, port, server, shutdown, worker, tmp_path)
    try:
        yield c
    finally:
        shutdown.set()
        try:
            await asyncio.wait_for(worker, 15)  # cancels the worker if it hangs
        finally:
            await c.server.stop(None)
