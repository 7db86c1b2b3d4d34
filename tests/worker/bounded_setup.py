"""Shared by the issue-16 input, output and cache-integrity tests: real `redbarn worker`
processes against the real scheduler core (`redbarn.queue.Scheduler`) on a private
redis-server, with the in-memory fake CAS, all over real gRPC channels."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from worker_fakes import FakeStorage, make_action

from redbarn import digests, errors
from redbarn.frontend.operation_queue import decode_report, encode_reply
from redbarn.proto import bytestream_pb2_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import Scheduler


class _OperationQueue(rw_grpc.OperationQueueServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def Synchronize(
        self, request: rw_pb2.SynchronizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rw_pb2.SynchronizeResponse:
        try:
            return encode_reply(await self._scheduler.workers.synchronize(decode_report(request)))
        except errors.RedbarnError as err:
            await context.abort(getattr(grpc.StatusCode, err.code), err.message)
            raise


def peak_rss(pid: int) -> int:
    """VmHWM of process `pid` in bytes: the most resident memory it has had."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@dataclass
class RealWorkers:
    scheduler: Scheduler
    storage: FakeStorage
    port: int
    tmp: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    def cache_dir(self, name: str) -> Path:
        return self.tmp / name / "cache"

    def cache_file(self, name: str, digest: re_pb2.Digest, executable: bool = False) -> Path:
        """Where worker `name` keeps `digest` in its input cache (SHA-256)."""
        fn = digests.function_component(re_pb2.DigestFunction.SHA256)
        kind = "exec" if executable else "plain"
        h = digest.hash
        return self.cache_dir(name) / kind / fn / h[:2] / f"{h}-{digest.size_bytes}"

    async def start_worker(self, name: str, *extra: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "redbarn.worker",
            "--frontend", f"127.0.0.1:{self.port}", "--concurrency", "1",
            "--hostname", name, "--log-level", "WARNING",
            "--build-dir", str(self.tmp / name / "build"),
            "--cache-dir", str(self.cache_dir(name)),
            *extra,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    async def stop_worker(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)

    async def run(self, arguments: list[str], **kwargs: Any) -> re_pb2.ExecuteResponse:
        """Execute an action (never cached) and wait for its response."""
        digest, action = make_action(self.storage, arguments, do_not_cache=True, **kwargs)
        view = None
        for _ in range(400):  # until a worker has created the platform queue
            try:
                view = await self.scheduler.operations.execute(
                    instance_name="",
                    action_digest=digest,
                    action=action,
                    digest_function=re_pb2.DigestFunction.SHA256,
                )
                break
            except (errors.FailedPrecondition, errors.Unavailable):
                await asyncio.sleep(0.05)
        assert view is not None, "no worker registered"

        async def done() -> re_pb2.ExecuteResponse:
            async for v in self.scheduler.operations.watch_operation(view.name, first=view):
                if v.done:
                    assert v.response is not None
                    return v.response
            raise AssertionError("stream ended early")

        return await asyncio.wait_for(done(), 120)


@contextlib.asynccontextmanager
async def real_workers(redis_url: str, tmp: Path) -> AsyncIterator[RealWorkers]:
    client = aioredis.Redis.from_url(redis_url)
    config = SchedulerConfig(
        worker_timeout=5.0,
        idle_sync_timeout=1.0,
        busy_sync_interval=0.3,
        waiter_poll_interval=0.1,
    )
    scheduler = Scheduler(client, config)
    await scheduler.start()
    storage = FakeStorage()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
    )
    rw_grpc.add_OperationQueueServicer_to_server(_OperationQueue(scheduler), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(storage, server)
    re_grpc.add_ActionCacheServicer_to_server(storage, server)
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(storage, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reaper = asyncio.create_task(scheduler.run_reaper(0.2))
    setup = RealWorkers(scheduler, storage, port, tmp)
    try:
        yield setup
    finally:
        for proc in setup.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await server.stop(None)
        await client.aclose()
