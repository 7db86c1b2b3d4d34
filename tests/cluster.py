"""Real processes for system tests: redis-server, frontends, workers, nginx.

Every process runs `python -m redbarn ...` from this checkout on loopback, logs to a
file under the test's tmp dir (printed when a test fails), and is stopped at the end.
Faults are real signals: SIGKILL, SIGSTOP/SIGCONT, SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redbarn.runtime.redisserver import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
NGINX_TEMPLATE = REPO / "deploy" / "nginx.conf.template"


@dataclass
class Proc:
    """One child process with its own log file and process group."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self.signal(signal.SIGKILL)
                self.wait(5)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def redbarn(*args: str) -> list[str]:
    return [sys.executable, "-m", "redbarn", *args]


def wait_serving(target: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-4000:]}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"{target} not serving after {timeout}s")


@dataclass
class Cluster:
    """Redis + frontends + workers (+ nginx) for one test. Use as a context manager."""

    tmp: Path
    frontend_args: Sequence[str] = ()
    worker_args: Sequence[str] = ()
    redis_aof: bool = False
    redis: RedisServer | None = None
    frontends: list[Proc] = field(default_factory=list)
    frontend_ports: list[int] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    lb: Proc | None = None
    lb_port: int = 0

    def __enter__(self) -> Cluster:
        self.redis = RedisServer(data_dir=str(self.tmp / "redis"), appendonly=self.redis_aof)
        self.redis.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in [*self.workers, *([self.lb] if self.lb else []), *self.frontends]:
            p.stop(grace=5)
        if self.redis is not None:
            self.redis.cleanup()

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def add_frontend(self, *extra: str, port: int = 0) -> Proc:
        port = port or free_port()
        i = len(self.frontends)
        p = Proc(
            f"frontend-{i}",
            redbarn(
                "frontend", "--listen", f"127.0.0.1:{port}", "--redis", self.redis_url,
                *self.frontend_args, *extra,
            ),
            self.tmp / f"frontend-{i}.log",
        ).start()  # fmt: skip
        self.frontends.append(p)
        self.frontend_ports.append(port)
        wait_serving(f"127.0.0.1:{port}", proc=p)
        return p

    def restart_frontend(self, i: int) -> Proc:
        old = self.frontends[i]
        old.stop()
        p = Proc(old.name, old.args, old.log_path).start()
        self.frontends[i] = p
        wait_serving(f"127.0.0.1:{self.frontend_ports[i]}", proc=p)
        return p

    def stop_redis(self, kill: bool = False) -> None:
        """Stop Redis (SIGTERM, or SIGKILL with `kill`); `start_redis` brings it back."""
        assert self.redis is not None
        self.redis.stop(kill=kill)

    def start_redis(self) -> None:
        """Start Redis again on the same port and data dir (the AOF, if any, is replayed)."""
        assert self.redis is not None
        self.redis.start()

    def restart_worker(self, i: int) -> Proc:
        """Start worker `i` again with the same arguments (as a supervisor would)."""
        old = self.workers[i]
        old.stop(grace=5)
        p = Proc(old.name, old.args, old.log_path, env=old.env).start()
        self.workers[i] = p
        return p

    def add_worker(self, target: str, *extra: str, concurrency: int = 1) -> Proc:
        i = len(self.workers)
        root = self.tmp / f"worker-{i}"
        p = Proc(
            f"worker-{i}",
            redbarn(
                "worker", "--frontend", target, "--concurrency", str(concurrency),
                "--build-dir", str(root / "build"), "--cache-dir", str(root / "cache"),
                "--label", f"proc=w{i}", *self.worker_args, *extra,
            ),
            self.tmp / f"worker-{i}.log",
        ).start()  # fmt: skip
        self.workers.append(p)
        return p

    def add_nginx(self) -> Proc:
        """nginx from Debian's package, running the repository's LB template."""
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
        assert len(self.frontend_ports) >= 3, "the LB config names three frontends"
        self.lb_port = free_port()
        run_dir = self.tmp / "nginx"
        run_dir.mkdir(exist_ok=True)
        conf = string.Template(NGINX_TEMPLATE.read_text()).substitute(
            FRONTEND_1=f"127.0.0.1:{self.frontend_ports[0]}",
            FRONTEND_2=f"127.0.0.1:{self.frontend_ports[1]}",
            FRONTEND_3=f"127.0.0.1:{self.frontend_ports[2]}",
            LB_LISTEN=f"127.0.0.1:{self.lb_port}",
            NGINX_LOG_DIR=str(run_dir),
            NGINX_RUN_DIR=str(run_dir),
        )
        conf_path = run_dir / "nginx.conf"
        conf_path.write_text(conf)
        self.lb = Proc(
            "nginx", [nginx, "-c", str(conf_path), "-p", str(run_dir)], run_dir / "out.log"
        ).start()
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.lb_port)) == 0:
                    return self.lb
            if not self.lb.alive():
                raise RuntimeError(
                    f"nginx exited:\n{self.lb.log()}{(run_dir / 'error.log').read_text()}"
                )
            time.sleep(0.05)
        raise RuntimeError("nginx did not listen")

    def logs(self) -> str:
        procs = [*self.frontends, *self.workers, *([self.lb] if self.lb else [])]
        return "\n".join(f"===== {p.name}\n{p.log()[-3000:]}" for p in procs)
