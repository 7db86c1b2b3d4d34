"""Per-action build directories under the worker's `--build-dir`.

    <build-dir>/<hash[:12]>-<random>/          the action directory (the worker's)
        root/                                  the input root
        tmp/, home/                            the action's TMPDIR and HOME
        stdout, stderr                         written through descriptors (the worker's)

Removed after every action; leftovers of a crashed worker are removed on start.
With --run-as the action directory is 0711 (the action user may pass, not list or
rename), and `hand_over` gives root/, tmp/, home/ and every directory under root/
to the action user; files stay the worker's, so inputs cannot be chmod'ed or
rewritten, and stdout/stderr cannot be swapped for a link to something else.
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
from dataclasses import dataclass
from typing import Any

from redbarn.errors import FailedPrecondition


@dataclass(frozen=True)
class ActionDir:
    path: str

    @property
    def root(self) -> str:
        return os.path.join(self.path, "root")

    @property
    def tmp(self) -> str:
        return os.path.join(self.path, "tmp")

    @property
    def home(self) -> str:
        return os.path.join(self.path, "home")

    @property
    def stdout(self) -> str:
        return os.path.join(self.path, "stdout")

    @property
    def stderr(self) -> str:
        return os.path.join(self.path, "stderr")


def create(build_dir: str, action_hash: str, *, shared: bool = False) -> ActionDir:
    """A new action directory with empty root/, tmp/ and home/ (mode 0700). `shared`
    (--run-as) makes the action directory itself 0711, so another user can pass it."""
    d = ActionDir(tempfile.mkdtemp(prefix=f"{action_hash[:12]}-", dir=build_dir))
    for sub in (d.root, d.tmp, d.home):
        os.mkdir(sub, 0o700)
    if shared:
        os.chmod(d.path, 0o711)
    return d


def hand_over(d: ActionDir, uid: int, gid: int) -> int:
    """Give tmp/, home/, root/ and every directory under root/ to uid:gid (symlinks
    are not followed; files keep their owner). Returns how many directories."""
    count = 0
    for top in (d.tmp, d.home):
        os.chown(top, uid, gid)
        count += 1
    stack = [d.root]
    while stack:
        path = stack.pop()
        os.chown(path, uid, gid, follow_symlinks=False)
        count += 1
        with os.scandir(path) as it:
            stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
    return count


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
