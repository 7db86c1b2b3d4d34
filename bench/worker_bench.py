"""Worker benchmarks, run by hand: `.venv/bin/python bench/worker_bench.py`.

1. Input materialisation: an input tree of 10,000 files (1 KiB each, distinct
   contents, 100 directories), cold (every Directory and file blob fetched from a
   CAS server into an empty local cache, then hardlinked) and warm (a second build
   directory from the same worker: Directory messages from its in-memory cache,
   files hardlinked from its local file cache). Reported in files/s; cold is bound
   by creating 10,000 files on disk and varies a lot on a shared VM.
2. Worker CPU overhead per no-op action (`true`): a real `redbarn worker` process
   (concurrency 1) runs N actions handed out by an in-process fake scheduler; the
   worker's own user+system CPU (from /proc/<pid>/stat, which excludes its waited-for
   children, i.e. the command itself) divided by N.

The CAS and scheduler are the in-memory fakes of tests/worker; for 1. they share the
benchmark's process and event loop, so the cold number includes serving the blobs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time

import grpc

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "worker")
)

from worker_fakes import (
    FakeScheduler,
    FakeStorage,
    Tree,
    make_action,
    start_server,
    upload_tree,
)

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker import inputs
from redbarn.worker.cache import LocalCache
from redbarn.worker.cas import CasClient, Scope
from redbarn.worker.cli import CHANNEL_OPTIONS

SCOPE = Scope("", re_pb2.DigestFunction.SHA256)


def _tree(files: int, dirs: int, size: int) -> Tree:
    spec = Tree()
    for i in range(files):
        content = i.to_bytes(8, "big") + os.urandom(size - 8)
        spec.files[f"d{i % dirs:03d}/f{i:05d}"] = (content, i % 10 == 0)
    return spec


async def _materialise(
    cas: CasClient,
    cache: LocalCache,
    directories: inputs.DirectoryCache,
    root_digest: re_pb2.Digest,
    dest: str,
) -> float:
    started = time.perf_counter()
    tree = await inputs.fetch_tree(cas, SCOPE, root_digest, directories)
    sources = await cache.ensure(cas, SCOPE, [w for _, w in tree.files])
    try:
        await asyncio.to_thread(inputs.link_tree, tree, dest, sources)
    finally:
        cache.unpin(sources)
    return time.perf_counter() - started


async def bench_inputs(files: int, dirs: int, size: int, rounds: int) -> None:
    storage = FakeStorage()

    root_digest = upload_tree(storage, _tree(files, dirs, size))
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    work = tempfile.mkdtemp(prefix="redbarn-bench-")
    try:
        cas = CasClient(channel)
        colds, warms = [], []
        for r in range(rounds):
            cache = LocalCache(os.path.join(work, f"cache{r}"), 10 << 30)
            directories = inputs.DirectoryCache()
            dest = os.path.join(work, f"cold{r}")
            os.mkdir(dest)
            colds.append(await _materialise(cas, cache, directories, root_digest, dest))
            for w in range(3):
                dest = os.path.join(work, f"warm{r}-{w}")
                os.mkdir(dest)
                warms.append(await _materialise(cas, cache, directories, root_digest, dest))
            cache.close()
        cold, warm = min(colds), min(warms)
        print(f"input tree: {files} files x {size} B in {dirs} directories")
        print(
            f"  cold (CAS -> cache -> hardlinks): {cold * 1000:8.1f} ms  {files / cold:10.0f} files/s"
        )
        print(
            f"  warm (cache -> hardlinks):        {warm * 1000:8.1f} ms  {files / warm:10.0f} files/s"
        )
    finally:
        await channel.close()
        await server.stop(None)
        shutil.rmtree(work, ignore_errors=True)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_noop(actions: int) -> None:
    storage, scheduler = FakeStorage(), FakeScheduler(poll=5.0)
    server, port = await start_server(storage, scheduler)
    work = tempfile.mkdtemp(prefix="redbarn-bench-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redbarn.worker",
        "--frontend", f"127.0.0.1:{port}", "--concurrency", "1",
        "--build-dir", os.path.join(work, "build"), "--cache-dir", os.path.join(work, "cache"),
        "--log-level", "WARNING",
    )  # fmt: skip
    try:
        digest, action = make_action(storage, ["true"], do_not_cache=True)

        async def one() -> None:
            await asyncio.wait_for(scheduler.submit(digest, action).result, 30)

        for _ in range(20):  # warm-up: imports, connections
            await one()
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        for _ in range(actions):
            await one()
        cpu1, t1 = _cpu_seconds(proc.pid), time.perf_counter()
        print(f"no-op actions (`true`), {actions} in sequence, one worker thread:")
        print(
            f"  worker CPU per action: {(cpu1 - cpu0) / actions * 1000:6.2f} ms (user+sys, command excluded)"
        )
        print(
            f"  wall time per action:  {(t1 - t0) / actions * 1000:6.2f} ms (incl. fake scheduler + CAS)"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await server.stop(None)
        shutil.rmtree(work, ignore_errors=True)


async def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--files", type=int, default=10000)
    p.add_argument("--dirs", type=int, default=100)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--actions", type=int, default=200)
    args = p.parse_args()
    await bench_inputs(args.files, args.dirs, args.size, args.rounds)
    await bench_noop(args.actions)


if __name__ == "__main__":
    asyncio.run(main())
