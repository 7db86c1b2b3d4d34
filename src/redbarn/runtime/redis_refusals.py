"""Commands Redis refused because of its own state, as domain errors: one table.

Redis answers some commands with an error that says nothing about the command and
everything about the server: out of memory under `noeviction` (OOM), a read-only
replica after a failover (READONLY), loading its dataset after a restart (LOADING), a
replica without its primary (MASTERDOWN), a script running too long (BUSY), failing
to persist (MISCONF), or on a Redis Cluster, a failover leaving slots without a master
(CLUSTERDOWN) or a slot being migrated (TRYAGAIN). The same command works once that passes, so clients get
RESOURCE_EXHAUSTED (OOM) or UNAVAILABLE (the rest) with a fixed message. Redis's own
text names the script's SHA1 and line (`script: 8c09..., on @user_script:504`), which
is for the operator's log, not for clients.

`redis_error_code(exc)` finds the code behind an exception of redis-py or of
`redbarn.runtime.fastredis` (both raise redis-py's classes); `refusal(exc)` is the domain
error for it, or None. No grpc here: the scheduler core's loops may use it too.
"""

from __future__ import annotations

import re

import redis.exceptions

from redbarn import errors

# Redis error code -> the error class and the message clients get.
REFUSALS: dict[str, tuple[type[errors.RedbarnError], str]] = {
    "OOM": (
        errors.ResourceExhausted,
        "Redis is out of memory (maxmemory reached): writes are refused until memory is freed",
    ),
    "READONLY": (
        errors.Unavailable,
        "Redis is a read-only replica (after a failover?): writes are refused; retry",
    ),
    "LOADING": (errors.Unavailable, "Redis is loading its dataset into memory; retry"),
    "MASTERDOWN": (
        errors.Unavailable,
        "Redis is a replica that lost its link to the primary; retry",
    ),
    "BUSY": (errors.Unavailable, "Redis is busy running a script; retry"),
    # Redis Cluster: a failover under way (slots without a master), a slot migrating.
    "CLUSTERDOWN": (
        errors.Unavailable,
        "the Redis Cluster is down (a failover under way?); retry",
    ),
    "TRYAGAIN": (errors.Unavailable, "a Redis Cluster slot is being migrated; retry"),
    "MISCONF": (
        errors.Unavailable,
        "Redis refuses writes because it cannot persist to disk; retry",
    ),
}
_CLASSES: tuple[tuple[type[redis.exceptions.RedisError], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
)
# Redis 6 wraps an error raised inside a script: "ERR Error running script (call to
# f_<sha>): @user_script:12: -OOM command not allowed ...".
_SCRIPT_ERROR = re.compile(r": -([A-Z]+) ")


def redis_error_code(exc: BaseException) -> str:
    """The refusal code behind `exc` ("OOM", "READONLY", ...), or "" for anything else."""
    if not isinstance(exc, redis.exceptions.RedisError):
        return ""
    for cls, code in _CLASSES:
        if isinstance(exc, cls):
            return code
    status_code = getattr(exc, "status_code", None)
    if isinstance(status_code, str) and status_code in REFUSALS:
        return status_code
    message = str(exc)
    first = message.split(" ", 1)[0]
    if first in REFUSALS:
        return first
    inner = _SCRIPT_ERROR.search(message)
    if inner and inner.group(1) in REFUSALS:
        return inner.group(1)
    return ""


def refusal(exc: BaseException) -> errors.RedbarnError | None:
    """The domain error for a command Redis refused because of its state, else None."""
    code = redis_error_code(exc)
    if not code:
        return None
    cls, message = REFUSALS[code]
    return cls(message)
