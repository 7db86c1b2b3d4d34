"""TimestampedBuildExecutor: fill every ExecutedActionMetadata field (Buildbarn W19).

`worker` is the worker name, `queued_timestamp` comes from the assignment, each
stage's start is when its report arrives and its end is the next report (or the
end). `virtual_execution_duration` is execution_completed - execution_start when
the inner executor left it unset. The fields are merged over the inner metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from google.protobuf import timestamp_pb2

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.executors.base import BuildExecutor, Job, Stage

_FIELDS = {
    Stage.FETCHING_INPUTS: ("input_fetch_start_timestamp", "input_fetch_completed_timestamp"),
    Stage.RUNNING: ("execution_start_timestamp", "execution_completed_timestamp"),
    Stage.UPLOADING_OUTPUTS: ("output_upload_start_timestamp", "output_upload_completed_timestamp"),
}


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class TimestampedBuildExecutor:
    def __init__(
        self, inner: BuildExecutor, clock: Callable[[], timestamp_pb2.Timestamp] = _now
    ) -> None:
        self._inner = inner
        self._clock = clock

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        meta = re_pb2.ExecutedActionMetadata(worker=job.worker_name)
        meta.queued_timestamp.CopyFrom(job.queued_timestamp)
        meta.worker_start_timestamp.CopyFrom(self._clock())
        open_field: list[str] = []
        outer_report = job.report

        def close(now: timestamp_pb2.Timestamp) -> None:
            if open_field:
                getattr(meta, open_field.pop()).CopyFrom(now)

        def report(stage: Stage) -> None:
            now = self._clock()
            close(now)
            start, end = _FIELDS[stage]
            getattr(meta, start).CopyFrom(now)
            open_field.append(end)
            outer_report(stage)

        response = await self._inner.execute(dataclasses.replace(job, report=report))
        now = self._clock()
        close(now)
        meta.worker_completed_timestamp.CopyFrom(now)
        target = response.result.execution_metadata
        if not target.HasField("virtual_execution_duration") and meta.HasField(
            "execution_completed_timestamp"
        ):
            start = meta.execution_start_timestamp.ToNanoseconds()
            end = meta.execution_completed_timestamp.ToNanoseconds()
            meta.virtual_execution_duration.FromNanoseconds(end - start)
        target.MergeFrom(meta)
        return response
