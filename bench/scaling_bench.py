"""Inputs of docs/scaling.md's capacity model that the other benches do not report
(run by hand): `.venv/bin/python bench/scaling_bench.py idle|clients [options]`.

idle: one private redis-server, two `redbarn frontend` processes on it (default
  settings unless --frontend-arg), and --workers synthetic workers
  (bench/frontend_bench.py's, spread over both frontends) that Synchronize and park
  with no work queued. After --warmup seconds, INFO commandstats is read at both ends
  of a --seconds window: Redis commands/s in total and per parked worker, by command
  (commands run inside scripts are counted by Redis too, and listed apart), and the
  Synchronize calls the workers made meanwhile. This counts the reaper and every other
  background loop of both frontends, as the idle target of issue 19 does.

clients: the frontend-side CPU of one scheduler-sized script call (EVALSHA of a
  one-line script with 13 keys in one hash slot), --calls calls at --inflight in
  flight, through FastRedis (one server), redis-py's Redis (one server), redis-py's
  RedisCluster and FastCluster (on a 3-master cluster this starts): what a cluster
  costs the frontend with either client. Process CPU (user+system) divided by calls, best of
  --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
from frontend_bench import (
    cpu_seconds,
    run_load,
    start_frontend,
    upload_actions,
    wait_serving,
    worker_process,
)

from redbarn.queue import keys
from redbarn.runtime.redisserver import RedisServer

REPO = Path(__file__).resolve().parents[1]


def commandstats(url: str) -> dict[str, int]:
    with redis.Redis.from_url(url) as r:
        stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def idle(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="redbarn-scaling-bench-"))
    server = RedisServer().start()
    frontends = []
    try:
        for i in range(2):
            frontends.append(start_frontend(server.url, tmp, i, args.frontend_arg))
        for fe in frontends:
            wait_serving(fe)
        ctx = mp.get_context("spawn")
        counters = ctx.Array("q", 4, lock=False)
        workers = ctx.Process(
            target=worker_process,
            args=([fe.target for fe in frontends], args.workers, counters),
            daemon=True,
        )
        workers.start()
        time.sleep(args.warmup)
        before, syncs0, t0 = commandstats(server.url), counters[0], time.monotonic()
        time.sleep(args.seconds)
        after, syncs1, t1 = commandstats(server.url), counters[0], time.monotonic()
        workers.terminate()
        elapsed = t1 - t0
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        # INFO itself is one call per read; leave it out.
        delta["info"] = max(0, delta.get("info", 0) - 1)
        from_clients = ("evalsha", "eval", "fcall", "fcall_ro")
        client_calls = sum(
            v for k, v in delta.items() if k in from_clients or not _inside_scripts(k)
        )
        total = sum(delta.values())
        print(
            f"idle: {args.workers} parked workers over 2 frontends, {elapsed:.0f} s "
            f"after {args.warmup:.0f} s warm-up; frontend args {args.frontend_arg or 'default'}"
        )
        print(
            f"  Synchronize calls: {(syncs1 - syncs0) / elapsed:.2f}/s "
            f"({(syncs1 - syncs0) / elapsed / args.workers:.3f}/s per worker)"
        )
        print(
            f"  Redis commands (all, incl. inside scripts): {total / elapsed:.2f}/s, "
            f"{total / elapsed / args.workers:.4f}/s per worker"
        )
        print(
            f"  Redis calls from clients (scripts + plain commands): "
            f"{client_calls / elapsed:.2f}/s, {client_calls / elapsed / args.workers:.4f}/s "
            "per worker"
        )
        for name, n in sorted(delta.items(), key=lambda kv: -kv[1]):
            if n:
                print(f"    {name:24s} {n / elapsed:9.2f}/s")
    finally:
        for fe in frontends:
            fe.stop()
        server.cleanup()


def _inside_scripts(command: str) -> bool:
    """Commands the scheduler's scripts run (counted by commandstats as well); the
    frontends' own plain commands are few: ping, time, hget(all), pubsub, subscribe."""
    return command not in (
        "ping", "time", "subscribe", "pubsub|numsub", "hgetall", "get", "set", "hsetnx",
        "client|setinfo", "client|setname", "hello", "select", "auth", "script|load", "info",
    )  # fmt: skip


async def _cpu_per_call(call: Callable[[], Awaitable[Any]], calls: int, inflight: int) -> float:
    gate = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one() for _ in range(200)))  # warm: connections, script load
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(one() for _ in range(calls)))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return cpu / calls * 1e6


