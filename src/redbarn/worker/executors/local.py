"""LocalBuildExecutor: fetch inputs, run the command, upload outputs (Buildbarn LBE).

Steps, each failure going into `status` with Buildbarn's message prefix:
validate the action; create a build directory; fetch the Command and the input
root (hardlinked from the local cache); create output parents; run with the
action's timeout; upload stdout, stderr and outputs (also after a timeout or a
failed start). The build directory is removed afterwards, also on cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc

from redbarn import errors
from redbarn.errors import InvalidArgument, RedbarnError
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker import builddir, digests, inputs, outputs, runner
from redbarn.worker.cache import LocalCache
from redbarn.worker.cas import Blob, CasClient
from redbarn.worker.executors.base import Job, Stage, new_response
from redbarn.worker.status import attach_error

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in a thread; if cancelled meanwhile, let it finish before re-raising,
    so that the build directory is never removed while a thread still writes into it."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


def _wrapped(prefix: str, err: Exception) -> Exception:
    if isinstance(err, RedbarnError):
        return errors.wrap(prefix, err)
    if isinstance(err, grpc.aio.AioRpcError):
        wrapped = RedbarnError(f"{prefix}: {err.details() or err.code().name}")
        wrapped.code = err.code().name
        return wrapped
    if isinstance(err, OSError):
        return errors.Internal(f"{prefix}: {err}")
    return err


class LocalBuildExecutor:
    def __init__(
        self,
        cas: CasClient,
        cache: LocalCache,
        build_dir: str,
        environment: Mapping[str, str] | None = None,
        directories: inputs.DirectoryCache | None = None,
    ) -> None:
        self._cas = cas
        self._cache = cache
        self._build_dir = build_dir
        self._environment = dict(environment or {})
        self._directories = directories or inputs.DirectoryCache()

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        response = new_response(job)
        workdir: list[str] = []
        try:
            await self._execute(job, response, workdir)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if not isinstance(err, RedbarnError | grpc.aio.AioRpcError):
                log.exception("action %s failed unexpectedly", digests.key(job.action_digest))
            attach_error(response, err)
        finally:
            if workdir:
                try:
                    await asyncio.shield(asyncio.to_thread(builddir.remove, workdir[0]))
                except OSError as err:  # left for the next start's cleanup
                    log.warning("cannot remove build directory %s: %s", workdir[0], err)
        return response

    async def _execute(
        self, job: Job, response: re_pb2.ExecuteResponse, workdir: list[str]
    ) -> None:
        action, scope, cas = job.action, job.scope, self._cas
        if not action.HasField("timeout"):
            raise InvalidArgument("Invalid execution timeout: No timeout provided")
        timeout = action.timeout.ToTimedelta().total_seconds()
        if timeout <= 0:
            raise InvalidArgument(f"Invalid execution timeout: {timeout}s is not positive")
        try:
            digests.validate(job.action_digest, scope.digest_function)
        except RedbarnError as err:
            raise errors.wrap("Failed to extract digest for action", err) from None

        try:
            path = await asyncio.to_thread(builddir.create, self._build_dir, job.action_digest.hash)
        except OSError as err:
            raise _wrapped("Failed to acquire build environment", err) from None
        workdir.append(path)
        root = os.path.join(path, "root")
        os.mkdir(root)
        job.report(Stage.FETCHING_INPUTS)

        try:
            digests.validate(action.command_digest, scope.digest_function)
            command = re_pb2.Command.FromString(await cas.read_blob(scope, action.command_digest))
        except Exception as err:
            raise _wrapped("Failed to obtain command", err) from None
        if not command.arguments:
            raise InvalidArgument("Insufficient number of command arguments")
        decl = outputs.declared(command)

        try:
            tree = await inputs.fetch_tree(cas, scope, action.input_root_digest, self._directories)
            sources = await self._cache.ensure(cas, scope, [w for _, w in tree.files])
            try:
                await _in_thread(inputs.link_tree, tree, root, sources)
            finally:
                self._cache.unpin(sources)
        except Exception as err:
            raise _wrapped("Failed to obtain input root", err) from None

        def prepare() -> None:
            # the working directory itself, then every output's parent
            outputs.make_parents(root, f"{decl.working_directory}/.")
            for _, rel in decl.paths:
                outputs.make_parents(root, rel)

        await _in_thread(prepare)

        env = dict(self._environment)
        env.update((v.name, v.value) for v in command.environment_variables)
        stdout_path = os.path.join(path, "stdout")
        stderr_path = os.path.join(path, "stderr")
        job.report(Stage.RUNNING)
        try:
            ran = await runner.run(
                command.arguments,
                env,
                os.path.join(root, decl.working_directory),
                stdout_path,
                stderr_path,
                timeout,
            )
        except Exception as err:
            attach_error(response, _wrapped("Failed to run command", err))
        else:
            job.usage.rusage = ran.rusage
            job.usage.termination_signal = ran.termination_signal
            if ran.timed_out:
                attach_error(
                    response,
                    errors.DeadlineExceeded(
                        f"Failed to run command: Timeout of {timeout:g}s exceeded; "
                        "process group killed"
                    ),
                )
            else:
                response.result.exit_code = ran.exit_code

        job.report(Stage.UPLOADING_OUTPUTS)
        await self._upload(job, response, root, decl, stdout_path, stderr_path)

    async def _upload(
        self,
        job: Job,
        response: re_pb2.ExecuteResponse,
        root: str,
        decl: outputs.Declared,
        stdout_path: str,
        stderr_path: str,
    ) -> None:
        fn = job.scope.digest_function
        blobs: list[Blob] = []
        result = response.result

        def gather() -> outputs.Collected:
            for attr, p in (("stdout_digest", stdout_path), ("stderr_digest", stderr_path)):
                if os.path.exists(p):
                    blob = outputs.log_blob(p, fn)
                    if blob is not None:
                        blobs.append(blob)
                        getattr(result, attr).CopyFrom(blob.digest)
            return outputs.collect(root, decl, fn)

        try:
            collected = await _in_thread(gather)
            blobs.extend(collected.blobs)
            await self._cas.upload(job.scope, blobs)
        except Exception as err:
            attach_error(response, _wrapped("Failed to upload outputs", err))
            result.ClearField("stdout_digest")
            result.ClearField("stderr_digest")
            return
        result.output_files.extend(collected.result.output_files)
        result.output_directories.extend(collected.result.output_directories)
        result.output_symlinks.extend(collected.result.output_symlinks)
        result.output_file_symlinks.extend(collected.result.output_file_symlinks)
        result.output_directory_symlinks.extend(collected.result.output_directory_symlinks)
