"""Frontend benchmark (run by hand): `.venv/bin/python bench/frontend_bench.py`.

Starts one private redis-server (redbarn.runtime.redisserver.RedisServer, never 6379), two
`python -m redbarn frontend` processes on it, and one process of synthetic workers
(`--workers` worker IDs spread over both frontends, speaking OperationQueue/Synchronize
over gRPC: idle -> executing -> at once completed with an ExecuteResponse). This
process is the load generator: distinct no-op Actions (one Command, one input root,
a different salt each) are uploaded before any timing, then Executed with
skip_cache_lookup=true, alternating between the frontends, by 1 and by 100 clients
in flight. Each client reads its Execute stream until the done Operation.

Phases are timed windows (--warmup, --seconds1, --seconds100, --monitor,
--profile-seconds): CPU and commandstats are read at both ends of a window and the
actions done inside it are counted; actions still in flight at the end get 10 s to
finish (their latencies count), then are cancelled and reported as never done. All
phases together take about 2-3 minutes.

Printed:
- actions/s end to end and Execute-to-done latency p50/p90/p99 at 1 and 100 in flight,
  with how many actions took over 50 ms / 0.5 s / 4 s / 25 s (stalls), and how much CPU
  other processes on the machine used meanwhile (the numbers are only as quiet as the
  machine);
- frontend CPU per action: both frontend processes' user+system CPU seconds over the
  window (psutil, else /proc/<pid>/stat) divided by actions; the CPU of Redis, the
  workers and this process alongside, and the frontends' idle background CPU;
- the frontend's CPU floor per unary RPC: GetCapabilities (no Redis) and
  FindMissingBlobs of two digests (one Redis call), for scale;
- Redis: INFO commandstats deltas per action (evalsha / eval / other commands, and
  each command; commands run inside scripts are counted by Redis too, so the table
  says which share of each came from scripts), then, from a MONITOR capture of a
  separate phase, the client round trips per Execute and per Synchronize by script
  and the commands each script runs inside Redis; then, from SLOWLOG (threshold 0) in
  another phase, Redis execution time per script call;
- (unless --no-profile) a py-spy profile (`pip install py-spy`) of both frontends at
  100 in flight: the functions with the most samples, self and inclusive; the raw
  collapsed stacks are kept under the temp directory printed at the end (feed them to
  flamegraph.pl or speedscope). Without --profile-native, time spent in C (grpc's
  Cython layer, protobuf, syscalls) shows as the self time of the Python frame that
  called it, often asyncio's Handle._run.

Options: `--workers N`, `--frontend-arg=--idle-sync-timeout=5s` (repeatable) passes
flags to both frontends, `--topology split` sends every Execute through the first
frontend while every worker waits on the second (the load-balanced shape, where lost
wake-ups show), `--topology one` runs a single frontend; see --help.

Every process started here is stopped at the end (also on errors and Ctrl-C); child
processes also get SIGTERM if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# The load generator and the synthetic workers run gRPC the way redbarn's own processes
# do (redbarn.runtime.grpcenv); $GRPC_EXPERIMENTS, when set, wins here as it does there.
from redbarn.runtime import grpcenv

GRPC_DEFAULTS_APPLIED = grpcenv.apply()

import grpc  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from redbarn.proto import remote_execution_pb2 as re_pb2  # noqa: E402
from redbarn.proto import remote_execution_pb2_grpc as re_grpc  # noqa: E402
from redbarn.proto import remoteworker_pb2 as rw_pb2  # noqa: E402
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc  # noqa: E402
from redbarn.queue.scripts import SCRIPT_NAMES, function_name, script_source  # noqa: E402
from redbarn.runtime import eventloop  # noqa: E402
from redbarn.runtime.redisserver import RedisServer, free_port  # noqa: E402

try:
    import psutil
except ImportError:  # /proc fallback below
    psutil = None

PLATFORM = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="OSFamily", value="linux")])
METADATA_HEADER = "build.bazel.remote.execution.v2.requestmetadata-bin"
TARGETS = {"inflight_1_p50_ms": 3.0, "inflight_100_rate": 1000.0, "fe_cpu_ms": 1.0}

# Synthetic worker counters (shared memory, one writer: the worker process).
SENT, REPLIED, ASSIGNED, ERRORS = range(4)


# --------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the benchmark process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    if psutil is not None:
        t = psutil.Process(pid).cpu_times()
        return t.user, t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, 0): CPU seconds all CPUs spent outside idle/iowait since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v[:8]) - v[3] - v[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK"), 0.0


@dataclass
class Frontend:
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def start_frontend(redis_url: str, tmp: Path, index: int, extra: Sequence[str]) -> Frontend:
    port = free_port()
    log_path = tmp / f"frontend-{index}.log"
    args = [
        sys.executable, "-m", "redbarn", "frontend",
        "--listen", f"127.0.0.1:{port}", "--redis", redis_url,
        "--log-level", "warning", "--grace-period", "1s", *extra,
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_die_with_parent,
        )
    return Frontend(port, log_path, proc)


def wait_serving(fe: Frontend, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(fe.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if fe.proc.poll() is not None:
                raise RuntimeError(f"frontend on {fe.target} exited:\n{fe.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            time.sleep(0.05)
    raise RuntimeError(f"frontend on {fe.target} not serving after {timeout}s:\n{fe.log_tail()}")


# --------------------------------------------------------------- synthetic workers


def worker_process(targets: list[str], count: int, counters: Any) -> None:
    """Entry point of the synthetic worker process (multiprocessing, spawn)."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    eventloop.run(_workers(targets, count, counters))


