"""`redbarn worker --run-as`: a real worker process, the real scheduler core on a private
redis-server, the in-memory CAS, and a system user created for the test (root only).

An action cannot read the worker's token file, cannot chmod or rewrite its cached
input (the next action sees the original), and a `setsid` grandchild is gone when the
next action starts; the worker refuses root, its own uid, a readable token file and
a build directory the user cannot reach."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import code_pb2
from worker_fakes import FakeStorage, Tree, make_action

from redbarn import errors
from redbarn.config import ConfigError
from redbarn.frontend.operation_queue import decode_report, encode_reply
from redbarn.proto import bytestream_pb2_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import Scheduler
from redbarn.worker import runas, sweep

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="--run-as needs root to create a user"),
]

PATH = {"PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def action_user() -> Iterator[pwd.struct_passwd]:
    """A system user of its own, removed (with every process it has) afterwards."""
    name = f"redbarn-test-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        with contextlib.suppress(KeyError):
            sweep.kill(pwd.getpwnam(name).pw_uid)
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory the action user may pass through (pytest's own tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="redbarn-run-as-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _OperationQueue(rw_grpc.OperationQueueServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def Synchronize(
        self, request: rw_pb2.SynchronizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rw_pb2.SynchronizeResponse:
        try:
            return encode_reply(await self._scheduler.workers.synchronize(decode_report(request)))
        except errors.RedbarnError as err:
            await context.abort(getattr(grpc.StatusCode, err.code), err.message)
            raise


def worker_argv(port: int, build: Path, cache: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "redbarn.worker", "--frontend", f"127.0.0.1:{port}",
        "--concurrency", "1", "--hostname", "run-as", "--log-level", "INFO",
        "--build-dir", str(build), "--cache-dir", str(cache), *flags,
    ]  # fmt: skip


@dataclass
class Setup:
    scheduler: Scheduler
    storage: FakeStorage
    port: int
    shared: Path
    private: Path
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    last: str = ""  # what `out` saw last, for assertion messages

    async def start_worker(self, *flags: str) -> asyncio.subprocess.Process:
        with open(self.private / "worker.log", "ab") as log:  # noqa: ASYNC230
            proc = await asyncio.create_subprocess_exec(
                *worker_argv(self.port, self.shared / "build", self.private / "cache", *flags),
                stderr=log,
            )
        self.procs.append(proc)
        return proc

    async def run(self, arguments: list[str], **kwargs: Any) -> re_pb2.ExecuteResponse:
        digest, action = make_action(self.storage, arguments, env=PATH, **kwargs)
        for _ in range(400):  # until the worker has created the platform queue
            try:
                view = await self.scheduler.operations.execute(
                    instance_name="",
                    action_digest=digest,
                    action=action,
                    digest_function=re_pb2.DigestFunction.SHA256,
                )
                break
            except (errors.FailedPrecondition, errors.Unavailable):
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("no worker registered")

        async def done() -> re_pb2.ExecuteResponse:
            async for v in self.scheduler.operations.watch_operation(view.name, first=view):
                if v.done:
                    assert v.response is not None
                    return v.response
            raise AssertionError("stream ended early")

        return await asyncio.wait_for(done(), 60)

    def _log(self, digest: re_pb2.Digest) -> str:
        return self.storage.get(digest).decode() if digest.size_bytes else ""

    def out(self, response: re_pb2.ExecuteResponse) -> str:
        """stdout; the whole result and the worker's log when a test fails on it."""
        text = self._log(response.result.stdout_digest)
        self.last = f"{response}\nstderr: {self.err(response)}\nworker log:\n" + (
            (self.private / "worker.log").read_text(errors="replace")
        )
        return text

    def err(self, response: re_pb2.ExecuteResponse) -> str:
        return self._log(response.result.stderr_digest)


