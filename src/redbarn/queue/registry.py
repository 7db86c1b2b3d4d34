"""Platform queues: which exist, and which one an Execute goes to.

A platform queue (a scheduling domain, keys `redbarn:v1:{P}:*`) is created by its
workers: a Synchronize records the worker in the domain, then registers its (instance
name prefix, platform) in the global hash `keys.PLATFORMS`, and the reaper removes it
once it has had no workers for `platform_queue_timeout`. A predeclared queue
(`--platform-queue`) is declared by every frontend configured with it and never
removed: Execute queues work on it with no worker present. Execute picks the queue with
the longest matching instance name prefix and an identical platform (Buildbarn's
rule). Every frontend keeps a short cache of the registry; a miss reads it again before
answering "No workers exist".

`Registry` also holds what every part of the scheduler shares about a domain: the
per-domain config argument of the scripts (ending with this frontend's id) and the
server clock.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from redbarn.errors import FailedPrecondition, NotFound, Unavailable
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys, validate
from redbarn.queue.config import SchedulerConfig

_CACHE_MAX = 10_000  # workers (or platforms) a frontend remembers


def remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """A bounded cache entry: a full cache is cleared whole (entries are cheap to redo)."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


@dataclass(frozen=True, slots=True)
class PlatformQueue:
    domain: str
    prefix: str
    platform_json: str
    shards: int = 1  # --queue-shards of a predeclared queue (keys.shard_domain)

    @property
    def domains(self) -> list[str]:
        """The domain of every shard, shard 0 (`domain`) first."""
        return keys.shard_domains(self.domain, self.shards)


@dataclass
class _Snapshot:
    at: float = -1e9
    queues: dict[str, PlatformQueue] = field(default_factory=dict)


def prefix_matches(prefix: str, instance: str) -> bool:
    return prefix == "" or instance == prefix or instance.startswith(prefix + "/")


def instance_suffix(instance: str, prefix: str) -> str:
    """What follows `prefix` in `instance` (Buildbarn's instance_name_suffix)."""
    if prefix == "":
        return instance
    if instance == prefix:
        return ""
    return instance[len(prefix) + 1 :]


