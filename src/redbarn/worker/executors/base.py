"""The `BuildExecutor` role and the `Job` it is given.

Contract: `execute(job)` returns an ExecuteResponse and never raises, except
`asyncio.CancelledError` when the job is cancelled (its result is then discarded).
Failures go into `ExecuteResponse.status`; the first error wins (`status.attach_error`).
While running it calls `job.report(stage)` for each stage it enters.
"""

from __future__ import annotations

import enum
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import any_pb2, timestamp_pb2

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cas import Scope
from redbarn.worker.runner import Launch


class Stage(enum.Enum):
    FETCHING_INPUTS = "fetching_inputs"
    RUNNING = "running"
    UPLOADING_OUTPUTS = "uploading_outputs"


@dataclass
class Usage:
    """What the local executor observed about the command's process, for decorators."""

    rusage: resource.struct_rusage | None = None
    termination_signal: str | None = None


@dataclass
class Job:
    """One assignment, as the Synchronize loop hands it to the executor chain."""

    action_digest: re_pb2.Digest
    action: re_pb2.Action
    scope: Scope
    worker_name: str
    queued_timestamp: timestamp_pb2.Timestamp = field(default_factory=timestamp_pb2.Timestamp)
    auxiliary_metadata: list[any_pb2.Any] = field(default_factory=list)
    report: Callable[[Stage], None] = lambda stage: None
    usage: Usage = field(default_factory=Usage)
    # How to start the command instead of directly (set by ContainerBuildExecutor).
    launch: Launch | None = None


class BuildExecutor(Protocol):
    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        """Run `job`; never raise (see module docstring)."""
        ...


def new_response(job: Job) -> re_pb2.ExecuteResponse:
    """Buildbarn's base response: the assignment's auxiliary metadata, empty logs."""
    response = re_pb2.ExecuteResponse()
    response.result.execution_metadata.auxiliary_metadata.extend(job.auxiliary_metadata)
    return response


def compose(
    inner: BuildExecutor, *decorators: Callable[[BuildExecutor], BuildExecutor]
) -> BuildExecutor:
    """`compose(local, A, B)` is `B(A(local))`: the chain reads innermost first."""
    executor = inner
    for decorate in decorators:
        executor = decorate(executor)
    return executor
