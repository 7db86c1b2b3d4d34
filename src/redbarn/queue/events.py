"""What the scheduler core tells an observer (metrics) as it decodes script replies.

`SchedulerEvents` is the role; `NoEvents` ignores everything (the default, and what
tests of the core use). `redbarn.frontend.metrics.Metrics` implements it with
Prometheus counters and histograms. Each event fires in the frontend process that
decoded it, once per event in the cluster, so summing a counter over every frontend
gives the cluster's total.

A platform queue is named as Buildbarn's metrics name it: instance name prefix,
platform (its JSON form, `codec.platform_json`) and size class.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

# Outcomes of a completed task (the `outcome` label of the completion counter).
SUCCESS = "success"  # status OK, exit code 0
ACTION_FAILURE = "action_failure"  # ran, and failed: a non-zero exit code or an error status
TIMEOUT = "timeout"  # status DEADLINE_EXCEEDED: the action's timeout passed
WORKER_LOST = "worker_lost"  # its workers disappeared (attempt budget spent, or queue removed)
KILLED = "killed"  # KillOperations
OUTCOMES = (SUCCESS, ACTION_FAILURE, TIMEOUT, WORKER_LOST, KILLED)

# Why a task went back to the queue (the `reason` label of the requeue counter).
REQUEUE_WORKER_LOST = "worker_lost"  # its worker's lease expired, or it came back without it
REQUEUE_SIZE_CLASS = "size_class_fallback"  # failed on a smaller size class: rerun on the largest
REQUEUE_REASONS = (REQUEUE_WORKER_LOST, REQUEUE_SIZE_CLASS)

# Which waiter found a change that its hint never brought (the `waiter` label of the
# lost hint counter).
HINT_WORKER = "worker"  # a parked Synchronize: its worker had been given work
HINT_OPERATION = "operation"  # an Execute or WaitExecution stream: its operation moved on
HINT_WAITERS = (HINT_WORKER, HINT_OPERATION)

# How an Execute met the in-flight dedup (Buildbarn's `outcome` label values).
NEW = "New"
SAME_INVOCATION = "SameInvocation"
OTHER_INVOCATION = "OtherInvocation"


class QueueName(NamedTuple):
    """One size class queue, as labels."""

    instance_name_prefix: str
    platform: str  # codec.platform_json
    size_class: int


class SchedulerEvents(Protocol):
    """Receives the scheduler's events. Every method must be cheap and must not raise."""

    def operation_created(self, queue: QueueName, *, dedup: str, to_worker: bool) -> None:
        """Execute created an operation: `dedup` is NEW, SAME_INVOCATION or
        OTHER_INVOCATION; `to_worker` when it went straight to a parked worker."""

    def action_cache_hit(self, instance_name: str) -> None:
        """Execute answered from the Action Cache (no operation was queued)."""

    def task_assigned(self, queue: QueueName, *, queued_seconds: float) -> None:
        """A worker was handed a task that had been queued this long."""

    def task_completed(
        self, queue: QueueName, *, outcome: str, grpc_code: str, executing_seconds: float | None
    ) -> None:
        """A task completed (`outcome` in OUTCOMES); `executing_seconds` when it ran."""

    def task_requeued(self, queue: QueueName, *, reason: str) -> None:
        """A task went back to the queue (`reason` in REQUEUE_REASONS)."""

    def late_report(self, queue: QueueName) -> None:
        """A worker reported on an assignment it no longer holds (fenced, discarded)."""

    def script_called(self, script: str, seconds: float) -> None:
        """One Lua script call took this long (round trip, as the caller saw it)."""

    def hint_lost(self, waiter: str) -> None:
        """A waiter's own look at Redis (its timer, not a hint) found the change a hint
        should have brought: `waiter` in HINT_WAITERS."""


class NoEvents:
    """Ignores every event."""

    def operation_created(self, queue: QueueName, *, dedup: str, to_worker: bool) -> None:
        pass

    def action_cache_hit(self, instance_name: str) -> None:
        pass

    def task_assigned(self, queue: QueueName, *, queued_seconds: float) -> None:
        pass

    def task_completed(
        self, queue: QueueName, *, outcome: str, grpc_code: str, executing_seconds: float | None
    ) -> None:
        pass

    def task_requeued(self, queue: QueueName, *, reason: str) -> None:
        pass

    def late_report(self, queue: QueueName) -> None:
        pass

    def script_called(self, script: str, seconds: float) -> None:
        pass

    def hint_lost(self, waiter: str) -> None:
        pass
