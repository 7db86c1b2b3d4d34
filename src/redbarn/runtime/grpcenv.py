"""How redbarn runs gRPC: core settings that must precede `import grpc`, and the
scheduling policy of grpc.aio's poller thread.

grpcio 1.85 moves socket I/O onto its EventEngine by default: three `event_engine`
threads read and write the sockets and hand each completion to grpc.aio's poller
thread, which wakes the event loop. Turning the EventEngine off for listeners,
client channels and other endpoints (gRPC core experiments, read from
`GRPC_EXPERIMENTS` when grpc initialises) puts the sockets back on the poller thread
itself: one thread hop per completion instead of two. Measured with
`bench/frontend_bench.py` on 2 cores: frontend CPU per action 1.24 -> 1.12 ms at 100
in flight and 2.1 -> 1.6 ms at 1 in flight, p50 at 1 in flight 2.9 -> 2.2 ms.

A `GRPC_EXPERIMENTS` already in the environment wins, so `GRPC_EXPERIMENTS=` (empty)
restores gRPC's own defaults. Only the `redbarn` entry point calls `apply()`; code that
imports redbarn as a library keeps whatever its process chose.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from redbarn.config import ConfigError

log = logging.getLogger(__name__)

ENV = "GRPC_EXPERIMENTS"
EXPERIMENTS = "-event_engine_listener,-event_engine_client,-event_engine_for_all_other_endpoints"


def apply() -> bool:
    """Set redbarn's gRPC core defaults for this process and its children.

    Returns False when it is too late (grpc is already imported) or the environment
    already names experiments; True when the defaults were set.
    """
    if "grpc" in sys.modules or ENV in os.environ:
        return False
    os.environ[ENV] = EXPERIMENTS
    return True


# The poller thread ---------------------------------------------------------------------
#
# grpc.aio runs one thread that waits on gRPC's completion queue (and, with the settings
# above, on the sockets) and hands each completion to the event loop. It wakes for
# almost every completion, and under Linux's default policy each wake-up may preempt
# whatever runs on that CPU, often the event loop thread it is about to feed: at 100
# actions in flight a frontend's event loop was preempted about 7 times per action.
# SCHED_BATCH (a normal fair-share policy that only gives up wake-up preemption) lets
# the running thread finish its turn, so the poller hands over more completions per
# wake-up. Measured with bench/frontend_bench.py at 100 in flight, over 5 s of one
# frontend: the event loop's involuntary context switches 20,453 -> 12,055, the
# poller's wake-ups 31,467 -> 16,688; frontend CPU per action 1.01 -> 0.89 ms. It can
# add up to a scheduler slice of latency to a completion while every CPU is busy with
# other work.

POLLER_ENV = "REDBARN_GRPC_POLLER"
POLLER_POLICIES = ("batch", "normal")
_POLLER_TARGET = "_poll_wrapper"  # grpc.aio names its poller thread after this target


def poller_policy() -> str:
    """$REDBARN_GRPC_POLLER: "batch" (the default) or "normal"; ConfigError otherwise."""
    return _checked(os.environ.get(POLLER_ENV, "batch").strip().lower() or "batch")


def _checked(policy: str) -> str:
    if policy not in POLLER_POLICIES:
        raise ConfigError(f'{POLLER_ENV} must be "batch" or "normal", not "{policy}"')
    return policy


def poller_threads() -> list[threading.Thread]:
    """grpc.aio's poller thread(s) in this process (there once grpc.aio has started)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.endswith(f"({_POLLER_TARGET})") and t.native_id is not None
    ]


def set_poller_policy(policy: str) -> int:
    """Give grpc.aio's poller thread(s) `policy` ("batch" or "normal"); returns how many
    threads were set. Does nothing where Linux scheduling policies are not available."""
    _checked(policy)
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or not hasattr(os, "sched_setscheduler"):
        return 0
    value = batch if policy == "batch" else os.SCHED_OTHER
    done = 0
    for thread in poller_threads():
        tid = thread.native_id
        if not tid:  # 0 would mean the calling thread
            continue
        try:
            os.sched_setscheduler(tid, value, os.sched_param(0))
            done += 1
        except OSError as err:  # a sandbox that forbids it: run as gRPC made it
            log.warning("could not set the gRPC poller thread to %s: %s", policy, err)
    return done
