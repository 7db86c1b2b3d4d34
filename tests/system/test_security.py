"""Every security control at once, through the real `redbarn frontend` and `redbarn worker`.

The frontend serves clients over TLS on one port and workers over mutual TLS on
another, requires bearer tokens (files named by flags and `REDBARN_*` variables) and
refuses client AC writes. The worker connects with its CA, client certificate and
token. A client then runs a normal action, tries what it must not do, and sends
malicious input trees and output paths through Execute: each fails inside the
ExecuteResponse with INVALID_ARGUMENT, nothing is written outside the build
directory, nothing is cached, and the worker keeps serving.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from frontend.test_security_tls import Pki, make_pki
from google.longrunning import operations_pb2

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.runtime.redisserver import RedisServer, free_port

from .conftest import FAST

pytestmark = pytest.mark.system

CLIENT_TOKEN = "client-token-3b9e"
WORKER_TOKEN = "worker-token-c41d"
ADMIN_TOKEN = "admin-token-90fa"
Req = re_pb2.BatchUpdateBlobsRequest.Request


def _digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


@dataclass
class Secured:
    tmp: Path
    pki: Pki
    port: int
    worker_port: int
    frontend: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: list[Path]

    def channel(self) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.pki.ca.read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds)

    def outside(self) -> list[str]:
        """Everything under tmp but the worker's build and cache directories and the logs."""
        out = []
        for dirpath, dirs, files in os.walk(self.tmp):
            rel = os.path.relpath(dirpath, self.tmp)
            if rel.split(os.sep)[0] in ("build", "cache"):
                dirs[:] = []
                continue
            out += [os.path.join(rel, f) for f in files + dirs if not f.endswith(".log")]
        return sorted(out)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    pki = make_pki(tmp_path / "pki")
    for role, token in (("client", CLIENT_TOKEN), ("worker", WORKER_TOKEN), ("admin", ADMIN_TOKEN)):
        (tmp_path / f"{role}.tokens").write_text(f"# {role}s\n{token}\n")
    redis = RedisServer().start()
    port, worker_port = free_port(), free_port()
    logs = [tmp_path / "frontend.log", tmp_path / "worker.log"]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "REDBARN_CLIENT_TOKENS": str(tmp_path / "client.tokens"),  # flags and env both work
        "REDBARN_TLS_CLIENT_CA": str(pki.ca),
    }
    with logs[0].open("wb") as out:
        frontend = subprocess.Popen(
            [sys.executable, "-m", "redbarn", "frontend", *FAST, "--log-level", "debug",
             "--listen", f"127.0.0.1:{port}", "--worker-listen", f"127.0.0.1:{worker_port}",
             "--redis", redis.url, "--worker-tokens", str(tmp_path / "worker.tokens"),
             "--admin-tokens", str(tmp_path / "admin.tokens"),
             "--allow-client-ac-writes", "false",
             "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    (tmp_path / "worker.token").write_text(WORKER_TOKEN + "\n")
    with logs[1].open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "redbarn", "worker", "--log-level", "DEBUG",
             "--frontend", f"127.0.0.1:{worker_port}", "--concurrency", "1",
             "--build-dir", str(tmp_path / "build"), "--cache-dir", str(tmp_path / "cache"),
             "--token-file", str(tmp_path / "worker.token"), "--tls-ca", str(pki.ca),
             "--tls-cert", str(pki.worker_cert), "--tls-key", str(pki.worker_key)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    s = Secured(tmp_path, pki, port, worker_port, frontend, worker, logs)
    try:
        with s.channel() as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
        yield s
    finally:
        _stop(worker)
        _stop(frontend)
        redis.cleanup()


MD = [("authorization", f"Bearer {CLIENT_TOKEN}")]


def _upload(cas: Any, *blobs: bytes) -> None:
    reply = cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=_digest(b), data=b) for b in blobs]),
        metadata=MD,
        timeout=10,
    )
    assert [r.status.code for r in reply.responses] == [0] * len(blobs)


def _action(cas: Any, command: re_pb2.Command, root: re_pb2.Directory, *blobs: bytes) -> Any:
    c, r = command.SerializeToString(), root.SerializeToString()
    action = re_pb2.Action(command_digest=_digest(c), input_root_digest=_digest(r))
    action.timeout.seconds = 30
    a = action.SerializeToString()
    _upload(cas, c, r, a, *blobs)
    return _digest(a)


def _execute(channel: grpc.Channel, digest: re_pb2.Digest) -> re_pb2.ExecuteResponse:
    execution = re_grpc.ExecutionStub(channel)
    deadline = time.monotonic() + 60
    while True:
        try:
            ops: list[operations_pb2.Operation] = list(
                execution.Execute(
                    re_pb2.ExecuteRequest(action_digest=digest), metadata=MD, timeout=60
                )
            )
            break
        except grpc.RpcError as err:  # until the worker has registered
            retry = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
            if err.code() not in retry or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    response = re_pb2.ExecuteResponse()
    assert ops[-1].done and ops[-1].response.Unpack(response)
    return response


PAYLOAD = b"owned\n"


