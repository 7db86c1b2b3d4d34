"""Real frontend (Redis storage + scheduler) and real worker processes, driven by a
REAPI client over gRPC: Execute, the Action Cache, SIGKILL requeue, frontend restart,
SIGTERM during a long poll."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2
from worker_fakes import IDLE_STOP, key, worker_process

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.queue.config import SchedulerConfig

pytestmark = pytest.mark.system

SCHEDULER = SchedulerConfig(
    worker_timeout=1.0, idle_sync_timeout=2.0, busy_sync_interval=0.3, waiter_poll_interval=0.2
)


@dataclass
class System:
    redis_url: str
    tmp: Path
    server: FrontendServer
    port: int
    channel: grpc.aio.Channel
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    @property
    def cas(self) -> re_grpc.ContentAddressableStorageStub:
        return re_grpc.ContentAddressableStorageStub(self.channel)  # type: ignore[no-untyped-call]

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

    async def put(self, *blobs: bytes) -> list[re_pb2.Digest]:
        digests = [
            re_pb2.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b)) for b in blobs
        ]
        await self.cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[
                    re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=b)
                    for d, b in zip(digests, blobs, strict=True)
                ]
            )
        )
        return digests

    async def get(self, digest: re_pb2.Digest) -> bytes:
        resp = await self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[digest]))
        return bytes(resp.responses[0].data)

    async def action(self, arguments: list[str], timeout: int = 30) -> re_pb2.Digest:
        command = re_pb2.Command(arguments=arguments, output_paths=["out"])
        tool = re_pb2.Directory()
        [tool_data] = await self.put(b'#!/bin/sh\necho tool "$@"\n')
        tool.files.add(name="tool.sh", digest=tool_data, is_executable=True)
        [tool_dir] = await self.put(tool.SerializeToString())
        root = re_pb2.Directory()
        root.directories.add(name="bin", digest=tool_dir)
        command_digest, root_digest = await self.put(
            command.SerializeToString(), root.SerializeToString()
        )
        action = re_pb2.Action(command_digest=command_digest, input_root_digest=root_digest)
        action.timeout.seconds = timeout
        [action_digest] = await self.put(action.SerializeToString())
        return action_digest

    async def execute(
        self, action_digest: re_pb2.Digest
    ) -> AsyncIterator[re_pb2.ExecuteResponse | int]:
        """Yield each stage, then the ExecuteResponse; retries until a worker exists."""
        stub = re_grpc.ExecutionStub(self.channel)  # type: ignore[no-untyped-call]
        for _ in range(100):
            try:
                async for op in stub.Execute(re_pb2.ExecuteRequest(action_digest=action_digest)):
                    meta = re_pb2.ExecuteOperationMetadata()
                    op.metadata.Unpack(meta)
                    if op.done:
                        response = re_pb2.ExecuteResponse()
                        op.response.Unpack(response)
                        yield response
                        return
                    yield meta.stage
                return
            except grpc.aio.AioRpcError as err:
                if err.code() not in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.UNAVAILABLE,
                ):
                    raise
                await asyncio.sleep(0.1)

    async def run(self, action_digest: re_pb2.Digest) -> re_pb2.ExecuteResponse:
        async for item in self.execute(action_digest):
            if isinstance(item, re_pb2.ExecuteResponse):
                return item
        raise AssertionError("no response")


async def _frontend(
    redis_url: str, port: int = 0, scheduler: SchedulerConfig = SCHEDULER
) -> tuple[FrontendServer, int]:
    config = FrontendConfig(listen=f"127.0.0.1:{port}", redis_url=redis_url, grace_period=0.5)
    server, bound = await create_server(
        config, hooks=[scheduling_hook(scheduler, reaper_interval=0.2)]
    )
    await server.start()
    return server, bound


@pytest.fixture
async def system(redis_url: str, tmp_path: Path) -> AsyncIterator[System]:
    server, port = await _frontend(redis_url)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    s = System(redis_url, tmp_path, server, port, channel)
    try:
        yield s
    finally:
        for proc in s.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        await channel.close()
        await s.server.stop(0)


async def test_execute_through_frontend_and_action_cache(system: System) -> None:
    await system.start_worker("w1")
    digest = await system.action(["sh", "-c", "bin/tool.sh hello > out; echo done"])
    response = await system.run(digest)
    assert response.status.code == code_pb2.OK, response.status
    result = response.result
    assert await system.get(result.stdout_digest) == b"done\n"
    [out] = result.output_files
    assert await system.get(out.digest) == b"tool hello\n"
    assert result.execution_metadata.worker == '{"hostname":"w1"}'
    ac = re_grpc.ActionCacheStub(system.channel)  # type: ignore[no-untyped-call]
    cached = await ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=digest))
    assert key(cached.output_files[0].digest) == key(out.digest)


async def test_sigkill_mid_action_requeued_through_frontend(system: System) -> None:
    first = await system.start_worker("w1")
    digest = await system.action(["sh", "-c", "sleep 1; echo survived > out"])
    stream = system.execute(digest)
    async for item in stream:
        if item == re_pb2.ExecutionStage.EXECUTING:
            break
    first.kill()
    await first.wait()
    await system.start_worker("w2")
    response = None
    async for item in stream:
        if isinstance(item, re_pb2.ExecuteResponse):
            response = item
    assert response is not None and response.status.code == code_pb2.OK, response
    assert response.result.execution_metadata.worker == '{"hostname":"w2"}'
    assert await system.get(response.result.output_files[0].digest) == b"survived\n"


async def test_frontend_restart_is_a_pause_for_the_worker(system: System) -> None:
    await system.start_worker("w1")
    first = await system.run(await system.action(["sh", "-c", "echo one > out"]))
    assert first.status.code == code_pb2.OK
    await system.server.stop(0)
    await asyncio.sleep(1.0)  # the worker's Synchronize calls fail meanwhile
    system.server, _ = await _frontend(system.redis_url, system.port)
    second = await asyncio.wait_for(
        system.run(await system.action(["sh", "-c", "echo two > out"])), 30
    )
    assert second.status.code == code_pb2.OK, second.status
    assert system.procs["w1"].returncode is None


async def test_sigterm_while_long_polling_the_frontend_stops_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    scheduler = replace(SCHEDULER, idle_sync_timeout=60.0)
    server, port = await _frontend(redis_url, scheduler=scheduler)
    try:
        async with worker_process(tmp_path, f"127.0.0.1:{port}") as w:
            await w.wait_for_log("worker: 1 threads")
            await asyncio.sleep(1.0)
            # No Synchronize has returned yet (it would touch the heartbeat): it is parked.
            assert not (tmp_path / "build" / ".heartbeat").exists()
            elapsed, code = await w.stop_time()
    finally:
        await server.stop(0)
    assert code == 0, w.log
    assert elapsed < IDLE_STOP, w.log
    assert "shutting down: no actions running" in w.log
    assert "Failed to synchronize" not in w.log
