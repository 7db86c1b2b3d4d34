"""Worker benchmarks, run by hand: `.venv/bin/python bench/worker_bench.py`.

1. Input materialisation: an input tree of 10,000 files (1 KiB each, distinct
   contents, 100 directories) through `inputs.materialise`, cold (every Directory
   and file blob fetched from a CAS server into an empty local cache, then copied
   into the build directory) and warm (a second build directory from the same
   worker: Directory messages from its in-memory cache, cache entries checked
   against their seals), each with copies (the default) and with hardlinks (what
   --run-as uses); and warm after a restart, when every entry is re-hashed once.
   Reported in files/s, with the longest event-loop stall seen meanwhile; cold is
   bound by creating files on disk and varies a lot on a shared VM.
2. Input tree limits: how long measuring and refusing a depth-30 tree bomb (2**30
   files in 31 blobs) takes, and measuring + expanding a 1,000,000-file tree, with
   the longest event-loop stall.
3. A real `redbarn worker` process (concurrency 1, in-process fake scheduler):
   its peak RSS (VmHWM) after refusing a depth-30 bomb, after 300 outputs of 1 MiB;
   and its own CPU per no-op action (`true`): user+system from /proc/<pid>/stat,
   which excludes its waited-for children (the command), divided by N.

The CAS and scheduler are the in-memory fakes of tests/worker; for 1. and 2. they
share the benchmark's process and event loop, so cold numbers include serving blobs.
Run with PYTHONPATH=<an older checkout>/src to compare with an older worker (parts
that need newer APIs then fail).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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

from redbarn.errors import FailedPrecondition
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker import builddir, inputs
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


class LoopLag:
    """The longest the event loop went without running a 10 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t - 0.01)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _materialise(
    cas: CasClient,
    cache: LocalCache,
    directories: inputs.DirectoryCache,
    root_digest: re_pb2.Digest,
    dest: str,
) -> tuple[float, float]:
    with LoopLag() as lag:
        started = time.perf_counter()
        await inputs.materialise(cas, cache, SCOPE, root_digest, dest, directories)
        took = time.perf_counter() - started
    return took, lag.worst


async def bench_inputs(files: int, dirs: int, size: int, rounds: int) -> None:
    storage = FakeStorage()

    root_digest = upload_tree(storage, _tree(files, dirs, size))
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    work = tempfile.mkdtemp(prefix="redbarn-bench-")
    n = 0

    def dest() -> str:
        nonlocal n
        n += 1
        path = os.path.join(work, f"build{n}")
        os.mkdir(path)
        return path

    try:
        cas = CasClient(channel)
        print(f"input tree: {files} files x {size} B in {dirs} directories")
        for link in (False, True):
            colds, warms, restarts = [], [], []
            for r in range(rounds):
                cache_dir = os.path.join(work, f"cache-{link}-{r}")
                cache = LocalCache(cache_dir, 10 << 30, link_inputs=link)
                directories = inputs.DirectoryCache()
                colds.append(await _materialise(cas, cache, directories, root_digest, dest()))
                for _ in range(3):
                    warms.append(await _materialise(cas, cache, directories, root_digest, dest()))
                cache.close()
                cache = LocalCache(cache_dir, 10 << 30, link_inputs=link)
                restarts.append(await _materialise(cas, cache, directories, root_digest, dest()))
                cache.close()
                for name in os.listdir(work):
                    if name.startswith("build"):
                        builddir.remove(os.path.join(work, name))
            how = "hardlinks" if link else "copies"
            for label, runs in (
                ("cold (CAS -> cache ->", colds),
                ("warm (cache ->", warms),
                ("after restart (re-hash ->", restarts),
            ):
                took = min(t for t, _ in runs)
                lag = max(g for _, g in runs)
                print(
                    f"  {label + ' ' + how + ')':36} {took * 1000:8.1f} ms "
                    f"{files / took:10.0f} files/s   loop stall <= {lag * 1000:5.1f} ms"
                )
    finally:
        await channel.close()
        await server.stop(None)
        shutil.rmtree(work, ignore_errors=True)


def _bomb(storage: FakeStorage, depth: int) -> re_pb2.Digest:
    d = storage.put_message(
        re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=storage.put(b"bomb"))])
    )
    for _ in range(depth):
        d = storage.put_message(
            re_pb2.Directory(
                directories=[
                    re_pb2.DirectoryNode(name="a", digest=d),
                    re_pb2.DirectoryNode(name="b", digest=d),
                ]
            )
        )
    return d


def _wide(storage: FakeStorage, dirs: int, per_dir: int) -> re_pb2.Digest:
    root = re_pb2.Directory()
    for i in range(dirs):
        sub = re_pb2.Directory()
        for j in range(per_dir):
            d = sub.files.add(name=f"f{j:05d}").digest
            d.hash = hashlib.sha256(b"%d" % (i * per_dir + j)).hexdigest()
            d.size_bytes = 1000
        root.directories.add(name=f"d{i:04d}", digest=storage.put_message(sub))
    return storage.put_message(root)


