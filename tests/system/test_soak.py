"""Soak: many actions from 50 concurrent clients while a random fault strikes every few
seconds (worker SIGKILL + restart, frontend SIGKILL + restart, Redis SIGKILL + restart
with its AOF). At the end, tests/system/invariants.py checks Redis and what the clients
saw. REDBARN_SOAK_ACTIONS sets the number of actions (default 5,000: about 3.5 min on 2 cores);
REDBARN_SOAK_SEED picks the fault sequence; REDBARN_SOAK_FAULTS (comma-separated subset of
worker,frontend,redis) the kinds of fault.

Clients behave like Bazel: they reattach with WaitExecution on UNAVAILABLE, re-execute
on NOT_FOUND (tests/reapi_client.py), and re-upload and retry when inputs went missing
(FAILED_PRECONDITION), which a Redis crash can cause for blobs written in its last
second (appendfsync everysec).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
import redis
from cluster import Cluster
from reapi_client import ReapiClient, digest_of

from redbarn.proto import remote_execution_pb2 as re_pb2

from . import invariants
from .conftest import FAST

pytestmark = [pytest.mark.system, pytest.mark.slow]

ACTIONS = int(os.environ.get("REDBARN_SOAK_ACTIONS", "5000"))  # ~3.5 min on 2 cores
CLIENTS = 50
FAULTS = os.environ.get("REDBARN_SOAK_FAULTS", "worker,frontend,redis").split(",")
FRONTENDS = 3
WORKERS = 3
WORKER_THREADS = 2
FAULT_EVERY = (2.0, 5.0)  # seconds between faults, uniform
RETENTION = 6.0
WORKER_TIMEOUT = 3.0
PQ_TIMEOUT = 5.0
# FAST, made consistent (see test_faults.FLAGS); short queue timeout so that the platform
# queue goes once the workers are stopped, and the key count returns to its baseline.
FLAGS = [
    *FAST,
    "--busy-sync-interval", "1s",
    "--operation-retention", f"{RETENTION:g}s",
    "--platform-queue-timeout", f"{PQ_TIMEOUT:g}s",
    "--log-level", "warning",
]  # fmt: skip


RETRIED_RESULTS = {
    c.value[0]: c
    for c in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
}


def rotated(ports: list[int], k: int) -> str:
    """A multi-address target starting at frontend k (pick_first spreads the load)."""
    order = ports[k % len(ports) :] + ports[: k % len(ports)]
    return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in order)


class Stats(Counter[str]):
    pass


async def client_loop(
    k: int,
    target: str,
    mine: list[int],
    runs: Path,
    results: dict[int, invariants.ActionResult],
    stats: Stats,
    latencies: list[float],
) -> None:
    client = ReapiClient(target, invocation=f"soak-{k}")
    try:
        for i in mine:
            res = results.setdefault(i, invariants.ActionResult())
            argv = ["/bin/sh", "-c", f"echo run >> {runs}/{i}; echo out-{i}"]
            start = time.monotonic()
            for _ in range(8):  # Bazel re-uploads missing inputs and retries
                try:
                    digest = await client.prepare(argv)
                    outcome = await client.execute(digest, deadline=180)
                except grpc.aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        stats["precondition_retries"] += 1
                        stats[f"FP: {(err.details() or '')[:60]}"] += 1
                        continue
                    res.errors.append(f"{err.code().name}: {err.details()}")
                    break
                except Exception as err:  # a timeout: recorded, judged by the invariants
                    res.errors.append(repr(err))
                    break
                code = outcome.response.status.code
                if code == grpc.StatusCode.FAILED_PRECONDITION.value[0]:
                    stats["precondition_retries"] += 1
                    continue
                if code in RETRIED_RESULTS:
                    # Bazel's RemoteRetrier retries an ExecuteResponse with these statuses
                    # (e.g. a worker that could not reach the CAS while Redis was down).
                    stats[f"retried_{RETRIED_RESULTS[code].name}"] += 1
                    continue
                res.finals.append(outcome.response)
                stats["reattaches"] += outcome.reattaches
                stats["re_executions"] += max(0, len(outcome.names) - 1)
                latencies.append(time.monotonic() - start)
                break
    finally:
        await client.close()


async def fault_loop(c: Cluster, rng: random.Random, log: list[str], stop: asyncio.Event) -> None:
    """A random fault every few seconds; each runs in a thread (the cluster helpers block)."""
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(*FAULT_EVERY))
            return
        except TimeoutError:
            pass
        kind = rng.choice(FAULTS)
        at = f"{time.monotonic() - t0:6.1f}s"
        if kind == "worker":
            i = rng.randrange(len(c.workers))
            down = rng.uniform(0, 2)
            log.append(f"{at} SIGKILL worker-{i}, restart after {down:.1f}s")

            def worker_fault(i: int = i, down: float = down) -> None:
                c.workers[i].kill()
                time.sleep(down)
                c.restart_worker(i)

            await asyncio.to_thread(worker_fault)
        elif kind == "frontend":
            i = rng.randrange(len(c.frontends))
            down = rng.uniform(0.2, 2)
            log.append(f"{at} SIGKILL frontend-{i}, restart after {down:.1f}s")

            def frontend_fault(i: int = i, down: float = down) -> None:
                c.frontends[i].kill()
                time.sleep(down)
                c.restart_frontend(i)

            await asyncio.to_thread(frontend_fault)
        else:
            down = rng.uniform(0.5, 2)
            log.append(f"{at} SIGKILL redis (AOF), restart after {down:.1f}s")

            def redis_fault(down: float = down) -> None:
                c.stop_redis(kill=True)
                time.sleep(down)
                c.start_redis()

            await asyncio.to_thread(redis_fault)


def worker_count(r: redis.Redis) -> int:
    return sum(int(r.hlen(k)) for k in r.scan_iter("redbarn:v1:{*}:workers"))


def count_runs(runs: Path, n: int) -> Counter[int]:
    """How many times each action's command ran (from its marker file)."""
    out: Counter[int] = Counter()
    for i in range(n):
        try:
            out[len((runs / str(i)).read_text().splitlines())] += 1
        except FileNotFoundError:
            out[0] += 1
    return out


