"""One hot platform queue on a 3-master Redis Cluster, with and without --queue-shards (issue
19 item 7), by hand: `.venv/bin/python bench/shard_bench.py [--shards 1,3] [--seconds 10]`.

Per shard count K: a fresh 3-master cluster (no replicas), two `redbarn frontend`
processes on it (`--redis redis+cluster://...`, one predeclared platform queue,
`--queue-shards K`), bench/frontend_bench.py's 80 synthetic no-op workers spread over
both and its load generator (100 Executes in flight, alternating frontends) for
`--seconds`. Read from each master at both ends of the window (INFO commandstats and
INFO cpu): its FCALL calls and microseconds and its process CPU, per action.

Printed per K: actions done, actions/s, p50/p99/max latency, errors and actions never
done, then per master its share of the scheduler's FCALL time and its Redis CPU per
action. The figure that matters is the hottest master's: one platform queue in one
slot puts all of its transitions on one master (one Redis core); K shards spread them
over min(K, masters) masters. On this 2-core machine the frontends' CPU, not Redis,
bounds actions/s, so the throughput shows that sharding costs little, and the per-master
split shows what it buys on a cluster with cores to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import frontend_bench as fb  # noqa: E402
from failover_helpers import RedisNodes, start_cluster  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from redbarn.proto import remote_execution_pb2 as re_pb2  # noqa: E402
from redbarn.proto import remote_execution_pb2_grpc as re_grpc  # noqa: E402
from redbarn.runtime import eventloop  # noqa: E402


def master_stats(ports: list[int]) -> dict[int, tuple[int, int, float]]:
    """{port: (FCALL calls, FCALL usec, process CPU seconds)} of every master."""
    out = {}
    for port in ports:
        with redis.Redis(port=port, socket_timeout=5) as r:
            if r.info("replication")["role"] != "master":
                continue
            cmd = r.info("commandstats").get("cmdstat_fcall", {})
            cpu = r.info("cpu")
            out[port] = (
                int(cmd.get("calls", 0)),
                int(cmd.get("usec", 0)),
                float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            )
    return out


async def drive(targets: list[str], seconds: float, count: int) -> fb.Load:
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    try:
        cas = re_grpc.ContentAddressableStorageStub(channels[0])
        digests = await fb.upload_actions(cas, count, f"shard-{time.time_ns()}")
        stubs = [re_grpc.ExecutionStub(c) for c in channels]
        md = re_pb2.RequestMetadata(tool_invocation_id="shard-bench")
        metadata = [(fb.METADATA_HEADER, md.SerializeToString())]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, stop.set)
        task = asyncio.ensure_future(fb.run_load(stubs, iter(digests), 100, metadata, stop))
        await stop.wait()
        done, _ = await asyncio.wait([task], timeout=10)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return task.result() if done else fb.Load(unfinished=-1)
    finally:
        for c in channels:
            await c.close()


def one_run(shards: int, seconds: float, workers: int, tmp: Path) -> list[str]:
    (tmp / f"k{shards}").mkdir(parents=True)
    nodes = RedisNodes(tmp / f"k{shards}")
    frontends: list[fb.Frontend] = []
    proc = None
    try:
        ports = start_cluster(nodes, masters=3, replicas=0)
        queue = {
            "instanceNamePrefix": "",
            "platform": json_format.MessageToDict(fb.PLATFORM),
            "sizeClasses": [0],
        }
        extra = [
            "--platform-queue", json.dumps(queue), "--queue-shards", str(shards),
        ]  # fmt: skip
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
        for i in range(2):
            frontends.append(fb.start_frontend(url, tmp, 10 * shards + i, extra))
        for fe in frontends:
            fb.wait_serving(fe)
        ctx = mp.get_context("spawn")
        counters = ctx.Array("q", 4, lock=False)
        proc = ctx.Process(
            target=fb.worker_process,
            args=([fe.target for fe in frontends], workers, counters),
            daemon=True,
        )
        proc.start()
        deadline = time.monotonic() + 20
        while counters[fb.SENT] < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        before = master_stats(ports)
        fe_before = sum(sum(fb.cpu_seconds(fe.proc.pid)) for fe in frontends)
        t0 = time.monotonic()
        load = eventloop.run(
            drive([fe.target for fe in frontends], seconds, int(2500 * seconds) + 2000)
        )
        window = time.monotonic() - t0
        after = master_stats(ports)
        fe_after = sum(sum(fb.cpu_seconds(fe.proc.pid)) for fe in frontends)
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(5)
        for fe in frontends:
            fe.stop()
        nodes.stop()
    n = len(load.latencies)
    lat = sorted(load.latencies)
    pct = (lambda q: lat[min(n - 1, int(q * n))] * 1000) if n else (lambda q: 0.0)
    lines = [
        f"K={shards}: {n} actions in {window:.1f} s, {n / window:.0f}/s; latency p50 "
        f"{pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {pct(1.0):.0f} ms; errors "
        f"{dict(load.errors) or 0}; never done {load.unfinished}; frontends "
        f"{(fe_after - fe_before) / max(n, 1) * 1000:.2f} ms CPU/action",
    ]
    fcall_total = sum(after[p][1] - before[p][1] for p in after) or 1
    for port in sorted(after):
        calls = after[port][0] - before[port][0]
        usec = after[port][1] - before[port][1]
        cpu = after[port][2] - before[port][2]
        lines.append(
            f"    master :{port}: {calls / max(n, 1):5.2f} FCALL/action, "
            f"{usec / max(n, 1):6.1f} us FCALL/action ({usec / fcall_total:4.0%} of all), "
            f"Redis CPU {cpu / max(n, 1) * 1e6:6.1f} us/action"
        )
    hottest = max((after[p][2] - before[p][2]) for p in after)
    lines.append(
        f"    hottest master: {hottest / max(n, 1) * 1e6:.1f} us of Redis CPU per action "
        f"(one core runs out near {max(n, 1) / max(hottest, 1e-9):,.0f} actions/s)"
    )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="1,3", help="shard counts to run, comma separated")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="redbarn-shard-bench-"))
    counts = [int(k) for k in args.shards.split(",")]
    for r, k in itertools.product(range(args.rounds), counts):
        print("\n".join(one_run(k, args.seconds, args.workers, tmp / f"r{r}")), flush=True)
    print(f"\n(logs in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
