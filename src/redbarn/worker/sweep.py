"""Killing whatever an action left running, including children that left its session.

The runner kills the command's process group; a child that called `setsid` is not in
it. After each action the worker also sweeps /proc (Linux):

- with `--run-as`, every process of the action user's uid (real, effective, saved or
  file-system uid), repeated until a scan finds none: this catches anything, since the
  uid is dedicated to actions (Buildbarn's clean_process_table). With several actions
  running at once under that uid, the whole-uid sweep waits until none is running; in
  between, each action's sweep uses the marks below.
- otherwise (and as the per-action sweep above), every process of that uid marked as the
  action's: its working directory is inside the action's build directory, or its
  initial environment points into it (every action gets TMPDIR and HOME there). A
  process that both left the directory and was exec'ed with a clean environment
  escapes this; docs/security.md says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

log = logging.getLogger(__name__)

# A fork bomb can outrun one scan; give up (and log) after this many rounds.
MAX_ROUNDS = 200


def _status(pid: str) -> tuple[str, set[int]] | None:
    """The process's state letter and its four uids, None if it is gone."""
    state, uids = "", set()
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    state = line.split()[1]
                elif line.startswith("Uid:"):
                    uids = {int(u) for u in line.split()[1:]}
                    break
    except (OSError, ValueError, IndexError):
        return None
    return state, uids


def _marked(pid: str, markers: tuple[bytes, ...]) -> bool:
    """True if the process's cwd is inside a marked directory or its environment
    names a path inside one."""
    with contextlib.suppress(OSError):
        if (os.readlink(f"/proc/{pid}/cwd") + "/").encode().startswith(markers):
            return True
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False
    return any(b"=" + m in environ for m in markers)


def _pids() -> list[str]:
    try:
        return [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def kill(uid: int, action_dir: str | None = None) -> int:
    """SIGKILL the living processes of `uid` (only those marked as `action_dir`'s when
    it is given), scanning again until none is left. Returns how many were killed."""
    me = str(os.getpid())
    markers = None
    if action_dir:  # as given (TMPDIR, HOME) and resolved (cwd)
        paths = {os.path.abspath(action_dir), os.path.realpath(action_dir)}
        markers = tuple(os.fsencode(p + "/") for p in paths)
    killed = 0
    for _ in range(MAX_ROUNDS):
        found = 0
        for pid in _pids():
            if pid == me:
                continue
            got = _status(pid)
            if got is None or uid not in got[1] or got[0] in ("Z", "X"):
                continue  # gone, another user's, or dead and waiting to be reaped
            if markers is not None and not _marked(pid, markers):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
                found += 1
        if not found:
            return killed
        killed += found
        time.sleep(0.001)  # let the kills land before the next scan
    log.warning("processes of uid %d still appear after %d sweeps", uid, MAX_ROUNDS)
    return killed


class Sweeper:
    """Tracks the commands running under one uid and sweeps after each action.

    `uid_dedicated` is True for a `--run-as` user: once no command of it runs, every
    process of the uid is killed. Otherwise (the worker's own uid) only marked ones."""

    def __init__(self, uid: int, *, uid_dedicated: bool) -> None:
        self.uid = uid
        self._dedicated = uid_dedicated
        self._running = 0
        self._lock = asyncio.Lock()

    async def started(self) -> None:
        """Call just before starting a command (waits for a whole-uid sweep to end)."""
        async with self._lock:
            self._running += 1

    def stopped(self) -> None:
        """Call once the command started after `started` has exited (or never started)."""
        self._running -= 1

    async def sweep(self, action_dir: str) -> int:
        """Kill what the action at `action_dir` left running; the whole uid when it is
        dedicated and no other command runs. Returns how many processes were killed."""
        async with self._lock:
            whole = self._dedicated and self._running == 0
            return await asyncio.to_thread(kill, self.uid, None if whole else action_dir)
