"""The scheduler's settings: one frozen dataclass, every timing configurable.

Defaults are Buildbarn's production values (reference §2.1) except where DESIGN.md
improves on them (attempt budget, bounded idle jitter). The frontend maps its flags
onto this; tests use short timeouts.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from google.protobuf import json_format

from redbarn.config import HOUR, MINUTE, ConfigError
from redbarn.errors import InvalidArgument
from redbarn.proto import bb_scheduler_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys, validate


@dataclass(frozen=True)
class PredeclaredQueue:
    """A platform queue that always exists (bb_scheduler's predeclared_platform_queues):
    never reaped, so Execute queues work on it with no worker present."""

    instance_name_prefix: str
    platform_json: str  # codec.platform_json of its (sorted) platform
    size_classes: tuple[int, ...]  # increasing
    # worker_invocation_stickiness_limits, in ms, outermost level first (R34).
    stickiness_limits_ms: tuple[int, ...] = ()
    # maximum_queued_background_learning_operations, background_learning_operation_priority
    max_background_learning: int = 0
    background_learning_priority: int = 0

    @property
    def domain(self) -> str:
        return keys.domain_id(self.instance_name_prefix, self.platform_json)


def parse_predeclared(text: str, flag: str = "--platform-queue") -> PredeclaredQueue:
    """One PredeclaredPlatformQueueConfiguration in protobuf JSON (bb_scheduler's form),
    checked as bb_scheduler checks it. Raises ConfigError naming what is wrong."""
    msg = bb_scheduler_pb2.PredeclaredPlatformQueueConfiguration()
    try:
        json_format.Parse(text, msg)
    except json_format.ParseError as err:
        reason = str(err).splitlines()[0] if str(err) else "not protobuf JSON"
        raise ConfigError(f"invalid {flag} {text!r}: {reason}") from None
    classes = tuple(msg.size_classes)
    if not classes:
        raise ConfigError(f"invalid {flag} {text!r}: sizeClasses must list at least one size class")
    if any(b <= a for a, b in itertools.pairwise(classes)):
        raise ConfigError(
            f"invalid {flag} {text!r}: sizeClasses must be in increasing order, got {list(classes)}"
        )
    if len(classes) > 1 and classes[0] == 0:
        raise ConfigError(
            f"invalid {flag} {text!r}: with more than one size class all must be positive"
        )
    pairs = sorted((p.name, p.value) for p in msg.platform.properties)
    platform = re_pb2.Platform(
        properties=[re_pb2.Platform.Property(name=n, value=v) for n, v in pairs]
    )
    try:
        validate.instance_name(msg.instance_name_prefix)
        validate.platform(platform)
    except InvalidArgument as err:
        raise ConfigError(f"invalid {flag} {text!r}: {err}") from None
    limits = []
    for d in msg.worker_invocation_stickiness_limits:
        ms = d.seconds * 1000 + d.nanos // 1_000_000
        if ms < 0:
            raise ConfigError(
                f"invalid {flag} {text!r}: workerInvocationStickinessLimits must not be negative"
            )
        limits.append(ms)
    return PredeclaredQueue(
        msg.instance_name_prefix,
        codec.platform_json(platform),
        classes,
        stickiness_limits_ms=tuple(limits),
        max_background_learning=msg.maximum_queued_background_learning_operations,
        background_learning_priority=msg.background_learning_operation_priority,
    )


@dataclass(frozen=True)
class SchedulerConfig:
    # A worker is lost this long after its last Synchronize ended (never while parked).
    worker_timeout: float = 60.0
    # Longest time an idle or completed report is held (parked); jittered in [T/2, T].
    idle_sync_timeout: float = 60.0
    # Holds of idle_sync_timeout one park in Redis covers: between them the frontend
    # answers the worker and holds its next idle Synchronize again without Redis, so an
    # idle worker costs Redis one park per this many holds (1 = every hold parks).
    park_holds: int = 8
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
    # Platform queues that always exist (--platform-queue), never reaped.
    predeclared: tuple[PredeclaredQueue, ...] = ()
    # Hash slots each predeclared platform queue is spread over (--queue-shards; 1 = not
    # sharded). Every frontend of a cluster must say the same (docs/scaling.md).
    queue_shards: int = 1
    # How long the platform registry is cached in-process.
    platform_cache_ttl: float = 2.0
    # Entries of each kind one reaper call handles.
    reap_batch: int = 200

    def shards_of(self, domain: str) -> int:
        """How many shards platform queue `domain` is spread over: `queue_shards` for a
        predeclared queue, 1 for a queue its workers created."""
        return self._sharded.get(domain, 1)

    def smallest_size_class(self, domain: str) -> int | None:
        """The smallest size class of predeclared queue `domain` (None if not one)."""
        for q in self.predeclared:
            if q.domain == domain:
                return q.size_classes[0]
        return None

    @functools.cached_property
    def _sharded(self) -> dict[str, int]:
        if self.queue_shards <= 1:
            return {}
        return {q.domain: self.queue_shards for q in self.predeclared}

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
                ms(self.idle_sync_timeout * max(1, self.park_holds)),  # the park's lease
                ms(self.operation_retention),
                self.max_attempts,
                self.rehand_limit,
                ms(self.platform_queue_timeout),
                self.max_queued_per_platform,
                keys.CHANNEL_PREFIX,
            )
        )
