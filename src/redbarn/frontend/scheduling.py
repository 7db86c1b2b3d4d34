"""Wires the scheduler into a frontend: Execution, OperationQueue, BuildQueueState,
the hint hub and the reaper. `scheduling_hook(config)` is a `create_server` hook (see `server`)."""

from __future__ import annotations

import logging

from redbarn.frontend.buildqueuestate import BuildQueueStateServicer
from redbarn.frontend.execution import ExecutionServicer
from redbarn.frontend.hub import Hub, new_frontend_id
from redbarn.frontend.operation_queue import OperationQueueServicer
from redbarn.frontend.server import EXECUTION, Frontend, Hook
from redbarn.proto import (
    buildqueuestate_pb2,
    buildqueuestate_pb2_grpc,
    remoteworker_pb2,
    remoteworker_pb2_grpc,
)
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.intake import Intake
from redbarn.queue.scheduler import Scheduler
from redbarn.runtime.outage import UNREACHABLE

log = logging.getLogger(__name__)

OPERATION_QUEUE = remoteworker_pb2.DESCRIPTOR.services_by_name["OperationQueue"].full_name
BUILD_QUEUE_STATE = buildqueuestate_pb2.DESCRIPTOR.services_by_name["BuildQueueState"].full_name


def scheduling_hook(config: SchedulerConfig, *, reaper_interval: float = 2.0) -> Hook:
    """A hook adding remote execution to a frontend (and returning its Scheduler via
    `hook.scheduler` once run, for tests)."""

    async def add_scheduling(frontend: Frontend) -> None:
        outage = frontend.redis_outage  # one log of a Redis outage for every loop
        hub = Hub(frontend.redis, new_frontend_id(), outage=outage)
        scheduler = Scheduler(
            frontend.redis,
            config,
            hints=hub,
            fast=frontend.fast_redis,
            feedback_driven=frontend.config.router.feedback_driven,
        )
        add_scheduling.scheduler = scheduler  # type: ignore[attr-defined]

        async def record_start() -> None:
            # In the background, after the first health check: Redis may be down at
            # start (the health check has said so); a later Execute records it then.
            try:
                await scheduler.start()
            except UNREACHABLE as err:
                outage.failed(err, "recording the scheduler start time failed")
            except Exception as err:
                log.warning("could not record the scheduler start time: %s", err)

        intake = Intake(
            scheduler.operations, frontend.blobs, frontend.action_cache, frontend.redis,
            max_action_size=frontend.config.max_action_size,
            max_blob_size=frontend.config.max_blob_size,
            platform_key_extractor=frontend.config.router.platform_key_extractor,
            static_platform=frontend.config.router.static_platform,
            ignored_properties=frozenset(frontend.config.ignored_platform_properties),
        )  # fmt: skip
        execution = ExecutionServicer(intake, scheduler.operations)
        frontend.add_service(re_grpc.add_ExecutionServicer_to_server, execution, EXECUTION)
        frontend.add_service(
            remoteworker_pb2_grpc.add_OperationQueueServicer_to_server,
            OperationQueueServicer(scheduler.workers),
            OPERATION_QUEUE,
        )
        frontend.add_service(
            buildqueuestate_pb2_grpc.add_BuildQueueStateServicer_to_server,
            BuildQueueStateServicer(scheduler),
            BUILD_QUEUE_STATE,
        )
        frontend.exec_enabled = True
        frontend.add_background(record_start)
        frontend.add_background(hub.run)
        frontend.add_background(lambda: scheduler.run_reaper(reaper_interval, outage=outage))

        async def shutdown() -> None:
            # Parked Synchronize calls answer `idle` now; streams end so clients reattach.
            hub.close()

        frontend.on_shutdown(shutdown)

    return add_scheduling
