"""Fault tests: real processes, real signals. Each starts its own Redis, frontends and
workers on loopback (tests/cluster.py) and drives them like Bazel (tests/reapi_client.py).

Actions append to marker files, so a test can tell which worker ran what and how often:
`start <worker> <pgid>` when a run begins, `done <worker>` when it ends. Each worker gets
`--env WHO=w<i>`, so an action's output names the worker that produced it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis
from cluster import Cluster
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reapi_client import ReapiClient, digest_of

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.runtime.redisserver import RedisServer

from .conftest import FAST

pytestmark = [pytest.mark.system, pytest.mark.slow]

# FAST with a quick busy report (1 s) and a retention that outlives slow test steps.
# (The scheduler itself caps the busy interval at half the worker timeout and touches
# watched operations within a third of the retention; the last two tests check that.)
FLAGS = [*FAST, "--busy-sync-interval", "1s", "--operation-retention", "10s"]


def fe(c: Cluster, i: int = 0) -> str:
    return f"127.0.0.1:{c.frontend_ports[i]}"


def add_workers(c: Cluster, target: str, n: int, *extra: str) -> None:
    for _ in range(n):
        c.add_worker(target, "--env", f"WHO=w{len(c.workers)}", *extra)


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


async def until(cond: Callable[[], object], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not within {timeout}s: {what}")


def script(marker: Path, body: str = "sleep 1", out: str = 'echo "out $WHO"') -> list[str]:
    """An action that records its start (worker, process group) and end in `marker`."""
    return [
        "/bin/sh",
        "-c",
        f'echo "start $WHO $$" >> {marker}; {body}; echo "done $WHO" >> {marker}; {out}',
    ]


def stdout_is(response: re_pb2.ExecuteResponse, expected: str) -> bool:
    data = expected.encode()
    r = response.result
    return r.stdout_raw == data or (not r.stdout_raw and r.stdout_digest == digest_of(data))


def assert_ok(response: re_pb2.ExecuteResponse) -> None:
    assert response.status.code == 0, response.status
    assert response.result.exit_code == 0, response.result


def worker_count(c: Cluster) -> int:
    """Worker identities the scheduler knows, over every platform queue."""
    r = redis.Redis.from_url(c.redis_url)
    try:
        return sum(int(r.hlen(k)) for k in r.scan_iter("redbarn:v1:{*}:workers"))
    finally:
        r.close()


async def wait_workers(c: Cluster, n: int, timeout: float = 20) -> None:
    await until(lambda: worker_count(c) >= n, timeout, f"{n} workers registered")


def health(target: str) -> int | str:
    """The frontend's overall health status, or the RPC error's code name."""
    with grpc.insecure_channel(target) as ch:
        try:
            return (
                health_pb2_grpc.HealthStub(ch)
                .Check(health_pb2.HealthCheckRequest(), timeout=3)
                .status
            )
        except grpc.RpcError as err:
            return err.code().name


RETRIED = 0  # ExecuteResponses with a retryable status that a test re-executed


async def execute_like_bazel(client: ReapiClient, digest: re_pb2.Digest, deadline: float):
    """ReapiClient.execute, plus Bazel's retry of an ExecuteResponse whose status is
    UNAVAILABLE (e.g. the worker could not upload outputs while Redis was down)."""
    global RETRIED
    for _ in range(5):
        outcome = await client.execute(digest, deadline=deadline)
        if outcome.response.status.code != grpc.StatusCode.UNAVAILABLE.value[0]:
            return outcome
        RETRIED += 1
    return outcome


async def run_all(clients: list[ReapiClient], digests: list[re_pb2.Digest], deadline: float):
    return [
        asyncio.create_task(execute_like_bazel(clients[i % len(clients)], d, deadline))
        for i, d in enumerate(digests)
    ]


def run_counts(markers: list[Path]) -> list[tuple[int, int]]:
    """(starts, ends) per marker file."""
    out = []
    for m in markers:
        rs = [r.split()[0] for r in lines(m)]
        out.append((rs.count("start"), rs.count("done")))
    return out


# 1 ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigkill_worker_mid_action_requeues_and_completes_once(tmp_path: Path) -> None:
    """The worker running an action dies with SIGKILL (and its action with it, as when the
    host dies). The lease expires, the action is requeued with its attempt counted, runs
    on the other worker, and the client gets exactly one result: the survivor's."""
    marker = tmp_path / "runs"
    with Cluster(tmp_path, frontend_args=FLAGS) as c:
        c.add_frontend()
        add_workers(c, fe(c), 2)
        client = ReapiClient(fe(c))
        try:
            digest = await client.prepare(script(marker, "sleep 2"))
            task = asyncio.create_task(client.execute(digest, deadline=45))
            await until(lambda: lines(marker), 20, "the action started")
            _, who, pgid = lines(marker)[0].split()
            c.workers[int(who[1:])].kill()
            os.killpg(int(pgid), signal.SIGKILL)  # the host died: its action went too
            outcome = await asyncio.wait_for(task, 45)
        except BaseException:
            print(c.logs())
            raise
        finally:
            await client.close()
    other = "w1" if who == "w0" else "w0"
    assert_ok(outcome.response)
    assert stdout_is(outcome.response, f"out {other}\n"), outcome.response.result
    runs = lines(marker)
    assert [r.split()[:2] for r in runs] == [["start", who], ["start", other], ["done", other]]
    assert len(outcome.names) == 1, "one operation, one result"


