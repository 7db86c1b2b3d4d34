"""gRPC core settings that only take effect if they are in place before grpc is imported.

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

import os
import sys

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
