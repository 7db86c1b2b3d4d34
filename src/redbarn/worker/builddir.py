"""Per-action build directories under the worker's `--build-dir`.

    <build-dir>/<hash[:12]>-<random>/root     the input root
    <build-dir>/<hash[:12]>-<random>/stdout, stderr

Removed after every action; leftovers of a crashed worker are removed on start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable
from typing import Any

from redbarn.errors import FailedPrecondition


def create(build_dir: str, action_hash: str) -> str:
    return tempfile.mkdtemp(prefix=f"{action_hash[:12]}-", dir=build_dir)


def _make_writable(func: Callable[..., Any], path: str, _exc: object) -> None:
    """rmtree error handler: an action may leave read-only directories behind."""
    parent = os.path.dirname(path)
    try:
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, stat.S_IRWXU)
        func(path)
    except FileNotFoundError:
        pass


def remove(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path, onerror=_make_writable)


LOCK = ".lock"


def lock(build_dir: str) -> int:
    """Take `build_dir` for this process (flock), so `clean` never removes the build
    directories of another worker process. Returns the lock's file descriptor."""
    os.makedirs(build_dir, exist_ok=True)
    fd = os.open(os.path.join(build_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FailedPrecondition(
            f"Build directory {build_dir} is in use by another worker process"
        ) from None
    return fd


def kill_leftovers(build_dir: str) -> int:
    """SIGKILL processes still running inside `build_dir`: actions orphaned when a
    previous worker process was killed (its children are in their own sessions, so
    they outlive it). Matched by working directory, so an unrelated process that
    reused a pid is never hit. Linux only; returns how many were killed."""
    prefix = os.path.realpath(build_dir) + "/"
    killed = 0
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (cwd + "/").startswith(prefix):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def clean(build_dir: str) -> None:
    """Remove everything under `build_dir` (a previous run's leftovers), keep the dir."""
    os.makedirs(build_dir, exist_ok=True)
    for name in os.listdir(build_dir):
        if name == LOCK:
            continue
        p = os.path.join(build_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            remove(p)
        else:
            os.unlink(p)
