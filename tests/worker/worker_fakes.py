"""In-process fakes for worker tests: an in-memory CAS/AC/ByteStream and a tiny
OperationQueue that hands out queued actions and records every Synchronize; and a
worker process whose log a test can read."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2
from google.rpc import code_pb2, status_pb2

from redbarn.proto import bytestream_pb2, bytestream_pb2_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.worker.config import WorkerConfig
from redbarn.worker.executors.metrics import WorkerMetrics


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key(d: re_pb2.Digest) -> str:
    return f"{d.hash}-{d.size_bytes}"


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class FakeStorage(
    re_grpc.ContentAddressableStorageServicer,
    re_grpc.ActionCacheServicer,
    bytestream_pb2_grpc.ByteStreamServicer,
):
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.ac: dict[str, re_pb2.ActionResult] = {}
        self.calls: dict[str, int] = {}
        self.fail_next = 0  # answer this many BatchReadBlobs with UNAVAILABLE

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def put(self, data: bytes) -> re_pb2.Digest:
        d = digest(data)
        self.blobs[key(d)] = data
        return d

    def put_message(self, msg: object) -> re_pb2.Digest:
        return self.put(msg.SerializeToString(deterministic=True))  # type: ignore[attr-defined]

    def get(self, d: re_pb2.Digest) -> bytes:
        return self.blobs[key(d)]

    async def FindMissingBlobs(self, request, context):  # type: ignore[no-untyped-def]
        self._count("FindMissingBlobs")
        return re_pb2.FindMissingBlobsResponse(
            missing_blob_digests=[d for d in request.blob_digests if key(d) not in self.blobs]
        )

    async def BatchReadBlobs(self, request, context):  # type: ignore[no-untyped-def]
        self._count("BatchReadBlobs")
        if self.fail_next:
            self.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "storage restarting")
        out = re_pb2.BatchReadBlobsResponse()
        for d in request.digests:
            data = self.blobs.get(key(d))
            r = out.responses.add(digest=d)
            if data is None:
                r.status.code = code_pb2.NOT_FOUND
            else:
                r.data = data
        return out

    async def BatchUpdateBlobs(self, request, context):  # type: ignore[no-untyped-def]
        self._count("BatchUpdateBlobs")
        out = re_pb2.BatchUpdateBlobsResponse()
        for r in request.requests:
            assert digest(r.data) == r.digest
            self.blobs[key(r.digest)] = r.data
            out.responses.add(digest=r.digest, status=status_pb2.Status())
        return out

    async def GetActionResult(self, request, context):  # type: ignore[no-untyped-def]
        result = self.ac.get(key(request.action_digest))
        if result is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "not in AC")
        return result

    async def UpdateActionResult(self, request, context):  # type: ignore[no-untyped-def]
        self._count("UpdateActionResult")
        self.ac[key(request.action_digest)] = request.action_result
        return request.action_result

    async def Read(self, request, context) -> AsyncIterator[bytestream_pb2.ReadResponse]:  # type: ignore[no-untyped-def, override]
        self._count("Read")
        parts = request.resource_name.split("/")
        data = self.blobs.get(f"{parts[-2]}-{parts[-1]}")
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "blob not found")
        for i in range(0, len(data), 1 << 20):
            yield bytestream_pb2.ReadResponse(data=data[i : i + (1 << 20)])

    async def Write(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self._count("Write")
        name = ""
        chunks = []
        async for r in request_iterator:
            name = name or r.resource_name
            chunks.append(r.data)
        data = b"".join(chunks)
        parts = name.split("/")
        assert parts[-2] == hashlib.sha256(data).hexdigest(), name
        self.blobs[f"{parts[-2]}-{parts[-1]}"] = data
        return bytestream_pb2.WriteResponse(committed_size=len(data))


@dataclass
class Assignment:
    desired: rw_pb2.DesiredState.Executing
    result: asyncio.Future[re_pb2.ExecuteResponse]
    worker: str | None = None


@dataclass
class FakeScheduler(rw_grpc.OperationQueueServicer):
    """Hands queued actions to idle workers; answers progress with "continue"."""

    poll: float = 0.2
    queue: asyncio.Queue[Assignment] = field(default_factory=asyncio.Queue)
    requests: list[rw_pb2.SynchronizeRequest] = field(default_factory=list)
    assigned: dict[str, Assignment] = field(default_factory=dict)
    cancel: set[str] = field(default_factory=set)  # workers to send `idle` to
    fail_next: int = 0
    busy_interval: float = 10.0  # next_synchronization_at offset for "continue"
    preempt: bool = False  # hand queued work to busy workers (replacing their action)
    stages: dict[str, list[str]] = field(default_factory=dict)
    # Hold the reply to an idle worker's assignment until the call is cancelled (the reply
    # is lost), and hand it again to that worker's next idle report, as the real one does.
    lose_replies: bool = False

    def submit(self, action_digest: re_pb2.Digest, action: re_pb2.Action) -> Assignment:
        ex = rw_pb2.DesiredState.Executing(
            action_digest=action_digest,
            action=action,
            digest_function=re_pb2.DigestFunction.SHA256,
        )
        ex.queued_timestamp.GetCurrentTime()
        a = Assignment(ex, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(a)
        return a

    def _worker(self, request: rw_pb2.SynchronizeRequest) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(request.worker_id.items()))

    async def Synchronize(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        if self.fail_next:
            self.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scheduler restarting")
        worker = self._worker(request)
        state = request.current_state
        if state.WhichOneof("worker_state") == "executing":
            ex = state.executing
            stage = ex.WhichOneof("execution_state")
            self.stages.setdefault(key(ex.action_digest), []).append(stage)
            current = self.assigned.get(worker)
            if stage != "completed":
                if worker in self.cancel or current is None:
                    self.cancel.discard(worker)
                    self.assigned.pop(worker, None)
                    return self._idle()
                if self.preempt and not self.queue.empty():
                    return self._assign(worker, self.queue.get_nowait())
                return rw_pb2.SynchronizeResponse(
                    next_synchronization_at=_ts(_now() + self.busy_interval)
                )
            if current is not None and key(current.desired.action_digest) == key(ex.action_digest):
                del self.assigned[worker]
                if not current.result.done():
                    current.result.set_result(ex.completed)
        if self.lose_replies and worker in self.assigned:
            return self._assign(worker, self.assigned[worker])
        if request.prefer_being_idle:
            return self._idle()
        try:
            a = await asyncio.wait_for(self.queue.get(), self.poll)
        except TimeoutError:
            return self._idle()
        reply = self._assign(worker, a)
        if self.lose_replies:
            await asyncio.Event().wait()
        return reply

    def _assign(self, worker: str, a: Assignment) -> rw_pb2.SynchronizeResponse:
        a.worker = worker
        self.assigned[worker] = a
        return rw_pb2.SynchronizeResponse(
            next_synchronization_at=_ts(_now() + 10),
            desired_state=rw_pb2.DesiredState(executing=a.desired),
        )

    def _idle(self) -> rw_pb2.SynchronizeResponse:
        return rw_pb2.SynchronizeResponse(
            next_synchronization_at=_ts(_now()),
            desired_state=rw_pb2.DesiredState(idle=empty_pb2.Empty()),
        )


def _now() -> float:
    import time

    return time.time()


async def start_server(
    storage: FakeStorage,
    scheduler: FakeScheduler,
    address: str = "127.0.0.1:0",
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    re_grpc.add_ContentAddressableStorageServicer_to_server(storage, server)
    re_grpc.add_ActionCacheServicer_to_server(storage, server)
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(storage, server)
    rw_grpc.add_OperationQueueServicer_to_server(scheduler, server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, port


# -- building actions ------------------------------------------------------------------


@dataclass
class Tree:
    """An input tree spec: files (content, executable), dirs, symlinks."""

    files: dict[str, tuple[bytes, bool]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)


def upload_tree(storage: FakeStorage, tree: Tree) -> re_pb2.Digest:
    dirs: dict[str, re_pb2.Directory] = {"": re_pb2.Directory()}

    def ensure(path: str) -> re_pb2.Directory:
        if path not in dirs:
            ensure(path.rpartition("/")[0])
            dirs[path] = re_pb2.Directory()
        return dirs[path]

    for path, (content, exe) in tree.files.items():
        parent, _, name = path.rpartition("/")
        ensure(parent).files.add(name=name, digest=storage.put(content), is_executable=exe)
    for path, target in tree.symlinks.items():
        parent, _, name = path.rpartition("/")
        ensure(parent).symlinks.add(name=name, target=target)
    # Attach children bottom-up (deepest first).
    for path in sorted((p for p in dirs if p), key=lambda p: p.count("/"), reverse=True):
        parent, _, name = path.rpartition("/")
        d = storage.put_message(dirs[path])
        dirs[parent].directories.add(name=name, digest=d)
    for d in dirs.values():
        d.files.sort(key=lambda n: n.name)
        d.directories.sort(key=lambda n: n.name)
        d.symlinks.sort(key=lambda n: n.name)
    return storage.put_message(dirs[""])


def make_action(
    storage: FakeStorage,
    arguments: list[str],
    *,
    tree: Tree | None = None,
    root: re_pb2.Digest | None = None,
    output_paths: list[str] | None = None,
    output_files: list[str] | None = None,
    output_directories: list[str] | None = None,
    working_directory: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    do_not_cache: bool = False,
    output_directory_format: int = 0,
) -> tuple[re_pb2.Digest, re_pb2.Action]:
    command = re_pb2.Command(
        arguments=arguments,
        environment_variables=[
            re_pb2.Command.EnvironmentVariable(name=k, value=v)
            for k, v in sorted((env or {"PATH": "/usr/bin:/bin"}).items())
        ],
        output_paths=output_paths or [],
        output_files=output_files or [],
        output_directories=output_directories or [],
        working_directory=working_directory,
        output_directory_format=output_directory_format,  # type: ignore[arg-type]
    )
    if root is None:
        root = upload_tree(storage, tree or Tree())
    action = re_pb2.Action(
        command_digest=storage.put_message(command),
        input_root_digest=root,
        timeout=duration_pb2.Duration(seconds=int(timeout), nanos=int((timeout % 1) * 1e9)),
        do_not_cache=do_not_cache,
    )
    return storage.put_message(action), action


@dataclass
class Cluster:
    storage: FakeStorage
    scheduler: FakeScheduler
    config: WorkerConfig
    port: int
    server: grpc.aio.Server
    shutdown: asyncio.Event
    worker: asyncio.Task[WorkerMetrics]
    tmp: Path

    async def run(self, arguments: list[str], **kwargs: object) -> re_pb2.ExecuteResponse:
        action_digest, action = make_action(self.storage, arguments, **kwargs)  # type: ignore[arg-type]
        a = self.scheduler.submit(action_digest, action)
        return await asyncio.wait_for(a.result, 30)

    def build_dirs(self) -> list[str]:
        return [n for n in os.listdir(self.config.build_dir) if not n.startswith(".")]


def outside_snapshot(tmp: Path) -> list[str]:
    """Everything under `tmp` except the worker's build and cache directories."""
    out = []
    for dirpath, dirs, files in os.walk(tmp):
        rel = os.path.relpath(dirpath, tmp)
        if rel.split(os.sep)[0] in ("build", "cache"):
            dirs[:] = []
            continue
        out.extend(os.path.join(rel, f) for f in files + dirs)
    return sorted(out)


