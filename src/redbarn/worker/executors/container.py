"""ContainerBuildExecutor: run an action inside the image its platform names.

An action whose platform (Action.platform) has `container-image` (Bazel's convention:
`docker://IMAGE[:TAG]`, the prefix stripped) is run by `--container-runtime` (podman
or docker) instead of directly; every other action passes through untouched. Without
a runtime such an action fails with FAILED_PRECONDITION naming the property.

The local executor still fetches inputs, enforces the timeout, sweeps processes and
uploads outputs; `ContainerLaunch.wrap` only turns its command into

    RUNTIME run --rm --name redbarn-<random> --network=none --user UID:GID
        --volume D:D ... --workdir CWD --env K=V ... IMAGE ARGV...

with D each of the action's root/, tmp/ and home/ at the same path (so TMPDIR, HOME
and the working directory mean the same inside), UID:GID the --run-as user (else the
worker's own), and exactly the action's environment (the runtime adds its own few
variables: podman sets container=podman, HOSTNAME, TERM, and PATH when unset).
No network: actions are meant to be hermetic, and an open network would let one reach
the worker's frontend with whatever it found. After a timeout or cancellation
`stop` kills and removes the container by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets

from redbarn.errors import FailedPrecondition, InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.executors.base import BuildExecutor, Job, new_response
from redbarn.worker.runner import RunSpec
from redbarn.worker.status import attach_error

log = logging.getLogger(__name__)

CONTAINER_IMAGE = "container-image"
_PREFIX = "docker://"


def container_image(platform: re_pb2.Platform) -> str | None:
    """The image an action's platform asks for ("" prefix stripped), None if none.
    Raises InvalidArgument for a value no runtime could take as an image."""
    values = [p.value for p in platform.properties if p.name == CONTAINER_IMAGE]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidArgument(f"Platform property {CONTAINER_IMAGE} is given {len(values)} times")
    image = values[0].removeprefix(_PREFIX)
    if not image or image.startswith("-") or any(c.isspace() for c in image):
        raise InvalidArgument(f"Platform property {CONTAINER_IMAGE} {values[0]!r} is no image")
    return image


class ContainerLaunch:
    """Starts one command in `image` through `runtime` (see the module docstring)."""

    def __init__(self, runtime: str, image: str) -> None:
        self.runtime = runtime
        self.image = image
        self.name = f"redbarn-{secrets.token_hex(8)}"

    def wrap(self, spec: RunSpec) -> RunSpec:
        uid, gid = (spec.user.uid, spec.user.gid) if spec.user else (os.getuid(), os.getgid())
        argv = [self.runtime, "run", "--rm", "--name", self.name, "--network=none"]
        argv += ["--user", f"{uid}:{gid}"]
        for path in spec.mounts:
            if ":" in path or "," in path:
                raise FailedPrecondition(f"Build directory path {path} cannot be mounted")
            argv += ["--volume", f"{path}:{path}"]
        argv += ["--workdir", spec.working_directory]
        for k, v in sorted(spec.environment.items()):
            argv += ["--env", f"{k}={v}"]
        argv += [self.image, *spec.arguments]
        # The runtime itself runs as the worker, with the worker's environment.
        return RunSpec(argv, dict(os.environ), spec.working_directory, None, spec.mounts)

    async def stop(self, finished: bool) -> None:
        """After the runtime exited by itself (`finished`), `--rm` has removed the
        container; otherwise kill it and remove it."""
        if finished:
            return
        for args in (("kill", "--signal", "KILL", self.name), ("rm", "--force", self.name)):
            with contextlib.suppress(OSError, TimeoutError):
                proc = await asyncio.create_subprocess_exec(
                    self.runtime,
                    *args,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    log.warning("%s %s timed out", self.runtime, " ".join(args))


class ContainerBuildExecutor:
    """Sets `job.launch` for actions with a container-image platform property."""

    def __init__(self, inner: BuildExecutor, runtime: str = "") -> None:
        self._inner = inner
        self._runtime = runtime

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        try:
            image = container_image(job.action.platform)
            if image is not None and not self._runtime:
                raise FailedPrecondition(
                    f"Platform property {CONTAINER_IMAGE} is set, but this worker has no"
                    " --container-runtime"
                )
        except (InvalidArgument, FailedPrecondition) as err:
            response = new_response(job)
            attach_error(response, err)
            return response
        if image is None:
            return await self._inner.execute(job)
        launch = ContainerLaunch(self._runtime, image)
        return await self._inner.execute(dataclasses.replace(job, launch=launch))