@pytest.mark.timeout(540)
async def test_soak_with_random_faults(tmp_path: Path) -> None:
    seed = int(os.environ.get("REDBARN_SOAK_SEED", "0")) or random.randrange(1, 10**6)
    rng = random.Random(seed)
    runs = tmp_path / "runs"
    runs.mkdir()
    results: dict[int, invariants.ActionResult] = {}
    stats = Stats()
    latencies: list[float] = []
    faults: list[str] = []
    with Cluster(tmp_path, frontend_args=FLAGS, redis_aof=True) as c:
        r = redis.Redis.from_url(c.redis_url)
        try:
            for _ in range(FRONTENDS):
                c.add_frontend()
            baseline = invariants.scheduler_keys(r)
            for k in range(WORKERS):
                c.add_worker(
                    rotated(c.frontend_ports, k),
                    "--log-level", "warning",
                    concurrency=WORKER_THREADS,
                )  # fmt: skip
            end = time.monotonic() + 30
            while worker_count(r) < WORKERS * WORKER_THREADS:
                assert time.monotonic() < end, "workers did not register"
                await asyncio.sleep(0.1)
            t0 = time.monotonic()
            stop = asyncio.Event()
            injector = asyncio.create_task(fault_loop(c, rng, faults, stop))
            shares = [list(range(k, ACTIONS, CLIENTS)) for k in range(CLIENTS)]
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        client_loop(
                            k, rotated(c.frontend_ports, k), mine, runs, results, stats, latencies
                        )
                        for k, mine in enumerate(shares)
                    )
                ),
                420,
            )
            elapsed = time.monotonic() - t0
            stop.set()
            await injector

            def correct(i: int, resp: object) -> str | None:
                assert isinstance(resp, re_pb2.ExecuteResponse)
                if resp.status.code != 0 or resp.result.exit_code != 0:
                    return f"failed: {resp.status.code} {resp.status.message!r}"
                want = f"out-{i}\n".encode()
                got = resp.result
                if got.stdout_raw == want or (
                    not got.stdout_raw and got.stdout_digest == digest_of(want)
                ):
                    return None
                return f"wrong output {got.stdout_raw!r} {got.stdout_digest}"

            violations = invariants.check_results(results, range(ACTIONS), correct)
            # Quiescence: the last completions are recorded, then nothing is in flight.
            await asyncio.sleep(2)
            violations += invariants.check_no_work_left(r)
            for w in c.workers:
                w.stop(grace=10)
            await asyncio.sleep(WORKER_TIMEOUT + 2.5)
            # A frontend killed near the end may have left a stopped worker's park lease
            # (up to 2 s x 8 holds + 3 s): wait that out, then one reaper tick.
            await asyncio.sleep(min(30.0, invariants.seconds_to_last_lease(r)) + 2.5)
            violations += invariants.check_no_workers_left(r)
            await asyncio.sleep(max(RETENTION, PQ_TIMEOUT) + 2.5)
            violations += invariants.check_baseline(r, baseline)
        except BaseException:
            print("\n".join(faults))
            print(c.logs())
            raise
        finally:
            r.close()
    ran = count_runs(runs, ACTIONS)
    latencies.sort()
    report = {
        "seed": seed,
        "actions": ACTIONS,
        "clients": CLIENTS,
        "elapsed_s": round(elapsed, 1),
        "actions_per_s": round(ACTIONS / elapsed, 1),
        "faults": Counter(f.split()[2].split("-")[0] for f in faults),
        "runs_per_action": dict(sorted(ran.items())),
        "p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_s": round(latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        **stats,
        "violations": len(violations),
    }
    print("SOAK", json.dumps(report))
    print("\n".join(faults))
    assert not violations, "\n".join(violations[:50])
    assert ran[0] == 0, "every action ran at least once"


@pytest.mark.timeout(30)
def test_invariant_checker_sees_leftovers(tmp_path: Path) -> None:
    """The checker is not vacuous: each leftover it must catch, planted by hand."""
    from redbarn.queue import keys
    from redbarn.queue.codec import SEP
    from redbarn.runtime.redisserver import RedisServer

    server = RedisServer(data_dir=str(tmp_path / "redis")).start()
    r = redis.Redis.from_url(server.url)
    try:
        baseline = invariants.scheduler_keys(r)
        assert invariants.check_no_work_left(r) == []
        p = "0123456789abcdef"
        wk = '0000000000 {"hostname":"h"}'
        record = SEP.join(["x", "0", "1", "1", "0", "0", "d-1", "0", "", wk, "0", "op"])
        r.hset(keys.domain_key(p, "tasks"), mapping={"t1": record, "t1|a": b"\x00"})
        r.zadd(keys.domain_key(p, "queued"), {"member": 0})
        r.hset(keys.domain_key(p, "workers"), wk, "t1")
        r.zadd(keys.domain_key(p, "leases"), {wk: 1})
        r.set("redbarn:v1:cas:{aa}:1", b"x")  # storage: not part of the baseline
        work = invariants.check_no_work_left(r)
        assert any("t1 still executing" in v for v in work), work
        assert any("1 operations queued" in v for v in work), work
        left = invariants.check_no_workers_left(r)
        assert any("1 workers left" in v for v in left) and any("1 leases" in v for v in left)
        assert len(invariants.check_baseline(r, baseline)) == 1
        r.delete(*(keys.domain_key(p, w) for w in ("tasks", "queued", "workers", "leases")))
        assert invariants.check_baseline(r, baseline) == []
    finally:
        r.close()
        server.cleanup()
    ok = re_pb2.ExecuteResponse()
    results = {0: invariants.ActionResult([ok]), 1: invariants.ActionResult([ok, ok])}
    found = invariants.check_results(results, range(3), lambda i, resp: None)
    assert found == ["action 1: 2 final results", "action 2: no final result (errors: [])"]
