"""Worker processes against the real scheduler core (`redbarn.queue.Scheduler`) on a
private redis-server: the wire servicer here is the same one-liner the frontend has,
and the CAS is the in-memory fake. Covers a plain action, SIGKILL mid-action
(requeued and completed by another worker) and SIGTERM while busy."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import code_pb2
from worker_fakes import FakeStorage, make_action

from redbarn import errors
from redbarn.frontend.operation_queue import decode_report, encode_reply
from redbarn.proto import bytestream_pb2_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import OperationView, Scheduler

pytestmark = pytest.mark.system


class _OperationQueue(rw_grpc.OperationQueueServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def Synchronize(
        self, request: rw_pb2.SynchronizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rw_pb2.SynchronizeResponse:
        try:
            report = decode_report(request)
            return encode_reply(await self._scheduler.workers.synchronize(report))
        except errors.RedbarnError as err:
            await context.abort(getattr(grpc.StatusCode, err.code), err.message)
            raise


@dataclass
class Setup:
    scheduler: Scheduler
    storage: FakeStorage
    port: int
    tmp: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start_worker(self, name: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "redbarn.worker",
            "--frontend", f"127.0.0.1:{self.port}", "--concurrency", "1",
            "--hostname", name, "--log-level", "WARNING",
            "--build-dir", str(self.tmp / name / "build"),
            "--cache-dir", str(self.tmp / name / "cache"),
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    async def execute(self, arguments: list[str], **kwargs: Any) -> OperationView:
        digest, action = make_action(self.storage, arguments, **kwargs)
        for _ in range(200):  # until a worker has created the platform queue
            try:
                return await self.scheduler.operations.execute(
                    instance_name="",
                    action_digest=digest,
                    action=action,
                    digest_function=re_pb2.DigestFunction.SHA256,
                )
            except (errors.FailedPrecondition, errors.Unavailable):
                await asyncio.sleep(0.05)
        raise AssertionError("no worker registered")

    async def wait_stage(self, view: OperationView, *, executing: bool = False) -> OperationView:
        async for v in self.scheduler.operations.watch_operation(view.name, first=view):
            if v.done or (executing and v.stage == re_pb2.ExecutionStage.EXECUTING):
                return v
        raise AssertionError("stream ended early")


@pytest.fixture
async def setup(redis_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    client = aioredis.Redis.from_url(redis_url)
    config = SchedulerConfig(
        worker_timeout=1.0,
        idle_sync_timeout=1.0,
        busy_sync_interval=0.3,
        waiter_poll_interval=0.1,
    )
    scheduler = Scheduler(client, config)
    await scheduler.start()
    storage = FakeStorage()
    server = grpc.aio.server()
    rw_grpc.add_OperationQueueServicer_to_server(_OperationQueue(scheduler), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(storage, server)
    re_grpc.add_ActionCacheServicer_to_server(storage, server)
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(storage, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reaper = asyncio.create_task(scheduler.run_reaper(0.2))
    s = Setup(scheduler, storage, port, tmp_path)
    try:
        yield s
    finally:
        # Each step bounded and named: one CI run's teardown once waited out the whole
        # test timeout, with nothing saying which step it was.
        for name, proc in s.procs.items():
            if proc.returncode is None:
                proc.kill()
                await _step(f"worker {name} to exit after SIGKILL", proc.wait())
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _step("the reaper to stop", reaper)
        await _step("the gRPC server to stop", server.stop(None))
        await _step("the Redis client to close", client.aclose())


async def _step(what: str, aw: Any) -> None:
    try:
        await asyncio.wait_for(aw, 20)
    except TimeoutError:
        pytest.fail(f"teardown: waited 20 s for {what}")


async def test_action_through_real_scheduler(setup: Setup) -> None:
    await setup.start_worker("w1")
    view = await setup.wait_stage(await setup.execute(["sh", "-c", "echo via-redis"]))
    assert view.response is not None
    assert view.response.status.code == code_pb2.OK
    assert setup.storage.get(view.response.result.stdout_digest) == b"via-redis\n"
    assert view.response.result.execution_metadata.worker == '{"hostname":"w1"}'


async def test_sigkill_mid_action_is_requeued_to_another_worker(setup: Setup) -> None:
    first = await setup.start_worker("w1")
    view = await setup.execute(["sh", "-c", "sleep 1; echo survived"])
    view = await setup.wait_stage(view, executing=True)
    assert view.worker == '{"hostname":"w1"}'
    first.kill()
    await first.wait()
    await setup.start_worker("w2")
    view = await asyncio.wait_for(setup.wait_stage(view), 30)
    assert view.response is not None
    assert view.response.status.code == code_pb2.OK, view.response.status
    assert view.response.result.execution_metadata.worker == '{"hostname":"w2"}'
    assert setup.storage.get(view.response.result.stdout_digest) == b"survived\n"


async def test_sigterm_while_busy_with_real_scheduler(setup: Setup) -> None:
    proc = await setup.start_worker("w1")
    view = await setup.execute(["sh", "-c", "sleep 1; echo finished"])
    await setup.wait_stage(view, executing=True)
    proc.send_signal(signal.SIGTERM)
    view = await asyncio.wait_for(setup.wait_stage(view), 20)
    assert view.response is not None and view.response.status.code == code_pb2.OK
    assert setup.storage.get(view.response.result.stdout_digest) == b"finished\n"
    assert await asyncio.wait_for(proc.wait(), 20) == 0
