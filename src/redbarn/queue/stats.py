"""Queue gauges: what each platform queue holds right now, read at scrape time.

One script call per platform queue (`lua/reads/queue_stats.lua`, a read that changes
nothing), cached for `ttl` seconds, so any number of scrapers cost Redis one call per
platform queue per period and the frontend one decode. `QueueStats.snapshot()` returns
the last reading; `refresh()` reads again when it is older than `ttl`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redbarn.queue import keys
from redbarn.queue.registry import PlatformQueue, Registry

# Queued operations scanned per size class for the oldest one: beyond this many, the
# oldest-age gauge is the oldest of the first SCAN in scheduling order (a lower bound).
SCAN = 10_000


@dataclass(frozen=True, slots=True)
class SizeClassStats:
    instance_name_prefix: str
    platform: str  # codec.platform_json
    size_class: int
    queued: int  # operations queued
    executing: int  # operations executing (every operation deduplicated onto a running task)
    workers: int  # workers recorded (executing + idle + drained)
    workers_executing: int
    workers_idle: int  # may be given work
    workers_drained: int  # not executing, and drained or terminating: get no work
    oldest_queued_age: float  # seconds; 0 when nothing is queued
    oldest_exact: bool  # False when more than SCAN operations are queued


@dataclass
class Snapshot:
    at: float = -1e9  # time.monotonic() of the reading
    size_classes: list[SizeClassStats] = field(default_factory=list)


def script_body() -> str:
    return (resources.files("redbarn.lua") / "reads" / "queue_stats.lua").read_text()


def _i(v: Any) -> int:
    return int(v.decode() if isinstance(v, bytes) else v)


def decode(queue: PlatformQueue, reply: list[Any]) -> list[SizeClassStats]:
    """queue_stats.lua's reply: {now_ms, {sc, queued, executing_ops, workers, executing,
    idle, drained, oldest_queued_ms, scanned_all}...}."""
    now_ms = _i(reply[0])
    out = []
    for row in reply[1:]:
        sc, queued, xops, workers, busy, idle, drained, oldest, exact = (_i(v) for v in row)
        out.append(
            SizeClassStats(
                instance_name_prefix=queue.prefix,
                platform=queue.platform_json,
                size_class=sc,
                queued=queued,
                executing=xops,
                workers=workers,
                workers_executing=busy,
                workers_idle=idle,
                workers_drained=drained,
                oldest_queued_age=max(0, now_ms - oldest) / 1000 if oldest else 0.0,
                oldest_exact=bool(exact),
            )
        )
    return out


def _sum(a: SizeClassStats, b: SizeClassStats) -> SizeClassStats:
    """Two shards of one size class queue as one."""
    return SizeClassStats(
        instance_name_prefix=a.instance_name_prefix,
        platform=a.platform,
        size_class=a.size_class,
        queued=a.queued + b.queued,
        executing=a.executing + b.executing,
        workers=a.workers + b.workers,
        workers_executing=a.workers_executing + b.workers_executing,
        workers_idle=a.workers_idle + b.workers_idle,
        workers_drained=a.workers_drained + b.workers_drained,
        oldest_queued_age=max(a.oldest_queued_age, b.oldest_queued_age),
        oldest_exact=a.oldest_exact and b.oldest_exact,
    )


class QueueStats:
    """Cached per-size-class counts of every platform queue in the registry."""

    def __init__(self, redis: Any, registry: Registry, *, ttl: float = 1.0) -> None:
        self._redis = redis
        self._registry = registry
        self._script = redis.register_script(script_body())
        self.ttl = ttl
        self._snapshot = Snapshot()
        self._lock = asyncio.Lock()
        self.reads = 0  # script calls made (for tests and the benchmark)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def read_queue(self, queue: PlatformQueue) -> list[SizeClassStats]:
        """One platform queue's size classes; a sharded queue's shards summed."""
        rows: dict[int, SizeClassStats] = {}
        for domain in queue.domains:
            self.reads += 1
            reply = await self._script(keys=keys.domain_keys(domain), args=[SCAN])
            for row in decode(queue, reply):
                seen = rows.get(row.size_class)
                rows[row.size_class] = row if seen is None else _sum(seen, row)
        return [rows[sc] for sc in sorted(rows)]

    async def refresh(self) -> Snapshot:
        """The snapshot, read again first when it is older than `ttl` (one reader at a
        time: concurrent scrapes wait for the same reading)."""
        if time.monotonic() - self._snapshot.at < self.ttl:
            return self._snapshot
        async with self._lock:
            if time.monotonic() - self._snapshot.at < self.ttl:
                return self._snapshot
            queues = list((await self._registry.queues()).values())
            rows: list[SizeClassStats] = []
            for each in await asyncio.gather(*(self.read_queue(q) for q in queues)):
                rows.extend(each)
            self._snapshot = Snapshot(time.monotonic(), rows)
        return self._snapshot
