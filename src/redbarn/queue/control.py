"""Admin transitions (BuildQueueState writes): kill operations, drains, terminate workers.

Each is a script on one domain (kill_operation, kill_queued, add_drain, remove_drain,
terminate_workers), with Buildbarn's errors (reference §2.11, §2.12). The frontend
decodes the requests (`redbarn.frontend.buildqueuestate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.rpc import status_pb2

from redbarn import digests
from redbarn.errors import FailedPrecondition, NotFound
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys
from redbarn.queue import events as ev
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.registry import Registry
from redbarn.queue.scripts import Scripts


def _killed(status: status_pb2.Status) -> bytes:
    return codec.worker_result(re_pb2.ExecuteResponse(status=status))


@dataclass
class Control:
    redis: Any
    registry: Registry
    scripts: Scripts
    config: SchedulerConfig
    events: ev.SchedulerEvents = field(default_factory=ev.NoEvents)

    async def _killed(self, domain: str, count: int, size_class: int) -> None:
        """Count `count` killed tasks of `domain`'s size class queue."""
        q = await self.registry.queue_of(domain)
        if q is None or count == 0:
            return
        queue = ev.QueueName(q.prefix, q.platform_json, size_class)
        for _ in range(count):
            self.events.task_completed(
                queue, outcome=ev.KILLED, grpc_code="", executing_seconds=None
            )

    async def kill_operation(self, name: str, status: status_pb2.Status) -> None:
        """Complete the operation's task (every operation deduplicated onto it) with
        `status`; its worker goes idle on its next report. NotFound for unknown names."""
        parsed = keys.parse_operation_name(name)
        if parsed is not None:
            domain, opid = parsed
            size_class = await self.scripts.kill_operation(
                domain=domain,
                config=self.registry.script_config(domain),
                opid=opid,
                result=_killed(status),
            )
            if size_class is not None:
                if size_class >= 0:  # not completed before: one killed task
                    await self._killed(domain, 1, size_class)
                return
        raise NotFound(f'Operation "{name}" not found')

    async def kill_queued_operations(
        self,
        *,
        instance_name_prefix: str,
        platform: re_pb2.Platform,
        size_class: int,
        status: status_pb2.Status,
    ) -> int:
        """Complete every queued operation of a size class queue without workers
        (filter size_class_queue_without_workers). Returns how many were killed."""
        queue = await self.registry.size_class_domain(instance_name_prefix, platform)
        killed = 0
        for domain in keys.shard_domains(queue, self.config.shards_of(queue)):
            while True:
                r = await self.scripts.kill_queued(
                    domain=domain,
                    config=self.registry.script_config(domain),
                    size_class=keys.size_class_field(size_class),
                    result=_killed(status),
                    batch=self.config.reap_batch,
                )
                if r.outcome == "none":
                    raise NotFound("Size class queue not found")
                if r.outcome == "busy":
                    raise FailedPrecondition(
                        "Cannot kill operations, as size class queue still has workers"
                    )
                killed += r.killed
                await self._killed(queue, r.killed, size_class)
                if not r.more:
                    break
        return killed

    async def set_drain(
        self,
        *,
        add: bool,
        instance_name_prefix: str,
        platform: re_pb2.Platform,
        size_class: int,
        pattern: Mapping[str, str],
    ) -> None:
        """AddDrain (add=True) or RemoveDrain: workers of the size class queue whose id
        contains `pattern` get no new work. NotFound when the queue does not exist."""
        queue = await self.registry.size_class_domain(instance_name_prefix, platform)
        for domain in keys.shard_domains(queue, self.config.shards_of(queue)):
            common = {
                "domain": domain,
                "config": self.registry.script_config(domain),
                "size_class": keys.size_class_field(size_class),
                "pattern_json": digests.worker_json(pattern),
            }
            if add:
                ok = await self.scripts.add_drain(**common, tokens=codec.tokens(pattern))
            else:
                ok = await self.scripts.remove_drain(**common)
            if not ok:
                raise NotFound("Size class queue not found")

    async def terminate_workers(
        self, pattern: Mapping[str, str], *, wait: bool = True, poll: float = 0.2
    ) -> int:
        """Mark matching workers terminating in every domain; with wait, return once the
        tasks they were executing have left that state. Returns the number matched."""
        matched = 0
        pending: list[tuple[str, str]] = []
        queues = (await self.registry.queues(fresh=True)).values()
        for domain in [d for q in queues for d in q.domains]:
            r = await self.scripts.terminate_workers(
                domain=domain,
                config=self.registry.script_config(domain),
                tokens=codec.tokens(pattern),
            )
            matched += r.matched
            pending.extend((domain, tid) for tid in r.executing)
        while wait and pending:
            still = []
            for domain, tid in pending:
                raw = await self.redis.hget(keys.domain_key(domain, "tasks"), tid)
                if raw is not None and codec.TaskRecord.parse(raw).stage == "x":
                    still.append((domain, tid))
            pending = still
            if pending:
                await asyncio.sleep(poll)
        return matched
