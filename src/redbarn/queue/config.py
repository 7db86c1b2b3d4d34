"""The scheduler's settings: one frozen dataclass, every timing configurable.

Defaults are Buildbarn's production values (reference §2.1) except where DESIGN.md
improves on them (attempt budget, bounded idle jitter). The frontend maps its flags
onto this; tests use short timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass

from redbarn.config import HOUR, MINUTE
from redbarn.queue import keys


@dataclass(frozen=True)
class SchedulerConfig:
    # A worker is lost this long after its last Synchronize ended (never while parked).
    worker_timeout: float = 60.0
    # Longest time an idle or completed report is held (parked); jittered in [T/2, T].
    idle_sync_timeout: float = 60.0
    # next_synchronization_at offset for executing workers ("continue" and assignments).
    busy_sync_interval: float = 10.0
    # An operation lives this long after its last waiter's last touch.
    operation_retention: float = 60.0
    # Keep-alive period of Execute/WaitExecution streams.
    execution_update_interval: float = 60.0
    # A size class queue with no workers this long is removed; also the start-up grace.
    platform_queue_timeout: float = 15 * MINUTE
    # Action.timeout when unset, and the largest accepted.
    default_action_timeout: float = 30 * MINUTE
    max_action_timeout: float = 2 * HOUR
    # Assignments of one task before a lost worker fails it instead of requeueing it.
    max_attempts: int = 3
    # Re-hands of an assignment to a worker that reports idle before failing with INTERNAL.
    rehand_limit: int = 9
    # Queued operations per platform queue beyond which Execute gets RESOURCE_EXHAUSTED.
    max_queued_per_platform: int = 1_000_000
    # Waiters re-read state this often even without a hint (and refresh their lease).
    waiter_poll_interval: float = 5.0
    # Levels of the invocation tree, outermost first ("c": correlated_invocations_id,
    # "t": tool_invocation_id): Buildbarn's invocation key extractors (--action-router).
    invocation_keys: tuple[str, ...] = ("c", "t")
    # How long the platform registry is cached in-process.
    platform_cache_ttl: float = 2.0
    # Entries of each kind one reaper call handles.
    reap_batch: int = 200

    @property
    def effective_busy_interval(self) -> float:
        """next_synchronization_at offset for busy workers, capped at half the worker
        timeout: a worker that reports when told to is never declared lost."""
        return min(self.busy_sync_interval, self.worker_timeout / 2)

    @property
    def touch_interval(self) -> float:
        """How often a waiter re-reads its operation and renews its lease: the poll
        interval, but always well within operation_retention, or a watched operation
        would be collected while its client waits."""
        return min(self.waiter_poll_interval, self.operation_retention / 3)

    def script_config(self, domain: str) -> str:
        """ARGV[1] of every script: the domain id, the timings in ms, the hint channel
        prefix (see _lib.lua); the caller appends its frontend id."""

        def ms(s: float) -> int:
            return max(0, round(s * 1000))

        return " ".join(
            str(v)
            for v in (
                domain,
                ms(self.worker_timeout),
                ms(self.effective_busy_interval),
                ms(self.idle_sync_timeout),
                ms(self.operation_retention),
                self.max_attempts,
                self.rehand_limit,
                ms(self.platform_queue_timeout),
                self.max_queued_per_platform,
                keys.CHANNEL_PREFIX,
            )
        )
