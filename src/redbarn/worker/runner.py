"""Running one command: its own process group, a deadline, and rusage from wait4.

The child is started with `start_new_session=True`, so it leads a new process group;
at the deadline, on cancellation, and after it exits, the whole group gets SIGKILL.
A grandchild that made its own session escapes the group; `redbarn.worker.sweep`
finds it afterwards. With a `user` the child runs with that uid and gid and no
supplementary groups; its environment is exactly the one given.

Changing the uid goes through util-linux's `setpriv`, not Popen's `user=`: Popen
can switch users only in a full fork() of the worker, and in that child gRPC's fork
handlers restart its pollers, which then write into the action's stderr and can kill
it before exec (seen here as an intermittent exit -1). Without `user=` Popen uses
vfork+exec, which runs no handlers. An argv[0] that cannot be found is refused here as
it is without a user ("Failed to start process"), not left to setpriv's exit 127.
The child is reaped with `os.wait4`, driven by a pidfd on the event loop (no thread
per action); without pidfd support, wait4 runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from redbarn.errors import InvalidArgument
from redbarn.worker.runas import ActionUser, as_user


@dataclass(frozen=True)
class RunSpec:
    """What to start: argv, its exact environment, where, as whom. `mounts` are the
    directories of the build directory the command needs to see (for containers)."""

    arguments: Sequence[str]
    environment: Mapping[str, str]
    working_directory: str
    user: ActionUser | None = None
    mounts: tuple[str, ...] = field(default=())


class Launch(Protocol):
    """A way of starting a command other than directly (a container runtime).

    `wrap(spec)` returns what to start locally instead (it may raise a RedbarnError
    for a spec it cannot start). `stop(finished)` is awaited once the started process
    has exited by itself (`finished`), been killed at its deadline or been cancelled,
    or failed to start; it must leave nothing of the command running, and never raises."""

    def wrap(self, spec: RunSpec) -> RunSpec: ...

    async def stop(self, finished: bool) -> None: ...


@dataclass
class RunResult:
    exit_code: int
    rusage: resource.struct_rusage | None
    termination_signal: str | None = None
    timed_out: bool = False


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name.removeprefix("SIG")
    except ValueError:
        return str(num)


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _wait4(pid: int) -> tuple[int, resource.struct_rusage]:
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        _, status, usage = await asyncio.to_thread(os.wait4, pid, 0)
        return status, usage
    try:
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)  # noqa: ASYNC222 - never blocks
            if got == pid:
                return status, usage
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
    finally:
        os.close(fd)


def _check_found(program: str, environment: Mapping[str, str], cwd: str) -> None:
    """Refuse, as a failed exec would, a program that is not there (execvp's lookup:
    a name with a slash is relative to `cwd`, one without is searched in PATH)."""
    if "/" in program:
        found = os.path.exists(os.path.join(cwd, program))
    else:  # an empty entry is the working directory; absolute entries ignore `cwd`
        dirs = environment.get("PATH", os.defpath).split(":")
        found = any(os.path.exists(os.path.join(cwd, d or ".", program)) for d in dirs)
    if not found:
        raise InvalidArgument(f"Failed to start process {program!r}: {os.strerror(errno.ENOENT)}")


async def run(
    arguments: Sequence[str],
    environment: Mapping[str, str],
    working_directory: str,
    stdout_path: str,
    stderr_path: str,
    timeout: float | None,
    user: ActionUser | None = None,
) -> RunResult:
    """Run `arguments` (as `user`, if given) and wait for it, at most `timeout` seconds.

    A non-zero exit is a result. A signal gives exit_code -1 and its name, as Go
    reports it. A timeout kills the process group and sets `timed_out`. Cancelling
    the coroutine kills the process group, reaps the child, then re-raises."""
    if not arguments:
        raise InvalidArgument("Insufficient number of command arguments")
    argv = list(arguments)
    if user is not None:
        _check_found(argv[0], environment, working_directory)
        argv = as_user(user, argv)
    # Opening two local files and vfork+exec are quick enough for the event loop.
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:  # noqa: ASYNC230
        try:
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                env=dict(environment),
                cwd=working_directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as e:
            raise InvalidArgument(
                f"Failed to start process {arguments[0]!r}: {e.strerror}"
            ) from None
    pid = proc.pid
    waiter = asyncio.ensure_future(_wait4(pid))
    timed_out = False
    try:
        try:
            status, usage = await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            timed_out = True
            _killpg(pid)
            status, usage = await waiter
    except BaseException:
        _killpg(pid)
        with contextlib.suppress(BaseException):
            await asyncio.shield(waiter)
        proc.returncode = -1
        raise
    _killpg(pid)  # leftovers of the group
    proc.returncode = os.waitstatus_to_exitcode(status)
    if os.WIFSIGNALED(status):
        return RunResult(-1, usage, _signal_name(os.WTERMSIG(status)), timed_out)
    return RunResult(os.WEXITSTATUS(status), usage, None, timed_out)