# 2 ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigstop_worker_late_completion_is_fenced(tmp_path: Path) -> None:
    """A worker frozen (SIGSTOP) past the worker timeout loses its action to another
    worker. Thawed (SIGCONT), it reports its finished run: that report carries a stale
    epoch and is discarded. The client gets the requeued run's result."""
    marker = tmp_path / "runs"
    # w0's run ends (1 s) while it is frozen; w1's takes 2 s, so w0's late report comes
    # first. Whether that report is its completion or a stage change depends on its
    # heartbeat timer and output upload; both must be fenced (see below).
    body = 'if [ "$WHO" = w0 ]; then sleep 1; else sleep 2; fi'
    with Cluster(tmp_path, frontend_args=[*FAST, "--operation-retention", "10s"]) as c:
        c.add_frontend()
        add_workers(c, fe(c), 1)
        client = ReapiClient(fe(c))
        try:
            await wait_workers(c, 1)
            digest = await client.prepare(script(marker, body))
            task = asyncio.create_task(client.execute(digest, deadline=45))
            await until(lambda: lines(marker), 20, "w0 started the action")
            c.workers[0].signal(signal.SIGSTOP)
            add_workers(c, fe(c), 1)
            await until(lambda: len(lines(marker)) >= 3, 25, "requeued to w1")
            assert [r.split()[:2] for r in lines(marker)] == [
                ["start", "w0"],
                ["done", "w0"],
                ["start", "w1"],
            ]
            c.workers[0].signal(signal.SIGCONT)  # w0 now reports its (stale) run
            # Thawed, w0 sends its stage change (uploading_outputs: fenced, answered idle,
            # its run cancelled) or, when the upload fits in its coalescing window, its
            # completion (fenced: discarded). Either way its result must not count.
            await until(
                lambda: "exit 0" in c.workers[0].log() or "cancelling" in c.workers[0].log(),
                5,
                "w0 reported its run",
            )
            path = "completion" if "exit 0" in c.workers[0].log() else "progress"
            print("w0's late report was a", path)
            await asyncio.sleep(0.5)  # its report reached the scheduler
            assert not task.done(), "the zombie's completion must not finish the operation"
            assert c.workers[0].alive()
            outcome = await asyncio.wait_for(task, 30)
        except BaseException:
            print(c.logs())
            raise
        finally:
            await client.close()
    assert_ok(outcome.response)
    assert stdout_is(outcome.response, "out w1\n"), outcome.response.result
    assert [r.split()[:2] for r in lines(marker)][3:] == [["done", "w1"]]