class Registry:
    """The platform registry as one frontend sees it (a cache over `keys.PLATFORMS`)."""

    def __init__(self, redis: Any, config: SchedulerConfig, fid: str) -> None:
        self.redis = redis
        self.config = config
        self.fid = fid
        self._snapshot = _Snapshot()
        self._registered: dict[str, float] = {}
        self._cfg: dict[str, str] = {}
        self._platforms_seen: dict[tuple[tuple[str, str], ...], str] = {}

    def script_config(self, domain: str) -> str:
        """ARGV[1] of every script on `domain`: the timings, then this frontend's id."""
        c = self._cfg.get(domain)
        if c is None:
            c = self._cfg[domain] = f"{self.config.script_config(domain)} {self.fid}"
        return c

    async def now_ms(self) -> int:
        """The Redis server clock (the one clock every frontend shares)."""
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def start(self) -> None:
        """Record the first start time (drives the start-up grace period)."""
        await self.redis.set(keys.STARTED, str(await self.now_ms()), nx=True)

    def platform_json(self, platform: re_pb2.Platform) -> str:
        """`platform` validated and in its JSON form; a bounded cache, since a cluster
        sees few distinct platforms (invalid ones raise and are never cached)."""
        cache_key = tuple((p.name, p.value) for p in platform.properties)
        pjson = self._platforms_seen.get(cache_key)
        if pjson is None:
            validate.platform(platform)
            pjson = codec.platform_json(platform)
            remember(self._platforms_seen, cache_key, pjson)
        return pjson

    async def register(self, domain: str, prefix: str, platform_json: str) -> None:
        """A worker synchronized on this platform queue (written at most every few
        cache periods per frontend: the reaper keeps the entry while workers exist).

        Called after the synchronize script has recorded the worker, never before: the
        reaper removes a registered domain that has no size class queues, so an entry
        written first could be removed before the worker exists, and this frontend
        would not write it again for those few cache periods ("No workers exist")."""
        now = time.monotonic()
        if now - self._registered.get(domain, -1e9) < 5 * self.config.platform_cache_ttl:
            return
        value = json.dumps({"instance_name_prefix": prefix, "platform": platform_json})
        await self.redis.hsetnx(keys.PLATFORMS, domain, value)
        self._registered[domain] = now

    async def declare(self, domain: str, prefix: str, platform_json: str, shards: int = 1) -> None:
        """A predeclared platform queue: registered whether or not workers exist (its
        size classes are made to exist first, by declare_queue.lua, so the reaper keeps
        it). A sharded one says how many shards it has, for every reader of the registry."""
        entry: dict[str, Any] = {"instance_name_prefix": prefix, "platform": platform_json}
        if shards > 1:
            entry["shards"] = shards
        await self.redis.hset(keys.PLATFORMS, domain, json.dumps(entry))

    async def unregister(self, domain: str) -> None:
        """The reaper found the platform queue gone (no size class queues left)."""
        await self.redis.hdel(keys.PLATFORMS, domain)
        self._registered.pop(domain, None)

    async def queues(self, *, fresh: bool = False) -> dict[str, PlatformQueue]:
        now = time.monotonic()
        if fresh or now - self._snapshot.at > self.config.platform_cache_ttl:
            raw = await self.redis.hgetall(keys.PLATFORMS)
            entries = {}
            for k, v in raw.items():
                d = json.loads(v)
                domain = k.decode() if isinstance(k, bytes) else str(k)
                entries[domain] = PlatformQueue(
                    domain, d["instance_name_prefix"], d["platform"], int(d.get("shards", 1))
                )
            self._snapshot = _Snapshot(now, entries)
        return self._snapshot.queues

    async def queue_of(self, domain: str) -> PlatformQueue | None:
        """The platform queue `domain` is (or is a shard of), if registered."""
        queues = await self.queues()
        found = queues.get(domain)
        if found is None:
            for q in queues.values():
                if q.shards > 1 and domain in q.domains:
                    return q
        return found

    async def resolve(self, instance: str, platform_json: str) -> PlatformQueue:
        """The queue an action of `instance` and `platform_json` goes to: the longest
        matching prefix. Raises Unavailable (start-up grace) or FailedPrecondition."""
        for fresh in (False, True):
            best: PlatformQueue | None = None
            for q in (await self.queues(fresh=fresh)).values():
                if (
                    q.platform_json == platform_json
                    and prefix_matches(q.prefix, instance)
                    and (best is None or len(q.prefix) > len(best.prefix))
                ):
                    best = q
            if best is not None:
                return best
        raise await self.no_workers(instance, platform_json)

    async def no_workers(self, instance: str, platform_json: str) -> Exception:
        """Buildbarn's "No workers exist" error: UNAVAILABLE during the start-up grace
        period (`platform_queue_timeout` after the cluster first started), then
        FAILED_PRECONDITION."""
        msg = f'No workers exist for instance name prefix "{instance}" platform {platform_json}'
        started = await self.redis.get(keys.STARTED)
        now = await self.now_ms()
        if started is None:
            await self.redis.set(keys.STARTED, str(now), nx=True)
            started = str(now).encode()
        if now < int(started) + self.config.platform_queue_timeout * 1000:
            return Unavailable(msg)
        return FailedPrecondition(msg)

    async def size_class_domain(self, prefix: str, platform: re_pb2.Platform) -> str:
        """The domain of an admin request's platform queue; NotFound when it is gone."""
        domain = keys.domain_id(prefix, codec.platform_json(platform))
        if domain not in await self.queues(fresh=True):
            raise NotFound("Size class queue not found")
        return domain