def clients(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "tests"))  # the failover tests' cluster helper
    from failover_helpers import RedisNodes, start_cluster
    from redis.asyncio.cluster import RedisCluster

    from redbarn.runtime.fastredis import FastCluster, FastRedis

    tmp = Path(tempfile.mkdtemp(prefix="redbarn-scaling-bench-"))
    server = RedisServer().start()
    nodes = RedisNodes(tmp)
    try:
        ports = start_cluster(nodes, masters=3, replicas=0)
        source = "return #KEYS"
        domain_keys = keys.domain_keys("0123456789abcdef")

        async def run() -> None:
            fast = FastRedis.from_url(server.url)
            assert fast is not None
            single = redis.asyncio.Redis.from_url(server.url, max_connections=args.inflight + 8)
            cluster = RedisCluster(host="127.0.0.1", port=ports[0])
            fast_cluster = FastCluster([("127.0.0.1", ports[0])])
            subjects = [
                ("FastRedis, one server", fast.script(source)),
                ("redis-py Redis, one server", single.register_script(source)),
                ("redis-py RedisCluster, 3 masters", cluster.register_script(source)),
                ("FastCluster, 3 masters", fast_cluster.script(source)),
            ]
            print(
                f"clients: frontend-side CPU per EVALSHA (13 keys, one slot), {args.calls} "
                f"calls at {args.inflight} in flight, best of {args.rounds}"
            )
            for name, script in subjects:
                best = min(
                    [
                        await _cpu_per_call(
                            lambda s=script: s(keys=domain_keys, args=[b"x"]),  # type: ignore[misc]
                            args.calls,
                            args.inflight,
                        )
                        for _ in range(args.rounds)
                    ]
                )
                print(f"  {name:34s} {best:7.1f} us CPU/call")
            await fast.aclose()
            await single.aclose()
            await cluster.aclose()
            await fast_cluster.aclose()

        asyncio.run(run())
    finally:
        nodes.stop()
        server.cleanup()


def throughput(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "tests"))  # the failover tests' cluster helper
    import grpc
    from failover_helpers import RedisNodes, start_cluster

    from redbarn.proto import remote_execution_pb2_grpc as re_grpc

    tmp = Path(tempfile.mkdtemp(prefix="redbarn-scaling-bench-"))
    server: RedisServer | None = None
    cas_server: RedisServer | None = None
    nodes = RedisNodes(tmp / "cluster")
    frontends = []
    try:
        if args.redis == "cluster":
            ports = start_cluster(nodes, masters=3, replicas=0)
            url = f"redis+cluster://127.0.0.1:{ports[0]}"
            redis_pids = [p.pid for p in nodes.procs.values()]
        else:
            server = RedisServer().start()
            url = server.url
            assert server.proc is not None
            redis_pids = [server.proc.pid]
        extra = list(args.frontend_arg)
        if args.cas_server:
            cas_server = RedisServer().start()
            assert cas_server.proc is not None
            redis_pids.append(cas_server.proc.pid)
            extra += ["--cas-redis", cas_server.url]
        for i in range(2):
            frontends.append(start_frontend(url, tmp, i, extra))
        for fe in frontends:
            wait_serving(fe)
        ctx = mp.get_context("spawn")
        counters = ctx.Array("q", 4, lock=False)
        workers = ctx.Process(
            target=worker_process,
            args=([fe.target for fe in frontends], args.workers, counters),
            daemon=True,
        )
        workers.start()

        def cpu(pids: list[int]) -> float:
            return sum(sum(cpu_seconds(pid)) for pid in pids)

        async def run() -> None:
            channels = [grpc.aio.insecure_channel(fe.target) for fe in frontends]
            cas = re_grpc.ContentAddressableStorageStub(channels[0])
            stubs = [re_grpc.ExecutionStub(c) for c in channels]
            total = int((args.warmup + args.seconds) * 2500)
            digests = iter(await upload_actions(cas, total, f"scaling-{time.time()}"))
            stop = asyncio.Event()
            task = asyncio.create_task(run_load(stubs, digests, args.inflight, [], stop))
            await asyncio.sleep(args.warmup)
            fe_pids = [fe.proc.pid for fe in frontends]
            fe0, rd0, t0 = cpu(fe_pids), cpu(redis_pids), time.perf_counter()
            await asyncio.sleep(args.seconds)
            fe1, rd1, t1 = cpu(fe_pids), cpu(redis_pids), time.perf_counter()
            stop.set()
            load = await asyncio.wait_for(task, 30)
            done = sum(1 for t in load.finished if t0 <= t <= t1)
            print(
                f"throughput on {args.redis} ({url}), CAS "
                f"{'in its own redis-server' if args.cas_server else 'in the same Redis'}: "
                f"{args.inflight} in flight, "
                f"{args.workers} synthetic workers, {args.seconds:.0f} s window"
            )
            print(f"  actions/s {done / (t1 - t0):.0f}; errors {dict(load.errors) or 'none'}")
            print(
                f"  frontend CPU {(fe1 - fe0) / done * 1000:.2f} ms/action (both), "
                f"Redis CPU {(rd1 - rd0) / done * 1000:.2f} ms/action (all nodes)"
            )
            for c in channels:
                await c.close()

        asyncio.run(run())
        workers.terminate()
    finally:
        for fe in frontends:
            fe.stop()
        nodes.stop()
        for s in (server, cas_server):
            if s is not None:
                s.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("idle")
    a.add_argument("--workers", type=int, default=200)
    a.add_argument("--warmup", type=float, default=15)
    a.add_argument("--seconds", type=float, default=60)
    a.add_argument("--frontend-arg", action="append", default=[])
    b = sub.add_parser("clients")
    b.add_argument("--calls", type=int, default=5000)
    b.add_argument("--inflight", type=int, default=100)
    b.add_argument("--rounds", type=int, default=3)
    c = sub.add_parser("throughput")
    c.add_argument("--redis", choices=("single", "cluster"), default="cluster")
    c.add_argument("--workers", type=int, default=80)
    c.add_argument("--inflight", type=int, default=100)
    c.add_argument("--warmup", type=float, default=3)
    c.add_argument("--seconds", type=float, default=10)
    c.add_argument("--frontend-arg", action="append", default=[])
    c.add_argument("--cas-server", action="store_true", help="the CAS in its own redis-server")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"idle": idle, "clients": clients, "throughput": throughput}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