# 3 ---------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_sigkill_frontend_clients_reattach_workers_resync(tmp_path: Path) -> None:
    """Two frontends; clients and workers use a two-address target (pick_first: both
    start on frontend 0). Frontend 0 dies with SIGKILL while clients stream Execute from
    it, workers run actions for it and idle workers are parked in Synchronize on it.
    Clients reattach with WaitExecution on frontend 1, every worker re-synchronizes
    there (none is lost to the worker timeout), every action completes and runs once."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with Cluster(tmp_path, frontend_args=FLAGS) as c:
        c.add_frontend()
        c.add_frontend()
        both = f"ipv4:127.0.0.1:{c.frontend_ports[0]},127.0.0.1:{c.frontend_ports[1]}"
        for _ in range(3):
            c.add_worker(both, "--env", f"WHO=w{len(c.workers)}", concurrency=2)
        clients = [ReapiClient(both, invocation=f"build-{i}") for i in range(3)]
        try:
            await wait_workers(c, 6)
            first = [runs / f"a{i}" for i in range(4)]  # 4 running, 2 workers parked
            digests = [await clients[0].prepare(script(m, "sleep 2")) for m in first]
            tasks = await run_all(clients, digests, 60)
            await until(lambda: all(lines(m) for m in first), 20, "first wave running")
            c.frontends[0].kill()
            second = [runs / f"b{i}" for i in range(12)]
            digests = [await clients[1].prepare(script(m, "sleep 0.5")) for m in second]
            tasks += await run_all(clients, digests, 60)
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            # Every worker identity re-synchronized with frontend 1: none was reaped.
            await asyncio.sleep(4)  # > worker timeout
            assert worker_count(c) == 6
            assert all(w.alive() for w in c.workers)
        except BaseException:
            print(c.logs())
            raise
        finally:
            for cl in clients:
                await cl.close()
    for o in outcomes:
        assert_ok(o.response)
    assert run_counts([*first, *second]) == [(1, 1)] * 16, "every action ran exactly once"
    assert sum(o.reattaches for o in outcomes[:4]) >= 4, "the first wave's streams broke"


# 4 ---------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_redis_restart_with_aof_resumes_work(tmp_path: Path) -> None:
    """Redis (AOF, appendfsync everysec) dies with SIGKILL while two actions run and four
    are queued, and comes back 3 s later on the same port. Meanwhile the frontend answers
    UNAVAILABLE (not a hang, not a crash) and its health is NOT_SERVING; afterwards it is
    SERVING again and every action completes with one result."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with Cluster(tmp_path, frontend_args=FLAGS, redis_aof=True) as c:
        c.add_frontend()
        target = fe(c)
        add_workers(c, target, 1)
        c.workers[0].args[c.workers[0].args.index("--concurrency") + 1] = "2"
        c.restart_worker(0)
        client = ReapiClient(target)
        try:
            await wait_workers(c, 2)
            markers = [runs / f"a{i}" for i in range(6)]
            digests = [await client.prepare(script(m, "sleep 1.5")) for m in markers]
            tasks = await run_all([client], digests, 60)
            await until(lambda: sum(bool(lines(m)) for m in markers) >= 2, 20, "two running")
            await asyncio.sleep(1.2)  # let everysec fsync the enqueues
            assert health(target) == health_pb2.HealthCheckResponse.SERVING
            c.stop_redis(kill=True)
            down = time.monotonic()
            await until(
                lambda: health(target) == health_pb2.HealthCheckResponse.NOT_SERVING,
                5,
                "health NOT_SERVING while Redis is down",
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in client.execution.Execute(
                    re_pb2.ExecuteRequest(action_digest=digests[0]), timeout=10
                ):
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
            assert time.monotonic() - down < 5, "UNAVAILABLE promptly, not after a hang"
            await asyncio.sleep(max(0.0, 3 - (time.monotonic() - down)))
            assert c.frontends[0].alive(), "the frontend survived the outage"
            c.start_redis()
            await until(
                lambda: health(target) == health_pb2.HealthCheckResponse.SERVING,
                10,
                "health SERVING once Redis is back",
            )
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        except BaseException:
            print(c.logs())
            raise
        finally:
            await client.close()
    for o in outcomes:
        assert_ok(o.response)
    counts = run_counts(markers)
    assert all(s >= 1 and d >= 1 for s, d in counts), counts
    print("runs per action (starts, ends):", counts, "UNAVAILABLE results retried:", RETRIED)


# 5 ---------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_redis_restart_without_persistence_gives_not_found(tmp_path: Path) -> None:
    """The scheduler's Redis restarts empty (no persistence; the CAS lives in another
    Redis). WaitExecution on an operation it forgot answers NOT_FOUND at once, so a
    client re-executes; nobody hangs, and every action completes."""
    runs = tmp_path / "runs"
    runs.mkdir()
    cas = RedisServer(data_dir=str(tmp_path / "cas-redis")).start()
    try:
        with Cluster(tmp_path, frontend_args=[*FLAGS, "--cas-redis", cas.url]) as c:
            c.add_frontend()
            target = fe(c)
            add_workers(c, target, 2)
            client = ReapiClient(target)
            try:
                await wait_workers(c, 2)
                markers = [runs / f"a{i}" for i in range(5)]
                digests = [await client.prepare(script(m, "sleep 1.5")) for m in markers]
                tasks = await run_all([client], digests, 60)
                names: list[str] = []
                async for op in client.execution.Execute(
                    re_pb2.ExecuteRequest(action_digest=digests[-1], skip_cache_lookup=True)
                ):
                    names.append(op.name)
                    break
                await until(lambda: sum(bool(lines(m)) for m in markers) >= 2, 20, "running")
                c.stop_redis(kill=True)
                await asyncio.sleep(1)
                c.start_redis()
                start = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in client.execution.WaitExecution(
                        re_pb2.WaitExecutionRequest(name=names[0]), timeout=10
                    ):
                        pass
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value
                assert time.monotonic() - start < 5
                outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            except BaseException:
                print(c.logs())
                raise
            finally:
                await client.close()
    finally:
        cas.cleanup()
    for o in outcomes:
        assert_ok(o.response)
    assert sum(len(o.names) > 1 for o in outcomes) >= 1, "some client had to re-execute"
    counts = run_counts(markers)
    assert all(d >= 1 for _, d in counts), counts
    print("runs per action (starts, ends):", counts)


# 6 ---------------------------------------------------------------------------------------

POISON_ATTEMPTS = 2


async def poison_run(
    tmp_path: Path, restart_after: float
) -> tuple[re_pb2.ExecuteResponse, list[str], list[str], str]:
    """Run the poison action on three single-thread workers with a supervisor that
    restarts a dead worker (same identity) `restart_after` seconds after it died.
    Returns (poison ExecuteResponse, deaths, marker lines, the poison action's digest
    "hash-size"); checks a normal action after."""
    marker = tmp_path / "runs"
    with Cluster(tmp_path, frontend_args=[*FLAGS, "--max-attempts", str(POISON_ATTEMPTS)]) as c:
        c.add_frontend()
        target = fe(c)
        add_workers(c, target, 3)
        deaths: list[str] = []
        dead_since: dict[int, float] = {}

        async def supervisor() -> None:
            while True:
                for i, w in enumerate(c.workers):
                    if w.alive():
                        continue
                    if i not in dead_since:
                        dead_since[i] = time.monotonic()
                        deaths.append(f"w{i}")
                    elif time.monotonic() - dead_since[i] >= restart_after:
                        del dead_since[i]
                        c.restart_worker(i)
                await asyncio.sleep(0.1)

        sup = asyncio.create_task(supervisor())
        client = ReapiClient(target)
        try:
            await wait_workers(c, 3)
            poison = await client.prepare(
                ["/bin/sh", "-c", f'echo "start $WHO $$" >> {marker}; kill -9 $PPID; sleep 5']
            )
            outcome = await asyncio.wait_for(client.execute(poison, deadline=60), 60)
            await asyncio.sleep(0.5)
            ok = await client.prepare(["/bin/sh", "-c", "echo fine"])
            after = await asyncio.wait_for(client.execute(ok, deadline=30), 30)
        except BaseException:
            print(c.logs())
            raise
        finally:
            sup.cancel()
            await client.close()
    assert_ok(after.response)
    assert stdout_is(after.response, "fine\n")
    print("poison:", outcome.response.status, "deaths:", deaths, "runs:", lines(marker))
    return outcome.response, deaths, lines(marker), f"{poison.hash}-{poison.size_bytes}"


@pytest.mark.timeout(90)
async def test_poison_action_fails_after_attempt_budget(tmp_path: Path) -> None:
    """An action that SIGKILLs the worker running it (`kill -9 $PPID`: the command's
    parent is the worker process). A supervisor restarts a dead worker after 5 s (past
    the worker timeout, like a crash-loop back-off). The scheduler requeues the action
    on each lost worker until --max-attempts assignments, then fails it with
    UNAVAILABLE naming the last worker; exactly that many workers died."""
    response, deaths, runs, action = await poison_run(tmp_path, restart_after=5)
    status = response.status
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0], status
    assert "disappeared while task was executing" in status.message, status.message
    assert '"proc":"w' in status.message, "the message names the worker"
    assert action in status.message, "the message names the action"
    assert f"attempt {POISON_ATTEMPTS} of {POISON_ATTEMPTS}" in status.message, status.message
    assert len(deaths) == POISON_ATTEMPTS, deaths
    assert len(runs) == POISON_ATTEMPTS


