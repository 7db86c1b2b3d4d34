"""The scheduler core as a frontend holds it: one object per process, one part per protocol.

`Scheduler` only builds and holds the parts; each lives in its own module:

- `registry`    platform queues (which exist, which one an Execute goes to), the clock;
- `operations`  Execute's enqueue, WaitExecution's views and streams (`OperationView`);
- `intake`      the whole Execute: the Action from the CAS, the Action Cache, the enqueue;
- `synchronize` worker reports, assignment, parking (`WorkerReport`);
- `control`     BuildQueueState writes: kill, drains, terminate;
- `admin`       BuildQueueState reads;
- `reaper`      lost workers, abandoned operations, empty platform queues;
- `sizeclass`   feedback-driven initial size classes (only with `feedback_driven`);
- `hints`       how waiters are woken; `replies` the typed script replies;
- `events`      what an observer (the frontend's metrics) is told as replies are decoded.

Every state change is one Lua script (`scripts`); the core raises the domain errors of
`redbarn.errors` and never imports grpc. Frontend use: `Scheduler(redis, config,
hints=hub, fast=...)`, `await start()`, run `run_reaper()` in the background (every
frontend does; the reaper is idempotent). The redis client must allow as many
connections as there are concurrent calls (use a BlockingConnectionPool). Any number of
Scheduler objects, in any number of processes, may share one Redis.
"""

from __future__ import annotations

from typing import Any

from redbarn.proto import scheduler_pb2
from redbarn.queue.admin import AdminReads
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.control import Control
from redbarn.queue.events import NoEvents, SchedulerEvents
from redbarn.queue.hints import Hints, PollingHints
from redbarn.queue.operations import MissingBlobs, Operations, OperationView
from redbarn.queue.reaper import Reaper
from redbarn.queue.registry import Registry
from redbarn.queue.scripts import Scripts
from redbarn.queue.sizeclass import Settings, SizeClassAnalyzer
from redbarn.queue.synchronize import WorkerReport, Workers
from redbarn.runtime.fastredis import FastRedis
from redbarn.runtime.outage import OutageLog

__all__ = [
    "Hints",
    "MissingBlobs",
    "OperationView",
    "PollingHints",
    "Scheduler",
    "WorkerReport",
]


class Scheduler:
    """The parts of the scheduler over one Redis (or RedisCluster) client."""

    def __init__(
        self,
        redis: Any,
        config: SchedulerConfig | None = None,
        *,
        hints: Hints | None = None,
        fast: FastRedis | None = None,
        events: SchedulerEvents | None = None,
        feedback_driven: scheduler_pb2.InitialSizeClassFeedbackDrivenAnalyzerConfiguration
        | None = None,
    ) -> None:
        """`feedback_driven` (--action-router's, validated by `redbarn.router`) turns on
        learned initial size classes."""
        self.redis = redis
        self.config = config = config or SchedulerConfig()
        self.hints: Hints = hints or PollingHints()
        events = events or NoEvents()
        self.events = events
        self.scripts = scripts = Scripts(redis, fast, local_hints=self.hints.deliver)
        self.registry = registry = Registry(redis, config, self.hints.fid)
        self.operations = Operations(registry, scripts, self.hints, config, events)
        self.workers = Workers(redis, registry, scripts, self.hints, config, events)
        self.control = Control(redis, registry, scripts, config, events)
        self.reaper = Reaper(registry, scripts, config, events)
        self.admin = AdminReads(redis, config)
        self.size_classes: SizeClassAnalyzer | None = None
        if feedback_driven is not None:
            self.size_classes = SizeClassAnalyzer(
                redis, registry, scripts, config, Settings.of(feedback_driven)
            )
            self.operations.size_classes = self.workers.size_classes = self.size_classes

    def observe(self, events: SchedulerEvents) -> None:
        """Tell `events` from now on (the frontend's metrics, added after construction)."""
        self.events = events
        for part in (self.operations, self.workers, self.control, self.reaper):
            part.events = events
        self.scripts.timer = events.script_called

    @property
    def fid(self) -> str:
        return self.hints.fid

    async def start(self) -> None:
        """Record the first start time (drives the start-up grace period) and declare
        the predeclared platform queues."""
        await self.registry.start()
        await self.reaper.declare()

    async def run_reaper(self, interval: float = 1.0, *, outage: OutageLog | None = None) -> None:
        await self.reaper.run(interval, outage=outage)
