"""LocalBuildExecutor: fetch inputs, run the command, upload outputs (Buildbarn LBE).

Steps, each failure going into `status` with Buildbarn's message prefix:
validate the action; create a build directory; fetch the Command and the input root
(copies of the local cache's files, hardlinks under --run-as; within the input limits);
create output parents; with --run-as, hand the directories to the action user; run
with the action's timeout (directly, or as `job.launch` wraps it); kill what it left
running (`sweep`); upload stdout, stderr and outputs within the output limits (also
after a timeout or a failed start). The build directory is removed afterwards, also on
cancellation, after another sweep.

The command's environment is exactly the Command's environment_variables over the
worker's --env, plus TMPDIR and HOME (directories of its own build directory, which
override both); nothing of the worker's own environment is passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc

from redbarn import digests, errors
from redbarn.errors import InvalidArgument, RedbarnError
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker import builddir, inputs, outputs, runner
from redbarn.worker.cache import LocalCache
from redbarn.worker.cas import Blob, CasClient
from redbarn.worker.executors.base import Job, Stage, new_response
from redbarn.worker.runas import ActionUser
from redbarn.worker.runner import RunSpec
from redbarn.worker.status import attach_error
from redbarn.worker.sweep import Sweeper

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
        user: ActionUser | None = None,
        sweeper: Sweeper | None = None,
        input_limits: inputs.InputLimits | None = None,
        output_limits: outputs.OutputLimits | None = None,
    ) -> None:
        self._cas = cas
        self._cache = cache
        self._build_dir = build_dir
        self._environment = dict(environment or {})
        self._directories = directories or inputs.DirectoryCache()
        self._user = user
        self._input_limits = input_limits or inputs.InputLimits()
        self._output_limits = output_limits or outputs.OutputLimits()
        self._sweeper = sweeper or Sweeper(
            user.uid if user else os.getuid(), uid_dedicated=user is not None
        )

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        response = new_response(job)
        workdir: list[builddir.ActionDir] = []
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
                await asyncio.shield(self._clean_up(workdir[0]))
        return response

    async def _clean_up(self, d: builddir.ActionDir) -> None:
        """Kill what is left of the action, then remove its build directory."""
        try:
            await self._sweeper.sweep(d.path)
        except OSError as err:
            log.warning("cannot sweep the processes of %s: %s", d.path, err)
        try:
            await asyncio.to_thread(builddir.remove, d.path)
        except OSError as err:  # left for the next start's cleanup
            log.warning("cannot remove build directory %s: %s", d.path, err)

    async def _execute(
        self, job: Job, response: re_pb2.ExecuteResponse, workdir: list[builddir.ActionDir]
    ) -> None:
        timeout = _timeout(job)
        try:
            d = await asyncio.to_thread(
                builddir.create,
                self._build_dir,
                job.action_digest.hash,
                shared=self._user is not None,
            )
        except OSError as err:
            raise _wrapped("Failed to acquire build environment", err) from None
        workdir.append(d)
        job.report(Stage.FETCHING_INPUTS)
        command, decl = await self._inputs(job, d.root)
        if self._user is not None:
            try:
                await _in_thread(builddir.hand_over, d, self._user.uid, self._user.gid)
            except OSError as err:
                raise _wrapped("Failed to acquire build environment", err) from None
        job.report(Stage.RUNNING)
        await self._run(job, response, command, d, os.path.join(d.root, decl.working_directory),
                        timeout)  # fmt: skip
        job.report(Stage.UPLOADING_OUTPUTS)
        await self._upload(job, response, d.root, decl, d.stdout, d.stderr)

    async def _inputs(self, job: Job, root: str) -> tuple[re_pb2.Command, outputs.Declared]:
        """Load and check the Command, populate the input root, create output parents."""
        action, scope, cas = job.action, job.scope, self._cas
        try:
            digests.validate(action.command_digest, scope.digest_function)
            command = re_pb2.Command.FromString(await cas.read_blob(scope, action.command_digest))
        except Exception as err:
            raise _wrapped("Failed to obtain command", err) from None
        if not command.arguments:
            raise InvalidArgument("Insufficient number of command arguments")
        decl = outputs.declared(command)
        try:
            await inputs.materialise(cas, self._cache, scope, action.input_root_digest, root,
                                     self._directories, self._input_limits)  # fmt: skip
        except Exception as err:
            raise _wrapped("Failed to obtain input root", err) from None

        def make_parents() -> None:
            outputs.make_parents(root, f"{decl.working_directory}/.")  # the directory itself
            for _, rel in decl.paths:
                outputs.make_parents(root, rel)

        await _in_thread(make_parents)
        return command, decl

    async def _run(
        self,
        job: Job,
        response: re_pb2.ExecuteResponse,
        command: re_pb2.Command,
        d: builddir.ActionDir,
        cwd: str,
        timeout: float,
    ) -> None:
        """Run the command, then kill what it left running; its exit code, rusage or
        failure go into `response`/`job`."""
        spec = RunSpec(
            list(command.arguments),
            action_environment(self._environment, command, d),
            cwd,
            self._user,
            (d.root, d.tmp, d.home),
        )
        launch = job.launch
        try:
            if launch is not None:
                spec = launch.wrap(spec)
            await self._sweeper.started()
            finished = False
            try:
                ran = await runner.run(spec.arguments, spec.environment, spec.working_directory,
                                       d.stdout, d.stderr, timeout, spec.user)  # fmt: skip
                finished = not ran.timed_out
            finally:
                self._sweeper.stopped()
                if launch is not None:
                    await asyncio.shield(launch.stop(finished))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            attach_error(response, _wrapped("Failed to run command", err))
            return
        finally:
            # Nothing of the action may run on while its outputs are read.
            await asyncio.shield(self._sweeper.sweep(d.path))
        job.usage.rusage = ran.rusage
        job.usage.termination_signal = ran.termination_signal
        if ran.timed_out:
            message = (
                f"Failed to run command: Timeout of {timeout:g}s exceeded; process group killed"
            )
            attach_error(response, errors.DeadlineExceeded(message))
        else:
            response.result.exit_code = ran.exit_code

    async def _upload(
        self,
        job: Job,
        response: re_pb2.ExecuteResponse,
        root: str,
        decl: outputs.Declared,
        stdout_path: str,
        stderr_path: str,
    ) -> None:
        """Upload stdout, stderr and the outputs; a failed output collection still
        uploads the logs, a failed upload removes every digest from the result."""
        fn = job.scope.digest_function
        result = response.result
        limits = self._output_limits

        def gather() -> tuple[list[Blob], outputs.Collected | None, Exception | None]:
            blobs: list[Blob] = []
            try:
                for attr, p in (("stdout_digest", stdout_path), ("stderr_digest", stderr_path)):
                    blob = outputs.log_blob(p, fn, limits) if os.path.exists(p) else None
                    if blob is not None:
                        blobs.append(blob)
                        getattr(result, attr).CopyFrom(blob.digest)
                collected = outputs.collect(root, decl, fn, limits)
            except Exception as err:
                return blobs, None, err
            return blobs + collected.blobs, collected, None

        try:
            blobs, collected, failed = await _in_thread(gather)
            if failed is not None:
                attach_error(response, _wrapped("Failed to collect outputs", failed))
            await self._cas.upload(job.scope, blobs)
        except Exception as err:
            attach_error(response, _wrapped("Failed to upload outputs", err))
            result.ClearField("stdout_digest")
            result.ClearField("stderr_digest")
            return
        if collected is not None:
            got = collected.result
            result.output_files.extend(got.output_files)
            result.output_directories.extend(got.output_directories)
            result.output_symlinks.extend(got.output_symlinks)
            result.output_file_symlinks.extend(got.output_file_symlinks)
            result.output_directory_symlinks.extend(got.output_directory_symlinks)


def action_environment(
    worker_env: Mapping[str, str], command: re_pb2.Command, d: builddir.ActionDir
) -> dict[str, str]:
    """--env, under the Command's environment_variables, under TMPDIR and HOME."""
    env = dict(worker_env)
    env.update((v.name, v.value) for v in command.environment_variables)
    env["TMPDIR"] = d.tmp
    env["HOME"] = d.home
    return env


def _timeout(job: Job) -> float:
    """The action's timeout in seconds; also checks the action digest (Buildbarn order)."""
    action = job.action
    if not action.HasField("timeout"):
        raise InvalidArgument("Invalid execution timeout: No timeout provided")
    timeout = float(action.timeout.ToTimedelta().total_seconds())
    if timeout <= 0:
        raise InvalidArgument(f"Invalid execution timeout: {timeout:g}s is not positive")
    try:
        digests.validate(job.action_digest, job.scope.digest_function)
    except RedbarnError as err:
        raise errors.wrap("Failed to extract digest for action", err) from None
    return timeout