def _tree(case: str) -> tuple[re_pb2.Command, re_pb2.Directory]:
    """A malicious input tree or output path; the command would write `ran`."""
    command = re_pb2.Command(arguments=["sh", "-c", "echo x > ran"], output_paths=["ran"])
    root = re_pb2.Directory()
    inner = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=_digest(PAYLOAD))])
    if case == "file named ..":
        root.files.add(name="..", digest=_digest(PAYLOAD))
    elif case == "file name with a slash":
        root.files.add(name="../../../escaped", digest=_digest(PAYLOAD))
    elif case == "directory named x/../..":
        root.directories.add(name="x/../..", digest=_digest(inner.SerializeToString()))
    elif case == "duplicate names":
        root.files.add(name="dup", digest=_digest(PAYLOAD))
        root.files.add(name="dup", digest=_digest(PAYLOAD))
    elif case == "absolute symlink":
        root.symlinks.add(name="l", target="/etc/passwd")
    elif case == "symlink out of the root":
        root.symlinks.add(name="l", target="../outside")
    elif case == "output path out of the root":
        command.ClearField("output_paths")
        command.output_paths.append("../escape")
    elif case == "absolute working directory":
        command.working_directory = "/tmp"
    return command, root


MALICIOUS = [
    "file named ..",
    "file name with a slash",
    "directory named x/../..",
    "duplicate names",
    "absolute symlink",
    "symlink out of the root",
    "output path out of the root",
    "absolute working directory",
]


def test_all_controls_through_real_processes(secured: Secured) -> None:
    before = secured.outside()
    with secured.channel() as ch:
        cas = re_grpc.ContentAddressableStorageStub(ch)
        ac = re_grpc.ActionCacheStub(ch)
        # Right credentials: a normal action runs on the mTLS worker.
        ok = _action(cas, re_pb2.Command(arguments=["sh", "-c", "echo hello"]), re_pb2.Directory())
        response = _execute(ch, ok)
        assert response.status.code == 0 and response.result.exit_code == 0, response
        cached = ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=ok), metadata=MD)
        assert cached.exit_code == 0  # written by the worker, though clients may not write
        # Wrong credentials: no token, a worker's token for Execute, an AC write.
        with pytest.raises(grpc.RpcError) as info:
            cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            list(
                re_grpc.ExecutionStub(ch).Execute(
                    re_pb2.ExecuteRequest(action_digest=ok),
                    metadata=[("authorization", f"Bearer {WORKER_TOKEN}")],
                    timeout=10,
                )
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            ac.UpdateActionResult(
                re_pb2.UpdateActionResultRequest(
                    action_digest=ok, action_result=re_pb2.ActionResult(exit_code=7)
                ),
                metadata=MD,
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A client on the client port cannot Synchronize, whatever its token.
        for token in (CLIENT_TOKEN, ADMIN_TOKEN):
            with pytest.raises(grpc.RpcError) as info:
                rw_grpc.OperationQueueStub(ch).Synchronize(
                    rw_pb2.SynchronizeRequest(current_state=rw_pb2.CurrentState(idle={})),
                    metadata=[("authorization", f"Bearer {token}")],
                    timeout=10,
                )
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Malicious trees, end to end through Execute.
        outcomes = {}
        for case in MALICIOUS:
            command, root = _tree(case)
            digest = _action(cas, command, root, PAYLOAD, re_pb2.Directory(
                files=[re_pb2.FileNode(name="f", digest=_digest(PAYLOAD))]
            ).SerializeToString())  # fmt: skip
            response = _execute(ch, digest)
            outcomes[case] = (response.status.code, response.status.message)
            with pytest.raises(grpc.RpcError) as info:
                ac.GetActionResult(
                    re_pb2.GetActionResultRequest(action_digest=digest), metadata=MD, timeout=10
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, case
        print("\n".join(f"{case}: {code} {message}" for case, (code, message) in outcomes.items()))
        assert {case: code for case, (code, _) in outcomes.items()} == dict.fromkeys(MALICIOUS, 3)
        assert all(message for _, message in outcomes.values())
        # The worker survived all of it and still runs actions.
        again = _action(
            cas, re_pb2.Command(arguments=["sh", "-c", "echo still-here"]), re_pb2.Directory()
        )
        assert _execute(ch, again).status.code == 0
    assert secured.outside() == before
    assert secured.frontend.poll() is None and secured.worker.poll() is None
    # Without a client certificate, nothing on the worker port.
    creds = grpc.ssl_channel_credentials(root_certificates=secured.pki.ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{secured.worker_port}", creds) as ch:
        with pytest.raises(grpc.RpcError) as info:
            rw_grpc.OperationQueueStub(ch).Synchronize(
                rw_pb2.SynchronizeRequest(), metadata=[("authorization", f"Bearer {WORKER_TOKEN}")],
                timeout=10,
            )  # fmt: skip
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    _stop(secured.worker)
    _stop(secured.frontend)
    for log in secured.logs:
        text = log.read_text()
        for secret in (CLIENT_TOKEN, WORKER_TOKEN, ADMIN_TOKEN):
            assert secret not in text, (log.name, secret)
    assert "bearer tokens required" in secured.logs[0].read_text()
