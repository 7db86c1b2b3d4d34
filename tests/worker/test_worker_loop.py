"""The Synchronize loop: cancellation on idle, replacement, retries, identities."""

from __future__ import annotations

import asyncio
import glob
import os
from pathlib import Path

import pytest
from google.rpc import code_pb2
from worker_fakes import Cluster, FakeScheduler, FakeStorage, Tree, key, make_action, start_server

from redbarn.digests import worker_json
from redbarn.worker.cli import serve
from redbarn.worker.client import thread_worker_ids
from redbarn.worker.config import WorkerConfig


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _read_pids(cluster: Cluster) -> list[int]:
    found = glob.glob(os.path.join(cluster.config.build_dir, "*", "root", "pid"))
    if not found:
        return []
    with open(found[0]) as f:
        return [int(line) for line in f.read().split()]


async def _wait_for_pids(cluster: Cluster) -> list[int]:
    """The action's shell and its background grandchild."""
    for _ in range(200):
        pids = _read_pids(cluster)
        if len(pids) == 2:
            return pids
        await asyncio.sleep(0.02)
    raise AssertionError("action did not start")


LONG = ["sh", "-c", "echo $$ > pid; sleep 300 & echo $! >> pid; wait"]


async def test_idle_cancels_running_action(cluster: Cluster) -> None:
    cluster.scheduler.busy_interval = 0.2
    digest, action = make_action(cluster.storage, LONG)
    first = cluster.scheduler.submit(digest, action)
    pids = await _wait_for_pids(cluster)
    cluster.scheduler.cancel.add("hostname=testhost")
    for _ in range(200):
        if all(map(_gone, pids)) and not cluster.build_dirs():
            break
        await asyncio.sleep(0.02)
    assert all(map(_gone, pids))
    assert cluster.build_dirs() == []
    assert "completed" not in cluster.scheduler.stages[key(digest)]
    assert not first.result.done()
    # The worker is idle again and takes new work.
    resp = await cluster.run(["sh", "-c", "echo next"])
    assert cluster.storage.get(resp.result.stdout_digest) == b"next\n"


async def test_new_assignment_replaces_running_action(cluster: Cluster) -> None:
    cluster.scheduler.busy_interval = 0.2
    digest, action = make_action(cluster.storage, LONG)
    cluster.scheduler.submit(digest, action)
    pids = await _wait_for_pids(cluster)
    cluster.scheduler.preempt = True
    resp = await cluster.run(["sh", "-c", "echo replacement"])
    assert cluster.storage.get(resp.result.stdout_digest) == b"replacement\n"
    assert all(map(_gone, pids))
    assert "completed" not in cluster.scheduler.stages[key(digest)]


async def test_stopping_worker_starts_no_new_action(cluster: Cluster) -> None:
    """Told to execute another action after SIGTERM, the worker refuses it, stops the
    one the scheduler no longer wants, and exits."""
    cluster.scheduler.busy_interval = 0.2
    first, action = make_action(cluster.storage, LONG)
    cluster.scheduler.submit(first, action)
    pids = await _wait_for_pids(cluster)
    cluster.shutdown.set()
    requests = cluster.scheduler.requests
    for _ in range(200):  # a report sent after the shutdown (an earlier one may be cut)
        if requests[-1].prefer_being_idle:
            break
        await asyncio.sleep(0.02)
    cluster.scheduler.preempt = True
    second, action = make_action(cluster.storage, ["sh", "-c", "echo second"])
    cluster.scheduler.submit(second, action)
    await asyncio.wait_for(asyncio.shield(cluster.worker), 10)
    assert cluster.scheduler.assigned["hostname=testhost"].desired.action_digest == second
    assert key(second) not in cluster.scheduler.stages
    assert requests[-1].prefer_being_idle
    assert all(map(_gone, pids))
    assert cluster.build_dirs() == []


async def test_rpc_failures_are_retried(cluster: Cluster) -> None:
    cluster.scheduler.fail_next = 4
    resp = await asyncio.wait_for(cluster.run(["sh", "-c", "echo ok"]), 20)
    assert resp.status.code == code_pb2.OK
    assert cluster.storage.get(resp.result.stdout_digest) == b"ok\n"
    assert cluster.scheduler.fail_next == 0


