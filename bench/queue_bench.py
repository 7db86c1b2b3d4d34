"""Scheduler core benchmark (run by hand): `python bench/queue_bench.py [--sizes 1000,10000,100000]
[--mode function|script]`.

Starts its own redis-server (never 6379) and prints:
- Redis calls per Synchronize in the steady state (completed + next) and per Execute;
- INFO commandstats microseconds per call of the enqueue and synchronize transitions
  (FCALL of the function library as the frontends call them, or with `--mode script`
  EVALSHA of the scripts, as on Redis before 7) with 1k / 10k / 100k queued operations
  spread over 100 invocations;
- Redis memory per queued operation (INFO memory delta / N) next to the Action's size.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from typing import Any

import redis.asyncio as aioredis

from redbarn import digests
from redbarn.frontend.operation_queue import decode_report, encode_reply
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import codec, keys
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import PollingHints, Scheduler
from redbarn.runtime.fastredis import FastRedis
from redbarn.runtime.redisserver import RedisServer

CFG = SchedulerConfig(idle_sync_timeout=0.01, platform_cache_ttl=3600)


class CountingRedis(aioredis.Redis):
    """Counts every command the client sends (a script call is one EVALSHA)."""

    calls = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.calls += 1
        return await super().execute_command(*args, **options)


class CountingFast(FastRedis):
    """A FastRedis whose commands count in CountingRedis.calls too."""

    async def execute(self, *args: Any) -> Any:
        CountingRedis.calls += 1
        return await super().execute(*args)


def make_action(n: int) -> tuple[re_pb2.Digest, re_pb2.Action]:
    a = re_pb2.Action(
        command_digest=re_pb2.Digest(hash=hashlib.sha256(b"c%d" % n).hexdigest(), size_bytes=140),
        input_root_digest=re_pb2.Digest(hash=hashlib.sha256(b"i%d" % n).hexdigest(), size_bytes=83),
    )
    data = a.SerializeToString()
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data)), a


def sync_request(
    state: str = "idle", digest: re_pb2.Digest | None = None
) -> rw_pb2.SynchronizeRequest:
    req = rw_pb2.SynchronizeRequest(worker_id={"host": "bench", "thread": "0"})
    if state == "idle":
        req.current_state.idle.SetInParent()
    else:
        assert digest is not None
        req.current_state.executing.action_digest.CopyFrom(digest)
        req.current_state.executing.completed.result.exit_code = 0
    return req


COMMAND = "evalsha"  # or fcall (--mode function)


async def commandstat_usec(r: aioredis.Redis, command: str = "") -> tuple[int, float]:
    stats = await r.info("commandstats")
    e = stats.get(f"cmdstat_{command or COMMAND}", {"calls": 0, "usec_per_call": 0.0})
    return int(e["calls"]), float(e["usec_per_call"])


async def fill(s: Scheduler, domain: str, start: int, count: int, invocations: int = 100) -> None:
    """Enqueue `count` operations straight through the enqueue script (concurrently)."""

    async def one(n: int) -> None:
        digest, a = make_action(n)
        a.timeout.seconds = 1800
        ex = rw_pb2.DesiredState.Executing(action_digest=digest, action=a, digest_function=1)
        await s.scripts.enqueue_operation(
            domain=domain,
            config=f"{s.config.script_config(domain)} bench",  # ends with the caller's fid
            opid=hashlib.md5(b"%d" % n).hexdigest(),
            dedup_key=codec.dedup_key(1, digest, ""),
            path=codec.invocation_path([("t", f"inv{n % invocations}")]),
            priority=codec.priority_field(0),
            executing=ex.SerializeToString(),
            digest=digests.key(digest),
            digest_function=1,
        )

    batch = 64
    for i in range(start, start + count, batch):
        await asyncio.gather(*(one(n) for n in range(i, min(i + batch, start + count))))


async def synchronize(s: Scheduler, req: rw_pb2.SynchronizeRequest) -> rw_pb2.SynchronizeResponse:
    return encode_reply(await s.workers.synchronize(decode_report(req)))


async def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--verbose", action="store_true", help="print the commands inside each sync")
    ap.add_argument("--mode", choices=("function", "script"), default="function")
    args = ap.parse_args()
    global COMMAND
    COMMAND = "fcall" if args.mode == "function" else "evalsha"
    server = RedisServer().start()
    r = CountingRedis.from_url(server.url)
    fast = CountingFast.from_url(server.url) if args.mode == "function" else None
    try:
        s = Scheduler(r, CFG, hints=PollingHints("bench"), fast=fast)
        await s.start()
        await synchronize(s, sync_request())  # creates the domain; parks briefly
        domain = keys.domain_id("", "{}")

        # Calls per Execute and per steady-state Synchronize.
        await s.operations.execute(
            instance_name="",
            action_digest=make_action(-1)[0],
            action=make_action(-1)[1],
            digest_function=1,
        )
        before = CountingRedis.calls
        for n in range(-101, -1):
            d, a = make_action(n)
            await s.operations.execute(
                instance_name="", action_digest=d, action=a, digest_function=1
            )
        per_execute = (CountingRedis.calls - before) / 100
        resp = await synchronize(s, sync_request())
        digest = resp.desired_state.executing.action_digest
        before = CountingRedis.calls
        for _ in range(50):
            resp = await synchronize(s, sync_request("completed", digest))
            digest = resp.desired_state.executing.action_digest
        per_sync = (CountingRedis.calls - before) / 50
        print(f"redis calls per Execute (enqueue + first view): {per_execute:.2f}")
        print(f"redis calls per Synchronize (completed + next): {per_sync:.2f}")

        # Calibration: what this machine's Redis spends on a script that does nothing.
        noop = r.register_script("return 1")
        cal = []
        for _ in range(5):
            await r.config_resetstat()
            for _ in range(400):
                await noop(keys=keys.domain_keys(domain), args=[CFG.script_config(domain)])
            cal.append((await commandstat_usec(r, "evalsha"))[1])
        print(
            f"calibration: EVALSHA of `return 1` with the 12 domain keys: best {min(cal):.1f} us/call"
        )
        print(
            f"latency columns: {COMMAND.upper()} us/call, best / median of 5 rounds "
            "(INFO commandstats)"
        )
        head = ("queued", "enqueue", "synchronize", "bytes/op", "Executing bytes")
        print(f"{head[0]:>8} {head[1]:>18} {head[2]:>18} {head[3]:>9} {head[4]:>16}")
        for size in (int(x) for x in args.sizes.split(",")):
            await r.flushall()
            await s.start()
            await synchronize(s, sync_request())
            mem0 = (await r.info("memory"))["used_memory"]
            await fill(s, domain, 0, size)
            mem1 = (await r.info("memory"))["used_memory"]
            # Latency in rounds (this is a shared machine): report the best and the median round.
            rounds = 5
            per = args.samples // rounds
            enq = []
            for i in range(rounds):
                await r.config_resetstat()
                await fill(s, domain, size + i * per, per)
                enq.append((await commandstat_usec(r))[1])
            resp = await synchronize(s, sync_request())
            digest = resp.desired_state.executing.action_digest
            syn = []
            for _ in range(rounds):
                await r.config_resetstat()
                for _ in range(per):
                    resp = await synchronize(s, sync_request("completed", digest))
                    digest = resp.desired_state.executing.action_digest
                calls, us = await commandstat_usec(r)
                assert calls == per, calls
                syn.append(us)
            if args.verbose:
                for k, v in sorted((await r.info("commandstats")).items()):
                    print(f"    {k}: {v['calls'] / per:.1f}/sync {v['usec_per_call']}us")
            enq_us = f"{min(enq):.0f} / {sorted(enq)[rounds // 2]:.0f}"
            sync_us = f"{min(syn):.0f} / {sorted(syn)[rounds // 2]:.0f}"
            d, a = make_action(0)
            a.timeout.seconds = 1800
            ex_len = len(
                rw_pb2.DesiredState.Executing(
                    action_digest=d, action=a, digest_function=1
                ).SerializeToString()
            )
            print(f"{size:>8} {enq_us:>18} {sync_us:>18} {(mem1 - mem0) / size:>9.0f} {ex_len:>16}")
    finally:
        await r.aclose()
        if fast is not None:
            await fast.aclose()
        server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
