"""CachingBuildExecutor: write the ActionResult to the Action Cache (Buildbarn W22).

Buildbarn also stores a HistoricalExecuteResponse for uncached results, for its
browser; redbarn has no browser and skips that.
"""

from __future__ import annotations

import asyncio
import logging

from redbarn import digests
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cas import CasClient
from redbarn.worker.executors.base import BuildExecutor, Job
from redbarn.worker.status import attach_error, succeeded

log = logging.getLogger(__name__)


class CachingBuildExecutor:
    """Stores the result of an action that succeeded (`status.succeeded`) and is not
    `do_not_cache`. A failed write becomes the response's status (if it has none yet)."""

    def __init__(self, inner: BuildExecutor, cas: CasClient) -> None:
        self._inner = inner
        self._cas = cas

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        response = await self._inner.execute(job)
        if job.action.do_not_cache or not succeeded(response):
            return response
        try:
            await self._cas.update_action_result(job.scope, job.action_digest, response.result)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("AC write for %s failed: %s", digests.key(job.action_digest), err)
            attach_error(response, err, "Failed to store cached action result")
        return response
