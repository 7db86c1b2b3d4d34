"""The worker as a real process: SIGTERM while busy finishes the action, then exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from google.rpc import code_pb2
from worker_fakes import FakeScheduler, FakeStorage, key, make_action, start_server


async def test_sigterm_while_busy_finishes_action(tmp_path: Path) -> None:
    storage, scheduler = FakeStorage(), FakeScheduler()
    server, port = await start_server(storage, scheduler)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redbarn.worker",
        "--frontend", f"127.0.0.1:{port}",
        "--concurrency", "1",
        "--build-dir", str(tmp_path / "build"),
        "--cache-dir", str(tmp_path / "cache"),
        "--hostname", "proc",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        digest, action = make_action(storage, ["sh", "-c", "sleep 1; echo finished"])
        assigned = scheduler.submit(digest, action)
        for _ in range(500):
            if "running" in scheduler.stages.get(key(digest), []):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the action never ran")
        proc.send_signal(signal.SIGTERM)
        response = await asyncio.wait_for(assigned.result, 15)
        code = await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop(None)
    assert response.status.code == code_pb2.OK
    assert storage.get(response.result.stdout_digest) == b"finished\n"
    assert code == 0
    completed = [r for r in scheduler.requests if r.current_state.executing.HasField("completed")]
    assert completed and completed[-1].prefer_being_idle
    # Once told idle, it made no further call.
    assert scheduler.requests[-1] is completed[-1]
    assert storage.ac  # the result was cached before exiting
