"""Housekeeping: the reaper every frontend runs (reap_domain.lua over every domain).

It expires lost workers (requeueing their task with its original queued time, up to
`max_attempts`, then failing it), detaches operations whose waiters left, and removes
size class queues that had no workers for `platform_queue_timeout` (never predeclared
ones, which each tick declares again: `declare`). The script is
idempotent, so every frontend runs it on a jittered tick with no coordination. A tick
that cannot reach Redis is reported to the process's `OutageLog`
(`redbarn.runtime.outage`), which logs the outage once; other failures are bugs and are
logged with their traceback.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import redis.exceptions

from redbarn.queue import events as ev
from redbarn.queue import keys
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.registry import Registry
from redbarn.queue.replies import lost_tasks
from redbarn.queue.scripts import Scripts
from redbarn.queue.synchronize import lost_events
from redbarn.runtime.outage import UNREACHABLE, OutageLog

log = logging.getLogger(__name__)

# A replica mid-failover refuses writes: an outage too (logged once, not per tick).
_OUTAGE: tuple[type[BaseException], ...] = (*UNREACHABLE, redis.exceptions.ReadOnlyError)


@dataclass
class ReapTotals:
    workers: int = 0
    operations: int = 0
    queued: int = 0
    domains_removed: int = 0


@dataclass
class Reaper:
    registry: Registry
    scripts: Scripts
    config: SchedulerConfig
    events: ev.SchedulerEvents = field(default_factory=ev.NoEvents)

    async def declare(self) -> None:
        """Make the predeclared platform queues exist (`SchedulerConfig.predeclared`):
        their size classes (declare_queue.lua) and their registry entry. Idempotent; run
        at start and on every tick, so a Redis that lost its data gets them back."""
        for q in self.config.predeclared:
            shards = self.config.shards_of(q.domain)
            for domain in keys.shard_domains(q.domain, shards):
                await self.scripts.declare_queue(
                    domain=domain,
                    config=self.registry.script_config(domain),
                    size_classes=" ".join(keys.size_class_field(c) for c in q.size_classes),
                    stickiness_limits=" ".join(str(ms) for ms in q.stickiness_limits_ms),
                )
            await self.registry.declare(q.domain, q.instance_name_prefix, q.platform_json, shards)

    async def reap(self) -> ReapTotals:
        """Run the reaper over every domain (idempotent; any frontend, any time)."""
        totals = ReapTotals()
        await self.declare()
        queues = await self.registry.queues(fresh=True)
        for domain, q in [(d, each) for each in list(queues.values()) for d in each.domains]:
            while True:
                r = await self.scripts.reap_domain(
                    domain=domain,
                    config=self.registry.script_config(domain),
                    batch=self.config.reap_batch,
                )
                totals.workers += r.workers
                totals.operations += r.operations
                totals.queued += r.queued
                if r.lost:
                    lost_events(self.events, q.prefix, q.platform_json, lost_tasks(r.lost))
                if r.gone and domain == q.domain:  # a predeclared shard is never gone
                    await self.registry.unregister(domain)
                    totals.domains_removed += 1
                if not r.more:
                    break
        return totals

    async def run(self, interval: float = 1.0, *, outage: OutageLog | None = None) -> None:
        """Reap forever on a jittered tick (a frontend runs this as a background task).
        Each tick first takes the cluster's turn (keys.REAPER_TURN, for `interval`): the
        frontend that gets it reaps, the others skip the tick, so the reaper's Redis cost
        does not grow with the number of frontends."""
        outage = outage or OutageLog("Redis")
        ttl_ms = max(1, round(interval * 1000))
        while True:
            try:
                if await self.registry.redis.set(
                    keys.REAPER_TURN, self.registry.fid, nx=True, px=ttl_ms
                ):
                    await self.reap()
            except asyncio.CancelledError:
                raise
            except _OUTAGE as err:
                outage.failed(err, "reaper tick failed")
            except Exception:
                log.exception("reaper tick failed")
            else:
                outage.ok()
            await asyncio.sleep(random.uniform(interval / 2, interval * 1.5))