async def _workers(targets: list[str], count: int, counters: Any) -> None:
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [rw_grpc.OperationQueueStub(c) for c in channels]
    idle = rw_pb2.CurrentState(idle={})
    response = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0))

    async def one(i: int) -> None:
        stub = stubs[i % len(stubs)]
        worker_id = {"hostname": "bench", "thread": f"{i:03d}"}
        state = idle
        while True:
            counters[SENT] += 1
            request = rw_pb2.SynchronizeRequest(
                worker_id=worker_id, platform=PLATFORM, current_state=state
            )
            try:
                reply = await stub.Synchronize(request)
            except grpc.aio.AioRpcError:
                counters[ERRORS] += 1
                await asyncio.sleep(0.1)
                continue  # report the same state again
            counters[REPLIED] += 1
            if reply.desired_state.WhichOneof("worker_state") == "executing":
                counters[ASSIGNED] += 1
                done = rw_pb2.CurrentState.Executing(
                    action_digest=reply.desired_state.executing.action_digest, completed=response
                )
                state = rw_pb2.CurrentState(executing=done)
            else:
                state = idle

    await asyncio.gather(*(one(i) for i in range(count)))


# --------------------------------------------------------------------- load generator


def digest_of(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


async def upload_actions(cas: Any, count: int, run: str) -> list[re_pb2.Digest]:
    """`count` distinct Actions (salted) over one Command and one input root, uploaded."""
    command = re_pb2.Command(arguments=["true"], platform=PLATFORM).SerializeToString()
    node = re_pb2.FileNode(name="x", digest=digest_of(b"x"))
    root = re_pb2.Directory(files=[node]).SerializeToString()
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    shared = [Req(digest=digest_of(b), data=b) for b in (command, root, b"x")]
    out: list[re_pb2.Digest] = []
    batch: list[Any] = list(shared)
    for i in range(count):
        blob = re_pb2.Action(
            command_digest=digest_of(command),
            input_root_digest=digest_of(root),
            platform=PLATFORM,
            salt=f"{run}-{i}".encode(),
        ).SerializeToString()
        d = digest_of(blob)
        out.append(d)
        batch.append(Req(digest=d, data=blob))
        if len(batch) >= 2000 or i == count - 1:
            reply = await cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=batch))
            bad = [r for r in reply.responses if r.status.code != 0]
            if bad:
                raise RuntimeError(f"upload failed: {bad[0].status}")
            batch = []
    return out


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)  # Execute -> done, seconds
    finished: list[float] = field(default_factory=list)  # perf_counter at done
    errors: Counter[str] = field(default_factory=Counter)
    unfinished: int = 0  # still waiting when the phase's drain time ran out


async def run_load(
    stubs: Sequence[Any],
    digests: Iterator[re_pb2.Digest],
    inflight: int,
    metadata: Sequence[tuple[str, bytes]],
    stop: asyncio.Event,
) -> Load:
    """`inflight` clients Execute actions from `digests` until `stop` is set (or the
    digests run out), alternating frontends, each reading its stream to the end."""
    load = Load()
    turn = 0

    async def client() -> None:
        nonlocal turn
        for digest in digests:
            if stop.is_set():
                return
            stub = stubs[turn % len(stubs)]
            turn += 1
            request = re_pb2.ExecuteRequest(action_digest=digest, skip_cache_lookup=True)
            t0 = time.perf_counter()
            done_at = None
            try:
                async for op in stub.Execute(request, metadata=metadata):
                    if op.done:
                        done_at = time.perf_counter()
                        if not op.HasField("response"):
                            load.errors["done without response"] += 1
            except grpc.aio.AioRpcError as err:
                load.errors[err.code().name] += 1
                continue
            except asyncio.CancelledError:
                load.unfinished += 1
                raise
            if done_at is None:
                load.errors["stream ended before done"] += 1
                continue
            load.latencies.append(done_at - t0)
            load.finished.append(done_at)

    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*(client() for _ in range(inflight)))
    return load