# -- worker processes ------------------------------------------------------------------

# How long an idle worker may take from SIGTERM to its exit (the process included).
IDLE_STOP = 2.0


@dataclass
class Worker:
    """A `python -m redbarn.worker` process and the lines it has logged so far."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        async def read() -> None:
            assert self.proc.stderr is not None
            while not any(text in line for line in self.lines):
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError(f"worker exited before logging {text!r}:\n{self.log}")
                self.lines.append(line.decode())

        await asyncio.wait_for(read(), timeout)

    async def stop_time(
        self, sig: signal.Signals = signal.SIGTERM, limit: float = 15.0
    ) -> tuple[float, int]:
        """Seconds from `sig` until the process exited, and its exit status."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            _, rest = await asyncio.wait_for(self.proc.communicate(), limit)
        except TimeoutError:
            raise AssertionError(f"still running {limit:g} s after {sig.name}") from None
        elapsed = time.monotonic() - start
        self.lines.append(rest.decode() if rest else "")
        assert self.proc.returncode is not None
        return elapsed, self.proc.returncode


@contextlib.asynccontextmanager
async def worker_process(tmp_path: Path, frontend: str, *flags: str) -> AsyncIterator[Worker]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redbarn.worker",
        "--frontend", frontend,
        "--concurrency", "1",
        "--build-dir", str(tmp_path / "build"),
        "--cache-dir", str(tmp_path / "cache"),
        "--hostname", "proc",
        *flags,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Worker(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def unused_port() -> int:
    """A port nothing listens on (bound, then released: connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
