"""ResourceUsageBuildExecutor: the command's wait4 rusage as POSIXResourceUsage.

Appended to `execution_metadata.auxiliary_metadata` after the assignment's own
entries (Buildbarn W20), whenever the local executor reaped the process.
`maximum_resident_set_size` is in bytes (Linux ru_maxrss is KiB).
"""

from __future__ import annotations

import resource
import sys

from google.protobuf import any_pb2

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import resourceusage_pb2
from redbarn.worker.executors.base import BuildExecutor, Job

_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def posix_usage(
    ru: resource.struct_rusage, signal: str | None
) -> resourceusage_pb2.POSIXResourceUsage:
    usage = resourceusage_pb2.POSIXResourceUsage(
        maximum_resident_set_size=ru.ru_maxrss * _RSS_UNIT,
        page_reclaims=ru.ru_minflt,
        page_faults=ru.ru_majflt,
        swaps=ru.ru_nswap,
        block_input_operations=ru.ru_inblock,
        block_output_operations=ru.ru_oublock,
        messages_sent=ru.ru_msgsnd,
        messages_received=ru.ru_msgrcv,
        signals_received=ru.ru_nsignals,
        voluntary_context_switches=ru.ru_nvcsw,
        involuntary_context_switches=ru.ru_nivcsw,
        termination_signal=signal or "",
    )
    usage.user_time.FromNanoseconds(round(ru.ru_utime * 1e9))
    usage.system_time.FromNanoseconds(round(ru.ru_stime * 1e9))
    return usage


class ResourceUsageBuildExecutor:
    def __init__(self, inner: BuildExecutor) -> None:
        self._inner = inner

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        response = await self._inner.execute(job)
        if job.usage.rusage is not None:
            packed = any_pb2.Any()
            packed.Pack(posix_usage(job.usage.rusage, job.usage.termination_signal))
            response.result.execution_metadata.auxiliary_metadata.append(packed)
        return response