# ------------------------------------------------------------------ measurements


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, tuple[float, float]]
    stats: dict[str, tuple[int, int]]  # command -> (calls, usec)
    counters: list[int]


class Meter:
    """Snapshots of process CPU, Redis commandstats and worker counters."""

    def __init__(self, pids: dict[str, int], redis: aioredis.Redis, counters: Any) -> None:
        self.pids = pids
        self.redis = redis
        self.counters = counters

    async def snap(self) -> Snapshot:
        info = await self.redis.info("commandstats")
        stats = {
            k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for k, v in info.items()
            if k.startswith("cmdstat_")
        }
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        cpu["machine"] = machine_busy_seconds()
        return Snapshot(time.perf_counter(), cpu, stats, list(self.counters))


@dataclass
class Phase:
    name: str
    inflight: int
    load: Load
    before: Snapshot
    after: Snapshot

    @property
    def window(self) -> float:
        return self.after.at - self.before.at

    @property
    def actions(self) -> int:
        """Actions done inside the measured window."""
        return sum(1 for t in self.load.finished if t <= self.after.at)

    def rate(self) -> float:
        return self.actions / self.window

    def pct(self, q: float) -> float:
        lat = sorted(self.load.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    def cpu(self, name: str) -> tuple[float, float]:
        u0, s0 = self.before.cpu[name]
        u1, s1 = self.after.cpu[name]
        return u1 - u0, s1 - s0

    def cpu_ms_per_action(self, prefix: str) -> float:
        total = sum(sum(self.cpu(n)) for n in self.before.cpu if n.startswith(prefix))
        return total * 1000 / max(1, self.actions)

    def commands(self) -> dict[str, tuple[int, int]]:
        """Per-command (calls, usec) deltas, without the benchmark's own INFO calls."""
        out = {}
        for cmd, (calls, usec) in self.after.stats.items():
            c0, u0 = self.before.stats.get(cmd, (0, 0))
            if cmd != "info" and calls - c0 > 0:
                out[cmd] = (calls - c0, usec - u0)
        return out

    def syncs(self) -> int:
        return self.after.counters[REPLIED] - self.before.counters[REPLIED]


async def measured(
    name: str,
    meter: Meter,
    inflight: int,
    seconds: float,
    start: Callable[[asyncio.Event], Any],
    drain: float = 10.0,
    at_end: Callable[[], Any] | None = None,
) -> Phase:
    """Run `start(stop)` for `seconds`; CPU and commandstats are read at both ends of that
    window and the actions done inside it are counted. Actions still in flight then get
    `drain` seconds to finish (their latencies count) before they are cancelled."""
    stop = asyncio.Event()
    before = await meter.snap()
    task = asyncio.ensure_future(start(stop))
    await asyncio.sleep(seconds)
    stop.set()
    after = await meter.snap()
    if at_end is not None:
        at_end()
    done, _ = await asyncio.wait({task}, timeout=drain)
    if not done:
        task.cancel()
    load = await task
    return Phase(name, inflight, load, before, after)


# ---------------------------------------------------------------- MONITOR capture


class MonitorCapture:
    """Raw MONITOR stream of the Redis server into memory, on a thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)

    def data(self) -> bytes:
        return b"".join(self.chunks)


_MON_LINE = re.compile(rb'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')


SCRIPT_COMMANDS = ("evalsha", "eval", "fcall")


def script_names() -> dict[str, str]:
    """EVALSHA sha (or FCALL function name) -> script name, for the scheduler's
    transitions (functions, or scripts on Redis before 7) and the CAS's scripts."""
    functions = {function_name(name): name for name in SCRIPT_NAMES}
    sources = {name: script_source(name) for name in SCRIPT_NAMES}
    storage = resources.files("redbarn.frontend.storage")
    for path in storage.iterdir():
        if path.name.endswith(".lua"):
            sources[path.name.removesuffix(".lua")] = path.read_text()
    shas = {hashlib.sha1(src.encode()).hexdigest(): name for name, src in sources.items()}
    return {**shas, **functions}


# Who sends each top-level command (a script by name, or a plain command).
ORIGIN = {
    "probe_blobs": "Execute",  # read the Action; Command + input root present (FindMissing)
    "enqueue_operation": "Execute",
    "touch_operation": "Execute",  # the stream re-reads its operation after a hint
    "synchronize_worker": "Synchronize",
    "unpark_worker": "Synchronize",  # a parked Synchronize ends
    "HSETNX": "Synchronize",  # platform registration (cached per frontend)
    "HGET": "Synchronize",  # a park past 1 s looks at the worker record once
    "reap_domain": "background",
    "HGETALL": "background",  # platform registry (reaper each tick; Execute when stale)
    "PING": "background",  # health
}


@dataclass
class MonitorReport:
    top: Counter[str]  # top-level command (EVALSHA resolved to the script name)
    inner: dict[str, Counter[str]]  # script -> commands it ran inside Redis
    inner_total: Counter[str]  # command -> calls from inside scripts


def parse_monitor(raw: bytes, shas: dict[str, str]) -> MonitorReport:
    top: Counter[str] = Counter()
    inner: dict[str, Counter[str]] = defaultdict(Counter)
    inner_total: Counter[str] = Counter()
    current = "?"
    for line in raw.split(b"\r\n"):
        m = _MON_LINE.match(line)
        if not m:
            continue
        who, cmd_b, arg = m.groups()
        cmd = cmd_b.decode().upper()
        if who == b"lua":
            inner[current][cmd] += 1
            inner_total[cmd] += 1
            continue
        if cmd in ("EVALSHA", "EVAL", "FCALL"):
            name = shas.get((arg or b"").decode(), f"{cmd} (unknown script)")
            current = name
            top[name] += 1
        else:
            current = "?"
            top[cmd] += 1
    return MonitorReport(top, dict(inner), inner_total)


async def read_slowlog(
    redis: aioredis.Redis, shas: dict[str, str], until: float
) -> dict[str, list[int]]:
    """Script (or command) name -> durations in usec of its calls, from SLOWLOG with a
    threshold of 0 (it logs top-level commands only, so a script's time includes the
    commands it runs; entries of those inner commands are skipped). Entries after the window's end (`until`, perf_counter) are
    dropped using Redis's own clock."""
    sec, usec = await redis.time()
    end_unix = sec + usec / 1e6 - (time.perf_counter() - until)
    out: dict[str, list[int]] = defaultdict(list)
    for e in await redis.slowlog_get(1_000_000):
        if e["start_time"] > end_unix or e.get("client_address") == b"?:0":
            continue  # after the window, or run inside a script (counted in the script)
        cmd = e["command"].split(b" ") if isinstance(e["command"], bytes) else []
        if not cmd:
            continue
        name = cmd[0].decode(errors="replace").upper()
        if name in ("EVALSHA", "EVAL", "FCALL") and len(cmd) > 1:
            name = shas.get(cmd[1].decode(errors="replace"), name)
        if name in ("SLOWLOG", "CONFIG", "INFO", "TIME"):
            continue
        out[name].append(int(e["duration"]))
    return dict(out)


def fmt_slowlog(durations: dict[str, list[int]], ph: Phase) -> list[str]:
    n = max(1, ph.actions)
    total = sum(sum(d) for d in durations.values())
    out = [
        f"Redis time per call from SLOWLOG (threshold 0; {ph.inflight} in flight, {ph.window:.1f}s,"
        f" {ph.actions} actions; Redis process CPU {ph.cpu_ms_per_action('redis') * 1000:.0f} "
        "usec/action):",
        f"  {'call':<20} {'calls/action':>12} {'p50 usec':>9} {'mean usec':>10} "
        f"{'usec/action':>12} {'share':>6}",
    ]
    for name, d in sorted(durations.items(), key=lambda kv: -sum(kv[1])):
        d = sorted(d)
        out.append(
            f"  {name:<20} {len(d) / n:>12.2f} {d[len(d) // 2]:>9} {sum(d) / len(d):>10.1f} "
            f"{sum(d) / n:>12.1f} {sum(d) * 100 / max(1, total):>5.0f}%"
        )
    out.append(f"  total: {total / n:.0f} usec of command execution per action")
    return out


# ------------------------------------------------------------------------ profile


def pyspy_binary() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("site-packages/", "/src/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{func}"


def summarize_profile(paths: Sequence[Path], top: int) -> list[str]:
    """Top functions by self and inclusive samples over collapsed-stack files."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for p in paths:
        if not p.exists():
            continue
        for line in p.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            count = int(n)
            frames = [
                _short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
            ]
            if not frames:
                continue
            total += count
            self_c[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    if not total:
        return ["  (no samples: is py-spy allowed to ptrace here?)"]
    lines = [f"  {total} samples (CPU-active Python stacks of both frontends)", "  self:"]
    lines += [f"    {c * 100 / total:5.1f}%  {f}" for f, c in self_c.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {c * 100 / total:5.1f}%  {f}" for f, c in incl.most_common(top + 10)]
    return lines


# --------------------------------------------------------------------------- report


def fmt_phase_table(phases: Sequence[Phase], idle_fe_cpu_per_s: float, idle: Phase) -> list[str]:
    out = [
        f"{'in flight':>9} {'actions':>8} {'actions/s':>10} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>8} {'FE CPU ms/act':>14} {'FE user/sys':>11} {'redis':>6} {'workers':>8} "
        f"{'loadgen':>8} {'syncs/act':>9} {'errors':>6}"
    ]
    for ph in phases:
        fe_u = sum(ph.cpu(n)[0] for n in ph.before.cpu if n.startswith("frontend"))
        fe_s = sum(ph.cpu(n)[1] for n in ph.before.cpu if n.startswith("frontend"))
        both = fe_u + fe_s or 1
        out.append(
            f"{ph.inflight:>9} {ph.actions:>8} {ph.rate():>10.0f} {ph.pct(0.5):>7.2f} "
            f"{ph.pct(0.9):>7.2f} {ph.pct(0.99):>8.2f} {ph.cpu_ms_per_action('frontend'):>14.3f} "
            f"{fe_u / both * 100:>5.0f}%/{fe_s / both * 100:<3.0f}% "
            f"{ph.cpu_ms_per_action('redis'):>6.3f} {ph.cpu_ms_per_action('workers'):>8.3f} "
            f"{ph.cpu_ms_per_action('loadgen'):>8.3f} {ph.syncs() / max(1, ph.actions):>9.2f} "
            f"{sum(ph.load.errors.values()):>6}"
        )
    out.append(
        "  CPU columns: ms of CPU (user+system) per action done in the window; "
        "FE = both frontends together."
    )
    for ph in phases:
        lat = ph.load.latencies
        slow = ", ".join(
            f"{sum(1 for x in lat if x > t)} over {t:g}s" for t in (0.05, 0.5, 4.0, 25.0)
        )
        ours = sum(sum(ph.cpu(n)) for n in ph.before.cpu if n != "machine")
        others = (sum(ph.cpu("machine")) - ours) / ph.window
        out.append(
            f"  {ph.inflight} in flight: {ph.window:.1f}s window; latency max "
            f"{max(lat, default=0) * 1000:.0f} ms, {slow}, {ph.load.unfinished} never done; "
            f"frontends used {sum(sum(ph.cpu(n)) for n in ph.before.cpu if n.startswith('frontend')) / ph.window:.2f} "
            f"CPUs; other processes on this machine used {others:.2f} CPUs"
        )
    ours = sum(sum(idle.cpu(n)) for n in idle.before.cpu if n != "machine")
    out.append(
        f"  idle (workers parked, no load): frontends burn {idle_fe_cpu_per_s * 1000:.1f} ms "
        "CPU per second (health, reaper, hub); other processes on this machine used "
        f"{(sum(idle.cpu('machine')) - ours) / idle.window:.2f} CPUs"
    )
    return out


def fmt_targets(p1: Phase, p100: Phase) -> list[str]:
    def row(what: str, got: float, target: str, ok: bool) -> str:
        return f"  {what:<44} {got:>10.2f}   {target:<10} {'MET' if ok else 'MISSED'}"

    return [
        "targets:",
        row("actions/s at 100 in flight", p100.rate(), ">= 1000", p100.rate() >= 1000),
        row("p50 ms at 1 in flight", p1.pct(0.5), "< 3", p1.pct(0.5) < 3),
        row(
            "frontend CPU ms/action at 100 in flight",
            p100.cpu_ms_per_action("frontend"),
            "<= 1",
            p100.cpu_ms_per_action("frontend") <= 1,
        ),
        row(
            "frontend CPU ms/action at 1 in flight",
            p1.cpu_ms_per_action("frontend"),
            "<= 1",
            p1.cpu_ms_per_action("frontend") <= 1,
        ),
    ]


def fmt_commandstats(ph: Phase, mon: MonitorReport | None) -> list[str]:
    cmds = ph.commands()
    n = max(1, ph.actions)
    evalsha = cmds.get("evalsha", (0, 0))[0] + cmds.get("fcall", (0, 0))[0]
    ev = cmds.get("eval", (0, 0))[0]
    other = sum(c for k, (c, _) in cmds.items() if k not in SCRIPT_COMMANDS)
    out = [
        f"Redis INFO commandstats deltas, {ph.inflight} in flight ({ph.actions} actions, "
        f"{ph.syncs()} Synchronize replies):",
        f"  per action: evalsha+fcall {evalsha / n:.2f}, eval {ev / n:.2f}, other {other / n:.2f} "
        "(other includes the commands scripts run inside Redis)",
        f"  {'command':<12} {'calls/action':>12} {'usec/call':>9} {'usec/action':>11} "
        f"{'from scripts':>12}",
    ]
    for cmd, (calls, usec) in sorted(cmds.items(), key=lambda kv: -kv[1][0]):
        share = ""
        if mon is not None:
            inner = mon.inner_total.get(cmd.upper(), 0)
            total = inner + mon.top.get(cmd.upper(), 0)
            share = f"{inner * 100 / total:.0f}%" if total else "-"
        out.append(
            f"  {cmd:<12} {calls / n:>12.2f} {usec / max(1, calls):>9.1f} {usec / n:>11.1f} "
            f"{share:>12}"
        )
    total_usec = sum(u for _, u in cmds.values())
    script_usec = sum(u for k, (_, u) in cmds.items() if k in SCRIPT_COMMANDS)
    out.append(
        f"  Redis busy per action: {script_usec / n:.1f} usec in scripts (their inner commands "
        f"included), {(total_usec - script_usec) / n:.1f} usec listed again as inner/other commands"
    )
    return out


def fmt_monitor(mon: MonitorReport, ph: Phase) -> list[str]:
    n = max(1, ph.actions)
    syncs = max(1, ph.syncs())
    by_origin: Counter[str] = Counter()
    rows = []
    for name, calls in mon.top.most_common():
        origin = ORIGIN.get(name, "other")
        by_origin[origin] += calls
        per = n if origin == "Execute" else syncs if origin == "Synchronize" else n
        unit = "/Synchronize" if origin == "Synchronize" else "/action"
        inner = mon.inner.get(name)
        inside = ""
        if inner:
            inside = f"{sum(inner.values()) / calls:.1f}/call: " + ", ".join(
                f"{k.lower()} {c / calls:.2f}" for k, c in inner.most_common()
            )
        rows.append(f"  {name:<20} {origin:<12} {calls / per:>6.2f} {unit:<13} {inside}")
    out = [
        f"Redis round trips from MONITOR ({ph.inflight} in flight, {ph.actions} actions, "
        f"{ph.syncs()} Synchronize replies = {ph.syncs() / n:.2f} per action):",
        f"  per Execute:     {by_origin['Execute'] / n:.2f} round trips",
        f"  per Synchronize: {by_origin['Synchronize'] / syncs:.2f} round trips "
        f"({by_origin['Synchronize'] / n:.2f} per action)",
        f"  background/other over the phase: {by_origin['background'] + by_origin['other']} calls",
        f"  {'top-level call':<20} {'origin':<12} {'count':>6} {'per':<13} commands run inside",
        *rows,
    ]
    return out


# ---------------------------------------------------------------------------- main


async def bench(
    args: argparse.Namespace,
    shas_at_start: dict[str, str],
    frontends: list[Frontend],
    redis_server: RedisServer,
    workers: Any,
    counters: Any,
    tmp: Path,
) -> list[str]:
    out: list[str] = []
    redis = aioredis.Redis.from_url(redis_server.url)
    channels = [grpc.aio.insecure_channel(fe.target) for fe in frontends]
    try:
        stubs = [re_grpc.ExecutionStub(c) for c in channels]
        if args.topology == "split":
            stubs = stubs[:1]  # every Execute through the first; the workers are on the second
        cas = re_grpc.ContentAddressableStorageStub(channels[0])
        pids = {f"frontend{i}": fe.proc.pid for i, fe in enumerate(frontends)}
        assert redis_server.proc is not None
        pids |= {"redis": redis_server.proc.pid, "workers": workers.pid, "loadgen": os.getpid()}
        meter = Meter(pids, redis, counters)
        md = re_pb2.RequestMetadata(tool_invocation_id="bench", correlated_invocations_id="b")
        metadata = [(METADATA_HEADER, md.SerializeToString())]

        profile = args.profile_seconds if (not args.no_profile and pyspy_binary()) else 0
        seconds = args.warmup + args.seconds1 + args.seconds100 + args.monitor + profile
        total = int(seconds * args.max_rate)
        t0 = time.perf_counter()
        digests = iter(await upload_actions(cas, total, os.urandom(4).hex()))
        log(f"uploaded {total} distinct actions in {time.perf_counter() - t0:.1f}s")

        def load(inflight: int) -> Callable[[asyncio.Event], Any]:
            return lambda stop: run_load(stubs, digests, inflight, metadata, stop)

        log(f"warm-up: {args.warmup}s at 100 in flight")
        warm = await measured("warm-up", meter, 100, args.warmup, load(100))
        if warm.load.errors or not warm.actions:
            raise RuntimeError(f"warm-up failed: {warm.actions} done, {dict(warm.load.errors)}")
        await asyncio.sleep(1.0)

        async def nothing(stop: asyncio.Event) -> Load:
            await stop.wait()
            return Load()

        idle = await measured("idle", meter, 0, 5.0, nothing)
        idle_fe_cpu_per_s = (
            sum(sum(idle.cpu(n)) for n in pids if n.startswith("frontend")) / idle.window
        )

        log("calibration: GetCapabilities and FindMissingBlobs on frontend 0")
        calib = await calibrate(channels[0], pids["frontend0"], digests, metadata)

        log(f"1 in flight: {args.seconds1}s")
        p1 = await measured("1", meter, 1, args.seconds1, load(1))
        log(f"100 in flight: {args.seconds100}s")
        p100 = await measured("100", meter, 100, args.seconds100, load(100))

        log(f"MONITOR capture: {args.monitor}s at 100 in flight")
        capture = MonitorCapture(redis_server.port)
        await asyncio.sleep(0.1)
        pm = await measured("monitor", meter, 100, args.monitor, load(100), at_end=capture.stop)
        shas = {**script_names(), **shas_at_start}  # src may change while we run
        mon = parse_monitor(capture.data(), shas)

        log(f"SLOWLOG capture: {args.monitor}s at 100 in flight")
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.config_set("slowlog-max-len", 1_000_000)
        await redis.slowlog_reset()
        ps = await measured("slowlog", meter, 100, args.monitor, load(100))
        script_usec = await read_slowlog(redis, shas, ps.after.at)
        await redis.config_set("slowlog-log-slower-than", 10000)
        await redis.slowlog_reset()

        out += [
            f"redbarn frontend benchmark: {len(frontends)} frontend process(es), topology "
            f"{args.topology}, {args.workers} synthetic "
            f"workers, {os.cpu_count()} CPUs, skip_cache_lookup=true, distinct no-op actions, "
            f"event loop {'uvloop' if eventloop.loop_factory() else 'asyncio'} "
            f"(${eventloop.ENV} sets it, here and in the frontends)",
            f"gRPC core experiments ${grpcenv.ENV}="
            f"{os.environ.get(grpcenv.ENV, '')!r} in every process here "
            f"({'redbarn defaults' if GRPC_DEFAULTS_APPLIED else 'from the environment'})",
            "",
            *fmt_phase_table([p1, p100], idle_fe_cpu_per_s, idle),
            "",
            *fmt_targets(p1, p100),
            "",
            *calib,
            "",
            *fmt_commandstats(p100, mon),
            "",
            *fmt_commandstats(p1, mon),
            "",
            *fmt_monitor(mon, pm),
            "",
            *fmt_slowlog(script_usec, ps),
        ]
        for ph in (p1, p100, pm):
            if ph.load.errors:
                out.append(f"errors at {ph.inflight} in flight: {dict(ph.load.errors)}")
        if counters[ERRORS]:
            out.append(f"synthetic worker Synchronize errors: {counters[ERRORS]}")

        if profile:
            log(f"profile: py-spy on both frontends for {profile}s")
            out += ["", *(await _profile(args, frontends, meter, load, tmp))]
        elif not args.no_profile:
            out += ["", "profile skipped: py-spy not found (pip install py-spy)"]
    finally:
        for c in channels:
            await c.close()
        await redis.aclose()
    return out


async def _profile(
    args: argparse.Namespace,
    frontends: list[Frontend],
    meter: Meter,
    load: Callable[[int], Callable[[asyncio.Event], Any]],
    tmp: Path,
) -> list[str]:
    binary = pyspy_binary()
    assert binary is not None
    paths = [tmp / f"profile-frontend{i}.txt" for i in range(len(frontends))]
    spies = []
    for fe, path in zip(frontends, paths, strict=True):
        cmd = [binary, "record", "--pid", str(fe.proc.pid), "--rate", "200", "--format", "raw"]
        cmd += ["--native"] if args.profile_native else ["--nonblocking"]
        cmd += ["--duration", str(args.profile_seconds), "-o", str(path)]
        spies.append(
            await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        )
    try:
        ph = await measured(
            "profile", meter, args.profile_inflight, args.profile_seconds,
            load(args.profile_inflight),
        )  # fmt: skip
        errs = await asyncio.wait_for(asyncio.gather(*(s.communicate() for s in spies)), 30)
    finally:
        for s in spies:
            if s.returncode is None:
                s.terminate()
                await s.wait()
    lines = [
        f"py-spy profile of both frontends, {args.profile_inflight} in flight, "
        f"{args.profile_seconds}s at {ph.rate():.0f} actions/s, frontend CPU "
        f"{ph.cpu_ms_per_action('frontend'):.2f} ms/action while sampled (py-spy costs some)",
        f"  raw collapsed stacks: {', '.join(map(str, paths))}",
        *summarize_profile(paths, args.profile_top),
    ]
    for s, (_, err) in zip(spies, errs, strict=True):
        if s.returncode not in (0, None) and err:
            lines.append(f"  py-spy: {err.decode(errors='replace').strip()[-300:]}")
    return lines


async def calibrate(
    channel: grpc.aio.Channel,
    pid: int,
    digests: Iterator[re_pb2.Digest],
    metadata: Sequence[tuple[str, bytes]],
    n: int = 3000,
) -> list[str]:
    """The frontend's CPU per RPC for simple calls, 20 concurrent callers on one frontend:
    GetCapabilities (no Redis); FindMissingBlobs of two digests (one Redis script call);
    Synchronize with prefer_being_idle (one script call, never parks); WaitExecution of
    a done operation (a server stream: one script call, one message)."""
    caps = re_grpc.CapabilitiesStub(channel)
    cas = re_grpc.ContentAddressableStorageStub(channel)
    queue = rw_grpc.OperationQueueStub(channel)
    execution = re_grpc.ExecutionStub(channel)
    two = re_pb2.FindMissingBlobsRequest(blob_digests=[next(digests), next(digests)])
    request = re_pb2.ExecuteRequest(action_digest=next(digests), skip_cache_lookup=True)
    ops = [op async for op in execution.Execute(request, metadata=metadata)]
    wait = re_pb2.WaitExecutionRequest(name=ops[-1].name)
    idle = rw_pb2.SynchronizeRequest(
        worker_id={"hostname": "bench", "thread": "calibration"},
        platform=PLATFORM,
        current_state=rw_pb2.CurrentState(idle={}),
        prefer_being_idle=True,
    )

    async def wait_execution() -> None:
        async for _ in execution.WaitExecution(wait):
            pass

    calls: list[tuple[str, Callable[[], Any]]] = [
        (
            "GetCapabilities (no Redis)",
            lambda: caps.GetCapabilities(re_pb2.GetCapabilitiesRequest()),
        ),
        ("FindMissingBlobs, 2 digests (1 Redis call)", lambda: cas.FindMissingBlobs(two)),
        ("Synchronize prefer_being_idle (1 Redis call)", lambda: queue.Synchronize(idle)),
        ("WaitExecution of a done op (stream, 1 Redis call)", wait_execution),
    ]
    out = ["frontend CPU per RPC, simple calls (one frontend, 20 concurrent callers):"]
    for name, call in calls:
        counter = iter(range(n))

        async def caller(call: Callable[[], Any] = call, counter: Iterator[int] = counter) -> None:
            for _ in counter:
                await call()

        u0, s0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(20)))
        elapsed = time.perf_counter() - t0
        u1, s1 = cpu_seconds(pid)
        out.append(
            f"  {name:<50} {(u1 - u0 + s1 - s0) * 1e6 / n:>6.0f} usec CPU/call, "
            f"{n / elapsed:>6.0f} calls/s"
        )
    return out


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--workers", type=int, default=80, help="synthetic worker IDs (default 80)")
    ap.add_argument("--warmup", type=float, default=5, help="warm-up seconds (not measured)")
    ap.add_argument("--seconds1", type=float, default=10, help="seconds at 1 in flight")
    ap.add_argument("--seconds100", type=float, default=20, help="seconds at 100 in flight")
    ap.add_argument("--monitor", type=float, default=5, help="seconds of MONITOR capture")
    ap.add_argument("--max-rate", type=int, default=2500, help="actions/s to upload for")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--profile-inflight", type=int, default=100)
    ap.add_argument("--profile-native", action="store_true", help="py-spy --native")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--frontend-arg", action="append", default=[], help="extra `redbarn frontend` flag"
    )
    ap.add_argument(
        "--topology",
        choices=("spread", "split", "one"),
        default="spread",
        help="spread: two frontends, workers and Executes alternate between them; split: "
        "every Execute through the first, every worker on the second (what a load "
        "balancer does to a build); one: a single frontend",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="redbarn-frontend-bench-"))
    shas = script_names()  # the scripts the frontends are about to load
    with contextlib.ExitStack() as stack:
        redis_server = RedisServer().start()
        stack.callback(redis_server.stop)
        frontends: list[Frontend] = []
        stack.callback(lambda: [fe.stop() for fe in frontends])
        for i in range(1 if args.topology == "one" else 2):
            frontends.append(start_frontend(redis_server.url, tmp, i, args.frontend_arg))
        for fe in frontends:
            wait_serving(fe)
        ctx = mp.get_context("spawn")
        counters = ctx.Array("q", 4, lock=False)
        workers = ctx.Process(
            target=worker_process,
            args=(
                [fe.target for fe in frontends[1:]]
                if args.topology == "split"
                else [fe.target for fe in frontends],
                args.workers,
                counters,
            ),
            daemon=True,
        )
        workers.start()

        def stop_workers() -> None:
            if workers.is_alive():
                workers.terminate()
                workers.join(5)
            if workers.is_alive():
                workers.kill()
                workers.join(5)

        stack.callback(stop_workers)
        # Every worker has sent its first (idle) report: the platform queue exists.
        deadline = time.monotonic() + 20
        while counters[SENT] < args.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        try:
            lines = eventloop.run(
                bench(args, shas, frontends, redis_server, workers, counters, tmp)
            )
        except BaseException:
            for i, fe in enumerate(frontends):
                tail = fe.log_tail()
                if tail:
                    print(f"--- frontend {i} log ---\n{tail}", file=sys.stderr)
            raise
    print("\n".join(lines))
    print(f"\n(logs and profiles in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