@pytest.mark.timeout(90)
async def test_poison_action_with_fast_supervisor_respects_attempt_budget(
    tmp_path: Path,
) -> None:
    """As above, but the supervisor restarts a dead worker at once (systemd's
    Restart=always): no more than --max-attempts workers may die."""
    response, deaths, _, action = await poison_run(tmp_path, restart_after=0)
    assert len(deaths) <= POISON_ATTEMPTS, (deaths, response.status)
    assert response.status.code == grpc.StatusCode.UNAVAILABLE.value[0], response.status
    assert action in response.status.message, response.status.message


# Timings that once stranded work (FAST alone: busy sync interval 10 s > worker timeout
# 3 s; retention 3 s < the 5 s waiter touch period). The scheduler now caps both. -------


@pytest.mark.timeout(60)
async def test_busy_worker_within_worker_timeout_is_not_lost(tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    with Cluster(tmp_path, frontend_args=[*FAST, "--operation-retention", "10s"]) as c:
        c.add_frontend()
        add_workers(c, fe(c), 2)
        client = ReapiClient(fe(c))
        try:
            await wait_workers(c, 2)
            digest = await client.prepare(script(marker, "sleep 5"))
            outcome = await asyncio.wait_for(client.execute(digest, deadline=40), 40)
        finally:
            await client.close()
    assert_ok(outcome.response)
    assert run_counts([marker]) == [(1, 1)], lines(marker)


@pytest.mark.timeout(60)
async def test_watched_operation_outlives_short_retention(tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    flags = [*FAST, "--busy-sync-interval", "1s"]
    with Cluster(tmp_path, frontend_args=flags) as c:
        c.add_frontend()
        add_workers(c, fe(c), 1)
        client = ReapiClient(fe(c))
        try:
            await wait_workers(c, 1)
            digest = await client.prepare(script(marker, "sleep 5"))
            outcome = await asyncio.wait_for(client.execute(digest, deadline=15), 20)
        finally:
            await client.close()
    assert_ok(outcome.response)
    assert len(outcome.names) == 1, f"the client had to re-execute: {outcome.names}"
    assert run_counts([marker]) == [(1, 1)], lines(marker)
