"""Cost of /metrics and of the queue pages (run by hand): `python bench/metrics_bench.py`.

Starts its own redis-server (never 6379) and a real `redbarn frontend --metrics-listen`
process, then:

1. scrape cost: for N platform queues (each created by one idle worker's Synchronize,
   with `--queued` operations queued on it), the frontend process's CPU time (utime +
   stime from /proc) over `--seconds` of scraping /metrics ten times a second, minus the
   same period without scraping, divided by scrapes and by platform queues: the issue's
   "under 1 ms of frontend CPU per scrape per platform queue";
2. pages: with 1,000 queued operations on one platform queue, the time to render the
   first page of /operations, the next page, and the size class page (queued
   operations, paged), each the median of five.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cluster import wait_serving
from reapi_client import digest_of

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.runtime.redisserver import RedisServer, free_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def platform(i: int) -> re_pb2.Platform:
    return re_pb2.Platform(properties=[re_pb2.Platform.Property(name="pool", value=f"p{i:04d}")])


def make_queues(target: str, n: int, queued: int) -> None:
    """n platform queues, each with one idle (prefer_being_idle) worker and `queued`
    operations that no one runs (the worker stays idle: it is never asked again)."""
    channel = grpc.insecure_channel(target)
    sync = rw_grpc.OperationQueueStub(channel).Synchronize
    cas = re_grpc.ContentAddressableStorageStub(channel)
    execution = re_grpc.ExecutionStub(channel)
    streams = []
    for i in range(n):
        req = rw_pb2.SynchronizeRequest(
            worker_id={"bench": str(i)}, platform=platform(i), prefer_being_idle=True
        )
        req.current_state.idle.SetInParent()
        sync(req, timeout=10)
        for j in range(queued):
            cmd = re_pb2.Command(arguments=["true", str(i), str(j)]).SerializeToString()
            root = re_pb2.Directory().SerializeToString()
            action = re_pb2.Action(
                command_digest=digest_of(cmd), input_root_digest=digest_of(root),
                platform=platform(i), do_not_cache=True,
            ).SerializeToString()  # fmt: skip
            Req = re_pb2.BatchUpdateBlobsRequest.Request
            cas.BatchUpdateBlobs(
                re_pb2.BatchUpdateBlobsRequest(
                    requests=[Req(digest=digest_of(b), data=b) for b in (cmd, root, action)]
                ),
                timeout=10,
            )
            stream = execution.Execute(
                re_pb2.ExecuteRequest(action_digest=digest_of(action), skip_cache_lookup=True)
            )
            next(stream)  # queued; the stream stays open so the operation stays
            streams.append(stream)
    make_queues.keep = streams  # type: ignore[attr-defined]


def scrape_cost(pid: int, http: str, queues: int, seconds: float) -> tuple[float, float]:
    """(ms of frontend CPU per scrape per platform queue, ms per scrape)."""
    time.sleep(1.0)
    idle0 = cpu_seconds(pid)
    time.sleep(seconds)
    idle = cpu_seconds(pid) - idle0
    start = cpu_seconds(pid)
    scrapes = 0
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        get(http + "/metrics")
        scrapes += 1
        next_at += 0.1
        time.sleep(max(0.0, next_at - time.monotonic()))
    busy = cpu_seconds(pid) - start
    per_scrape = max(0.0, busy - idle) / scrapes * 1000
    return per_scrape / queues, per_scrape


def page_times(http: str) -> dict[str, float]:
    import re

    def timed(path: str) -> tuple[float, str]:
        runs = []
        body = ""
        for _ in range(5):
            t = time.perf_counter()
            body = get(http + path).decode()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs) * 1000, body

    out = {}
    out["/operations (first page of 100)"], body = timed("/operations")
    after = re.search(r"href='(/operations\?after=[^']+)'", body)
    assert after, body[-500:]
    out["/operations (second page)"], _ = timed(after.group(1))
    home = get(http + "/").decode()
    q = re.search(r"href='(/queue\?[^']+)'", home)
    assert q
    path = q.group(1).replace("&amp;", "&")
    for _ in range(3):  # down the invocation tree to where the operations are queued
        ms, body = timed(path)
        if "Queued operations here (0," not in body:
            out["size class page (queued, 100 per page)"] = ms
            break
        child = re.search(r"href='(/queue\?[^']*inv=[^']+)'", body)
        assert child
        path = child.group(1).replace("&amp;", "&")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", default="1,10,50")
    ap.add_argument("--queued", type=int, default=10, help="queued operations per queue")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.queues.split(",")]:
            run(Path(tmp) / f"q{n}", n, args.queued, args.seconds, pages=False)
        run(Path(tmp) / "pages", 1, 1000, args.seconds, pages=True)


def run(tmp: Path, n: int, queued: int, seconds: float, *, pages: bool) -> None:
    tmp.mkdir()
    redis = RedisServer(data_dir=str(tmp / "redis")).start()
    port, http_port = free_port(), free_port()
    log = open(tmp / "frontend.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "redbarn", "frontend", "--listen", f"127.0.0.1:{port}",
         "--redis", redis.url, "--metrics-listen", f"127.0.0.1:{http_port}",
         "--worker-timeout", "10m", "--operation-retention", "10m", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        target, http = f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
        wait_serving(target)
        make_queues(target, n, queued)
        if pages:
            for path, ms in page_times(http).items():
                print(f"{path}: {ms:.1f} ms (median of 5, 1,000 queued operations)")
            return
        per_queue, per_scrape = scrape_cost(proc.pid, http, n, seconds)
        size = len(get(http + "/metrics"))
        print(
            f"{n} platform queues x {queued} queued: {per_scrape:.2f} ms frontend CPU per "
            f"scrape, {per_queue:.3f} ms per scrape per platform queue ({size} bytes)"
        )
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        redis.cleanup()


if __name__ == "__main__":
    main()