@pytest.fixture
async def setup(redis_url: str, tmp_path: Path, shared_tmp: Path) -> AsyncIterator[Setup]:
    client = aioredis.Redis.from_url(redis_url)
    config = SchedulerConfig(
        worker_timeout=1.0, idle_sync_timeout=1.0, busy_sync_interval=0.3,
        waiter_poll_interval=0.1,
    )  # fmt: skip
    scheduler = Scheduler(client, config)
    await scheduler.start()
    storage = FakeStorage()
    server = grpc.aio.server()
    rw_grpc.add_OperationQueueServicer_to_server(_OperationQueue(scheduler), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(storage, server)
    re_grpc.add_ActionCacheServicer_to_server(storage, server)
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(storage, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reaper = asyncio.create_task(scheduler.run_reaper(0.2))
    s = Setup(scheduler, storage, port, shared_tmp, tmp_path)
    try:
        yield s
    finally:
        for proc in s.procs:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 30)
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await server.stop(None)
        await client.aclose()


def token_file(directory: Path, mode: int) -> Path:
    path = directory / "worker.token"
    path.write_text("s3cret-worker-token\n")
    path.chmod(mode)
    return path


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_action_runs_as_the_user_and_cannot_read_the_token(
    setup: Setup, action_user: pwd.struct_passwd
) -> None:
    token = token_file(setup.shared, 0o600)  # in a directory the user may pass
    await setup.start_worker("--run-as", action_user.pw_name, "--token-file", str(token))
    resp = await setup.run(["sh", "-c", f"id -u; id -g; id -G; cat {token}"])
    assert resp.status.code == code_pb2.OK, resp.status
    uid, gid = str(action_user.pw_uid), str(action_user.pw_gid)
    assert setup.out(resp).split() == [uid, gid, gid], setup.last  # no supplementary groups
    assert resp.result.exit_code != 0
    assert "Permission denied" in setup.err(resp)
    assert b"s3cret-worker-token" not in b"".join(setup.storage.blobs.values())
    # A missing program is refused as it is without --run-as (not setpriv's exit 127).
    resp = await setup.run(["no-such-program-here"])
    assert resp.status.code == code_pb2.INVALID_ARGUMENT, resp.status
    assert "Failed to start process 'no-such-program-here'" in resp.status.message


async def test_action_cannot_rewrite_its_input_for_the_next(
    setup: Setup, action_user: pwd.struct_passwd
) -> None:
    await setup.start_worker("--run-as", action_user.pw_name)
    tree = Tree(files={"tool": (b"original\n", True), "d/data": (b"original data\n", False)})
    script = (
        "chmod u+w tool || echo chmod-refused; "
        "(echo evil > tool) 2>/dev/null || echo write-refused; "
        "(echo evil > d/data) 2>/dev/null || echo data-write-refused; "
        "chmod u+w d/data || echo data-chmod-refused; "
        "rm -f d/data && echo evil > d/data && echo own-copy-replaced"
    )
    resp = await setup.run(["sh", "-c", script], tree=tree)
    assert resp.status.code == code_pb2.OK, resp.status
    assert setup.out(resp).split() == [
        "chmod-refused", "write-refused", "data-write-refused", "data-chmod-refused",
        "own-copy-replaced",
    ], setup.last  # fmt: skip
    resp = await setup.run(["sh", "-c", "cat tool d/data"], tree=tree)
    assert resp.status.code == code_pb2.OK, resp.status
    assert setup.out(resp) == "original\noriginal data\n", setup.last


async def test_setsid_grandchild_is_gone_when_the_next_action_starts(
    setup: Setup, action_user: pwd.struct_passwd
) -> None:
    await setup.start_worker("--run-as", action_user.pw_name)
    # Leaves the build directory and drops its environment: only the uid sweep finds it.
    script = (
        'setsid sh -c \'cd /; echo $$ > "$0/pid"; exec env -i sleep 300\' "$PWD" & '
        "while [ ! -s pid ]; do :; done"
    )
    resp = await setup.run(["sh", "-c", script], output_paths=["pid"])
    assert resp.status.code == code_pb2.OK, resp.status
    pid = int(setup.storage.get(resp.result.output_files[0].digest))
    resp = await setup.run(["sh", "-c", f"test -d /proc/{pid} && cat /proc/{pid}/stat || true"])
    assert resp.status.code == code_pb2.OK, resp.status
    assert _gone(pid)
    state = setup.out(resp).rsplit(")", 1)[-1].split()[:1]
    assert state in ([], ["Z"])  # not running when the next action looked


async def _refusal(argv: list[str], **kwargs: Any) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE, **kwargs)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err
    return err.decode()


async def test_refuses_root(setup: Setup) -> None:
    err = await _refusal(worker_argv(setup.port, setup.shared / "b", setup.private / "c",
                                     "--run-as", "root"))  # fmt: skip
    assert "must not run as root" in err


def _checks_as(user: pwd.struct_passwd, spec: str) -> str:
    """What `--run-as spec`'s start-up checks say in a process running as `user`
    (a fork: this venv's interpreter lives where that user cannot run it)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                runas.resolve(spec)
                runas.check_privileges()
                message = "accepted"
            except ConfigError as err:
                message = str(err)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_refuses_its_own_user_and_an_unprivileged_worker(
    action_user: pwd.struct_passwd,
) -> None:
    """A worker running as the action user: --run-as that user is its own uid;
    --run-as another user needs privileges it lacks."""
    assert "is the worker's own" in _checks_as(action_user, action_user.pw_name)
    refused = _checks_as(action_user, "nobody")
    assert "--run-as needs root" in refused and "CAP_SETUID" in refused


def test_resolves_names_and_numbers(action_user: pwd.struct_passwd) -> None:
    user = runas.resolve(f"{action_user.pw_uid}:nogroup")
    assert (user.name, user.uid, user.gid) == (
        action_user.pw_name,
        action_user.pw_uid,
        grp.getgrnam("nogroup").gr_gid,
    )
    for spec, text in [
        ("no-such-user-here", "no such user"),
        (f"{action_user.pw_name}:no-such-group", 'no such group "no-such-group"'),
        (f"{action_user.pw_name}:root", "must not run as root"),
        (f"{action_user.pw_name}:", "expected USER or USER:GROUP"),
        ("4000000", "has no passwd entry; add :GROUP"),
    ]:
        with pytest.raises(ConfigError, match=text):
            runas.resolve(spec)


async def test_refuses_a_token_file_the_user_can_read(
    setup: Setup, action_user: pwd.struct_passwd
) -> None:
    token = token_file(setup.shared, 0o644)
    err = await _refusal(worker_argv(setup.port, setup.shared / "b", setup.private / "c",
                                     "--run-as", action_user.pw_name, "--token-file", str(token)))  # fmt: skip
    assert f"it can read --token-file {token}" in err


async def test_refuses_a_build_dir_the_user_cannot_reach(
    setup: Setup, action_user: pwd.struct_passwd
) -> None:
    build = setup.private / "build"  # pytest's tmp directory is 0700
    err = await _refusal(worker_argv(setup.port, build, setup.private / "c",
                                     "--run-as", action_user.pw_name))  # fmt: skip
    assert f"it cannot reach --build-dir {build}" in err
