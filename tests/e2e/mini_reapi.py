"""A tiny in-memory REAPI v2 server that runs actions on this machine, one by one.

It is NOT redbarn: it exists so the Bazel end-to-end harness (tests/e2e/bazel.py, the
flags, the stand-in repositories and the workspace) can be checked against a real
remote executor before `redbarn up` exists, and so a harness failure can be told
apart from a redbarn failure. It serves Capabilities, CAS, ByteStream, ActionCache and
Execution for instance name "" (any instance name is accepted and ignored).

    python tests/e2e/mini_reapi.py --port 8980
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc
from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2

from redbarn.proto import bytestream_pb2, bytestream_pb2_grpc, semver_pb2
from redbarn.proto import remote_execution_pb2 as re
from redbarn.proto import remote_execution_pb2_grpc as re_grpc


def digest_of(data: bytes) -> re.Digest:
    return re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


class Store:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.ac: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.executed = 0

    def put(self, data: bytes) -> re.Digest:
        d = digest_of(data)
        with self.lock:
            self.blobs[d.hash] = data
        return d

    def get(self, d: re.Digest) -> bytes | None:
        with self.lock:
            return self.blobs.get(d.hash)

    def get_msg(self, d: re.Digest, cls):  # type: ignore[no-untyped-def]
        data = self.get(d)
        if data is None:
            raise KeyError(d.hash)
        return cls.FromString(data)


class Capabilities(re_grpc.CapabilitiesServicer):
    def GetCapabilities(self, request, context):  # type: ignore[no-untyped-def]
        v2 = semver_pb2.SemVer(major=2)
        return re.ServerCapabilities(
            cache_capabilities=re.CacheCapabilities(
                digest_functions=[re.DigestFunction.SHA256],
                action_cache_update_capabilities=re.ActionCacheUpdateCapabilities(
                    update_enabled=True
                ),
                max_batch_total_size_bytes=4 << 20,
                symlink_absolute_path_strategy=re.SymlinkAbsolutePathStrategy.ALLOWED,
            ),
            execution_capabilities=re.ExecutionCapabilities(
                digest_function=re.DigestFunction.SHA256, exec_enabled=True
            ),
            low_api_version=v2,
            high_api_version=v2,
        )


class Cas(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def FindMissingBlobs(self, request, context):  # type: ignore[no-untyped-def]
        missing = [d for d in request.blob_digests if self.store.get(d) is None]
        return re.FindMissingBlobsResponse(missing_blob_digests=missing)

    def BatchUpdateBlobs(self, request, context):  # type: ignore[no-untyped-def]
        out = []
        for r in request.requests:
            ok = digest_of(r.data) == r.digest
            if ok:
                self.store.put(r.data)
            code = code_pb2.OK if ok else code_pb2.INVALID_ARGUMENT
            out.append(
                re.BatchUpdateBlobsResponse.Response(
                    digest=r.digest, status=status_pb2.Status(code=code)
                )
            )
        return re.BatchUpdateBlobsResponse(responses=out)

    def BatchReadBlobs(self, request, context):  # type: ignore[no-untyped-def]
        out = []
        for d in request.digests:
            data = self.store.get(d)
            code = code_pb2.OK if data is not None else code_pb2.NOT_FOUND
            out.append(
                re.BatchReadBlobsResponse.Response(
                    digest=d, data=data or b"", status=status_pb2.Status(code=code)
                )
            )
        return re.BatchReadBlobsResponse(responses=out)

    def GetTree(self, request, context):  # type: ignore[no-untyped-def]
        dirs, todo = [], [request.root_digest]
        while todo:
            d = self.store.get_msg(todo.pop(), re.Directory)
            dirs.append(d)
            todo.extend(n.digest for n in d.directories)
        yield re.GetTreeResponse(directories=dirs)


class ByteStream(bytestream_pb2_grpc.ByteStreamServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def Read(self, request, context):  # type: ignore[no-untyped-def]
        parts = request.resource_name.split("/")
        i = parts.index("blobs")
        data = self.store.get(re.Digest(hash=parts[i + 1], size_bytes=int(parts[i + 2])))
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, request.resource_name)
        data = data[request.read_offset :]
        for off in range(0, max(len(data), 1), 1 << 20):
            yield bytestream_pb2.ReadResponse(data=data[off : off + (1 << 20)])

    def Write(self, request_iterator, context):  # type: ignore[no-untyped-def]
        buf, name = bytearray(), ""
        for req in request_iterator:
            name = req.resource_name or name
            buf += req.data
            if req.finish_write:
                break
        parts = name.split("/")
        i = parts.index("blobs")
        if digest_of(bytes(buf)).hash != parts[i + 1]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"digest mismatch for {name}")
        self.store.put(bytes(buf))
        return bytestream_pb2.WriteResponse(committed_size=len(buf))

    def QueryWriteStatus(self, request, context):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "no resumable writes")


class ActionCache(re_grpc.ActionCacheServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def GetActionResult(self, request, context):  # type: ignore[no-untyped-def]
        with self.store.lock:
            data = self.store.ac.get(request.action_digest.hash)
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "not in the action cache")
        return re.ActionResult.FromString(data)

    def UpdateActionResult(self, request, context):  # type: ignore[no-untyped-def]
        with self.store.lock:
            self.store.ac[request.action_digest.hash] = request.action_result.SerializeToString()
        return request.action_result


class Execution(re_grpc.ExecutionServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def _materialize(self, d: re.Digest, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        directory = self.store.get_msg(d, re.Directory)
        for f in directory.files:
            data = self.store.get(f.digest)
            if data is None:
                raise KeyError(f.digest.hash)
            (path / f.name).write_bytes(data)
            os.chmod(path / f.name, 0o755 if f.is_executable else 0o644)
        for s in directory.symlinks:
            os.symlink(s.target, path / s.name)
        for sub in directory.directories:
            self._materialize(sub.digest, path / sub.name)

    def _directory(self, path: Path, children: list[re.Directory]) -> re.Directory:
        out = re.Directory()
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_dir():
                child = self._directory(Path(entry.path), children)
                children.append(child)
                out.directories.add(name=entry.name, digest=digest_of(child.SerializeToString()))
            else:
                data = Path(entry.path).read_bytes()
                out.files.add(
                    name=entry.name,
                    digest=self.store.put(data),
                    is_executable=os.access(entry.path, os.X_OK),
                )
        return out

    def _run(self, request: re.ExecuteRequest) -> re.ExecuteResponse:
        action = self.store.get_msg(request.action_digest, re.Action)
        if not request.skip_cache_lookup and not action.do_not_cache:
            with self.store.lock:
                cached = self.store.ac.get(request.action_digest.hash)
            if cached is not None:
                return re.ExecuteResponse(
                    result=re.ActionResult.FromString(cached), cached_result=True
                )
        command = self.store.get_msg(action.command_digest, re.Command)
        root = Path(tempfile.mkdtemp(prefix="mini-reapi-"))
        try:
            self._materialize(action.input_root_digest, root)
            cwd = root / command.working_directory
            outs = list(command.output_paths) or [
                *command.output_files,
                *command.output_directories,
            ]
            for o in outs:
                (cwd / o).parent.mkdir(parents=True, exist_ok=True)
            timeout = action.timeout.seconds or 300
            env = {e.name: e.value for e in command.environment_variables}
            with self.store.lock:
                self.store.executed += 1
            try:
                proc = subprocess.run(
                    list(command.arguments), cwd=cwd, env=env, capture_output=True, timeout=timeout
                )
                exit_code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
            except subprocess.TimeoutExpired:
                return re.ExecuteResponse(
                    status=status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message="timeout")
                )
            result = re.ActionResult(
                exit_code=exit_code,
                stdout_digest=self.store.put(stdout),
                stderr_digest=self.store.put(stderr),
            )
            for o in outs:
                p = cwd / o
                if p.is_dir():
                    children: list[re.Directory] = []
                    tree = re.Tree(root=self._directory(p, children), children=children)
                    result.output_directories.add(
                        path=o, tree_digest=self.store.put(tree.SerializeToString())
                    )
                elif p.is_file():
                    result.output_files.add(
                        path=o,
                        digest=self.store.put(p.read_bytes()),
                        is_executable=os.access(p, os.X_OK),
                    )
            if exit_code == 0 and not action.do_not_cache:
                with self.store.lock:
                    self.store.ac[request.action_digest.hash] = result.SerializeToString()
            return re.ExecuteResponse(result=result)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def Execute(self, request, context):  # type: ignore[no-untyped-def]
        try:
            response = self._run(request)
        except KeyError as missing:
            violation = f"blobs/{missing.args[0]}"
            response = re.ExecuteResponse(
                status=status_pb2.Status(
                    code=code_pb2.FAILED_PRECONDITION, message=f"missing {violation}"
                )
            )
        op = operations_pb2.Operation(name=f"op-{request.action_digest.hash}", done=True)
        op.response.Pack(response)
        yield op


def serve(port: int) -> grpc.Server:
    store = Store()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    re_grpc.add_CapabilitiesServicer_to_server(Capabilities(), server)
    re_grpc.add_ContentAddressableStorageServicer_to_server(Cas(store), server)
    re_grpc.add_ActionCacheServicer_to_server(ActionCache(store), server)
    re_grpc.add_ExecutionServicer_to_server(Execution(store), server)
    bytestream_pb2_grpc.add_ByteStreamServicer_to_server(ByteStream(store), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.store = store  # type: ignore[attr-defined]
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8980)
    args = parser.parse_args()
    server = serve(args.port)
    print(f"mini-reapi listening on 127.0.0.1:{args.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(grace=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
