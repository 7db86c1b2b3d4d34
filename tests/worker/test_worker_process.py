"""The worker as a real process and SIGTERM: an idle worker (frontend unreachable, or
its long poll in flight) exits 0 at once; a busy one finishes its action first, and a
second signal aborts it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from google.rpc import code_pb2
from worker_fakes import (
    IDLE_STOP,
    FakeScheduler,
    FakeStorage,
    key,
    make_action,
    start_server,
    unused_port,
    worker_process,
)


async def test_sigterm_with_frontend_unreachable_stops_at_once(tmp_path: Path) -> None:
    async with worker_process(tmp_path, f"127.0.0.1:{unused_port()}") as w:
        await w.wait_for_log("Failed to synchronize with scheduler")
        await asyncio.sleep(1.0)  # in the backoff, or in a new attempt
        elapsed, code = await w.stop_time()
    assert code == 0, w.log
    assert elapsed < IDLE_STOP, w.log
    assert "finishing running actions" not in w.log
    assert "shutting down: no actions running" in w.log
    assert "worker stopped" in w.log


async def test_sigterm_while_long_polling_stops_at_once(tmp_path: Path) -> None:
    storage, scheduler = FakeStorage(), FakeScheduler(poll=60.0)
    server, port = await start_server(storage, scheduler)
    try:
        async with worker_process(tmp_path, f"127.0.0.1:{port}") as w:
            for _ in range(500):
                if scheduler.requests:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # the Synchronize is parked in the scheduler
            elapsed, code = await w.stop_time()
    finally:
        await server.stop(None)
    assert code == 0, w.log
    assert elapsed < IDLE_STOP, w.log
    assert "shutting down: no actions running" in w.log
    # The long poll, cut short, then one report saying it is idle and stays so.
    poll, farewell = scheduler.requests
    assert not poll.prefer_being_idle
    assert farewell.current_state.HasField("idle") and farewell.prefer_being_idle
    assert "Failed to synchronize" not in w.log


async def test_sigterm_runs_the_action_its_cut_long_poll_was_handed(tmp_path: Path) -> None:
    """The scheduler assigned an action to the long poll the signal cut short: the
    worker's idle report has it handed back, and the worker runs it before exiting."""
    storage, scheduler = FakeStorage(), FakeScheduler(poll=60.0, lose_replies=True)
    server, port = await start_server(storage, scheduler)
    try:
        async with worker_process(tmp_path, f"127.0.0.1:{port}") as w:
            digest, action = make_action(storage, ["sh", "-c", "echo handed"])
            for _ in range(500):
                if scheduler.requests:
                    break
                await asyncio.sleep(0.02)
            assigned = scheduler.submit(digest, action)
            for _ in range(500):
                if assigned.worker is not None:
                    break
                await asyncio.sleep(0.02)
            _, code = await w.stop_time()
            response = await asyncio.wait_for(assigned.result, 15)
    finally:
        await server.stop(None)
    assert code == 0, w.log
    assert response.status.code == code_pb2.OK
    assert storage.get(response.result.stdout_digest) == b"handed\n"
    assert "shutting down: no actions running" in w.log
    assert f"running {key(digest)}, assigned before the signal" in w.log
    assert scheduler.requests[-1].current_state.executing.HasField("completed")


async def test_sigterm_while_busy_finishes_action(tmp_path: Path) -> None:
    storage, scheduler = FakeStorage(), FakeScheduler()
    server, port = await start_server(storage, scheduler)
    try:
        async with worker_process(tmp_path, f"127.0.0.1:{port}") as w:
            digest, action = make_action(storage, ["sh", "-c", "sleep 1; echo finished"])
            assigned = scheduler.submit(digest, action)
            for _ in range(500):
                if "running" in scheduler.stages.get(key(digest), []):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the action never ran")
            _, code = await w.stop_time()
            response = await asyncio.wait_for(assigned.result, 15)
    finally:
        await server.stop(None)
    assert response.status.code == code_pb2.OK
    assert storage.get(response.result.stdout_digest) == b"finished\n"
    assert code == 0
    assert "waiting for 1 running action(s) to finish (signal again to abort)" in w.log
    completed = [r for r in scheduler.requests if r.current_state.executing.HasField("completed")]
    assert completed and completed[-1].prefer_being_idle
    # Once told idle, it made no further call.
    assert scheduler.requests[-1] is completed[-1]
    assert storage.ac  # the result was cached before exiting


async def test_second_signal_aborts_running_action(tmp_path: Path) -> None:
    storage, scheduler = FakeStorage(), FakeScheduler(busy_interval=0.2)
    server, port = await start_server(storage, scheduler)
    try:
        async with worker_process(tmp_path, f"127.0.0.1:{port}") as w:
            digest, action = make_action(storage, ["sh", "-c", "sleep 300"])
            assigned = scheduler.submit(digest, action)
            for _ in range(500):
                if "running" in scheduler.stages.get(key(digest), []):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the action never ran")
            w.proc.send_signal(signal.SIGTERM)
            await w.wait_for_log("waiting for 1 running action(s) to finish")
            await asyncio.sleep(0.5)  # still running: it waits for the action
            assert w.proc.returncode is None
            elapsed, code = await w.stop_time()
    finally:
        await server.stop(None)
    assert elapsed < IDLE_STOP, w.log
    assert code == 0, w.log
    assert "aborting 1 running action(s)" in w.log
    assert not assigned.result.done()
    assert "completed" not in scheduler.stages[key(digest)]
    assert [p.name for p in (tmp_path / "build").iterdir() if not p.name.startswith(".")] == []