async def bench_limits(files: int) -> None:
    storage = FakeStorage()
    bomb, wide = _bomb(storage, 30), _wide(storage, files // 1000, 1000)
    server, port = await start_server(storage, FakeScheduler())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    try:
        cas = CasClient(channel)
        with LoopLag() as lag:
            t = time.perf_counter()
            try:
                await inputs.fetch_tree(cas, SCOPE, bomb)
            except FailedPrecondition as err:
                refused = err.message
            took = time.perf_counter() - t
        print("input tree limits:")
        print(f"  depth-30 bomb refused in {took * 1000:7.1f} ms: {refused}")
        print(f"    loop stall <= {lag.worst * 1000:5.1f} ms")
        with LoopLag() as lag:
            t = time.perf_counter()
            tree = await inputs.fetch_tree(cas, SCOPE, wide)
            took = time.perf_counter() - t
        print(
            f"  {len(tree.files)}-file tree fetched, measured and expanded in "
            f"{took * 1000:7.1f} ms; loop stall <= {lag.worst * 1000:5.1f} ms"
        )
    finally:
        await channel.close()
        await server.stop(None)


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) << 10
    return 0


WRITE_300 = (
    "import os\n"
    "os.makedirs('out', exist_ok=True)\n"
    "for i in range(300):\n"
    "    with open(f'out/{i:03d}', 'wb') as f:\n"
    "        f.write(os.urandom(1 << 20))\n"
)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_worker(actions: int) -> None:
    storage, scheduler = FakeStorage(), FakeScheduler(poll=5.0)
    server, port = await start_server(storage, scheduler)
    work = tempfile.mkdtemp(prefix="redbarn-bench-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redbarn.worker",
        "--frontend", f"127.0.0.1:{port}", "--concurrency", "1",
        "--build-dir", os.path.join(work, "build"), "--cache-dir", os.path.join(work, "cache"),
        "--log-level", "ERROR",
    )  # fmt: skip
    try:

        async def one(digest: re_pb2.Digest, action: re_pb2.Action) -> re_pb2.ExecuteResponse:
            return await asyncio.wait_for(scheduler.submit(digest, action).result, 120)

        noop = make_action(storage, ["true"], do_not_cache=True)
        for _ in range(20):  # warm-up: imports, connections
            await one(*noop)
        print("a real worker process:")
        print(f"  peak RSS after start and 20 no-op actions: {_peak_rss(proc.pid) >> 20:4d} MiB")
        inputs_root = upload_tree(storage, _tree(10000, 100, 1024))
        for label in ("cold", "warm", "warm"):
            r = await one(*make_action(storage, ["true"], root=inputs_root, do_not_cache=True))
            meta = r.result.execution_metadata
            took = (
                meta.input_fetch_completed_timestamp.ToNanoseconds()
                - meta.input_fetch_start_timestamp.ToNanoseconds()
            ) / 1e9
            print(
                f"  10,000 inputs of 1 KiB, {label}: input fetch {took * 1000:7.1f} ms, "
                f"{10000 / took:8.0f} files/s (copies)"
            )
        t = time.perf_counter()
        r = await one(*make_action(storage, ["true"], root=_bomb(storage, 30), do_not_cache=True))
        took = time.perf_counter() - t
        print(
            f"  depth-30 bomb: {r.status.message!r} in {took * 1000:.0f} ms "
            f"(incl. fake scheduler); peak RSS {_peak_rss(proc.pid) >> 20} MiB"
        )
        t = time.perf_counter()
        r = await one(
            *make_action(
                storage, [sys.executable, "-c", WRITE_300], output_paths=["out"],
                do_not_cache=True, timeout=120,
            )
        )  # fmt: skip
        took = time.perf_counter() - t
        print(
            f"  300 outputs of 1 MiB: status {r.status.code}, {took * 1000:.0f} ms; "
            f"peak RSS {_peak_rss(proc.pid) >> 20} MiB"
        )
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        for _ in range(actions):
            await one(*noop)
        cpu1, t1 = _cpu_seconds(proc.pid), time.perf_counter()
        print(f"  no-op actions (`true`), {actions} in sequence, one worker thread:")
        print(
            f"    worker CPU per action: {(cpu1 - cpu0) / actions * 1000:6.2f} ms (user+sys, command excluded)"
        )
        print(
            f"    wall time per action:  {(t1 - t0) / actions * 1000:6.2f} ms (incl. fake scheduler + CAS)"
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
    p.add_argument("--tree-files", type=int, default=1_000_000)
    p.add_argument("--only", choices=("inputs", "limits", "worker"), help="run one part only")
    args = p.parse_args()
    if args.only in (None, "inputs"):
        await bench_inputs(args.files, args.dirs, args.size, args.rounds)
    if args.only in (None, "limits"):
        await bench_limits(args.tree_files)
    if args.only in (None, "worker"):
        await bench_worker(args.actions)


if __name__ == "__main__":
    asyncio.run(main())
