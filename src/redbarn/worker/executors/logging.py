"""LoggingBuildExecutor: one log line per finished action, naming worker and digest."""

from __future__ import annotations

import logging
import time

from google.rpc import code_pb2

from redbarn import digests
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.executors.base import BuildExecutor, Job

log = logging.getLogger("redbarn.worker.actions")


class LoggingBuildExecutor:
    def __init__(self, inner: BuildExecutor) -> None:
        self._inner = inner

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        started = time.monotonic()
        log.debug("%s: executing %s", job.worker_name, digests.key(job.action_digest))
        response = await self._inner.execute(job)
        elapsed = time.monotonic() - started
        if response.status.code == code_pb2.OK:
            log.info(
                "%s: %s exit %d in %.3fs",
                job.worker_name,
                digests.key(job.action_digest),
                response.result.exit_code,
                elapsed,
            )
        else:
            log.warning(
                "%s: %s failed in %.3fs: %s %s",
                job.worker_name,
                digests.key(job.action_digest),
                elapsed,
                code_pb2.Code.Name(response.status.code),
                response.status.message,
            )
        return response