async def test_scheduler_restart_is_a_pause(cluster: Cluster) -> None:
    """The whole server goes away and comes back on the same port."""
    from worker_fakes import start_server

    # Stop serving: the worker's calls fail with UNAVAILABLE meanwhile.
    server = cluster.server
    await server.stop(None)
    await asyncio.sleep(0.5)
    new_server, port = await start_server(
        cluster.storage, cluster.scheduler, f"127.0.0.1:{cluster.port}"
    )
    cluster.server = new_server
    assert port == cluster.port
    resp = await asyncio.wait_for(cluster.run(["sh", "-c", "echo back"]), 20)
    assert cluster.storage.get(resp.result.stdout_digest) == b"back\n"


@pytest.mark.parametrize("cluster", [3], indirect=True)
async def test_threads_are_separate_workers(cluster: Cluster) -> None:
    runs = [cluster.run(["sh", "-c", "sleep 0.3; echo $PWD"]) for _ in range(3)]
    results = await asyncio.gather(*runs)
    workers = {r.result.execution_metadata.worker for r in results}
    assert workers == {
        '{"hostname":"testhost","thread":"0"}',
        '{"hostname":"testhost","thread":"1"}',
        '{"hostname":"testhost","thread":"2"}',
    }


def test_worker_ids_follow_bb_worker() -> None:
    ids = thread_worker_ids(12, {"pool": "a"}, "h")
    assert ids[0] == {"thread": "00", "hostname": "h", "pool": "a"}
    assert ids[11]["thread"] == "11"
    assert thread_worker_ids(1, {}, "h") == [{"hostname": "h"}]
    assert thread_worker_ids(2, {"thread": "x"}, "h")[0]["thread"] == "x"
    assert worker_json({"thread": "3", "hostname": "w<1>"}) == (
        '{"hostname":"w\\u003c1\\u003e","thread":"3"}'
    )


@pytest.mark.parametrize("cluster", [2], indirect=True)
async def test_threads_share_the_cache_and_its_downloads(cluster: Cluster) -> None:
    files = {f"d{i % 7}/f{i}": (f"content {i}\n".encode() * 50, i % 5 == 0) for i in range(300)}
    tree = Tree(files=files)
    runs = [cluster.run(["sh", "-c", f"cat d*/f* | wc -c; echo {n}"], tree=tree) for n in range(6)]
    results = await asyncio.gather(*runs)
    total = sum(len(c) for c, _ in files.values())
    for n, r in enumerate(results):
        assert r.status.code == code_pb2.OK, r.status
        assert cluster.storage.get(r.result.stdout_digest) == f"{total}\n{n}\n".encode()
    cache = cluster.config.cache_dir
    cached = [
        f for kind in ("plain", "exec") for _d, _s, fs in os.walk(f"{cache}/{kind}") for f in fs
    ]
    assert len(cached) == 300  # every file once
    assert cluster.build_dirs() == []


async def test_separate_cas_endpoint(tmp_path: Path) -> None:
    storage, scheduler = FakeStorage(), FakeScheduler()
    empty = FakeStorage()
    sched_server, sched_port = await start_server(empty, scheduler)
    cas_server, cas_port = await start_server(storage, FakeScheduler())
    config = WorkerConfig(
        frontend=f"127.0.0.1:{sched_port}",
        cas=f"127.0.0.1:{cas_port}",
        concurrency=1,
        build_dir=str(tmp_path / "build"),
        cache_dir=str(tmp_path / "cache"),
    )
    shutdown = asyncio.Event()
    worker = asyncio.create_task(serve(config, shutdown))
    try:
        digest, action = make_action(storage, ["sh", "-c", "echo elsewhere"])
        resp = await asyncio.wait_for(scheduler.submit(digest, action).result, 20)
        assert storage.get(resp.result.stdout_digest) == b"elsewhere\n"
        assert empty.calls == {}
    finally:
        shutdown.set()
        await asyncio.wait_for(worker, 15)
        await sched_server.stop(None)
        await cas_server.stop(None)
