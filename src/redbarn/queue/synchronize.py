"""Worker reports (Buildbarn's Synchronize): record a report, hand out the next action.

Steady state is ONE script call (synchronize_worker.lua): a completion and the next
assignment together. An idle or completed report with nothing to do parks: the call is
held until a hint hands this worker an action (L.offer has already assigned it in
Redis) or a jittered timeout passes, and it always leaves the parked state in Redis,
even when cancelled. The frontend decodes SynchronizeRequest into a `WorkerReport` and
encodes the `replies.WorkerReply` (`redbarn.frontend.operation_queue`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from redbarn import digests
from redbarn.errors import ResourceExhausted
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys, replies
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.hints import Hints
from redbarn.queue.registry import Registry, remember
from redbarn.queue.scripts import Scripts

# A worker's state as one letter (or two) in the script's report argument.
_REPORTS = {
    "idle": "i",
    "executing": "p",  # executing, no stage reported
    "completed": "c",
    "started": "ps",
    "fetching_inputs": "pf",
    "running": "pr",
    "uploading_outputs": "pu",
}
STATES = tuple(_REPORTS)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One Synchronize, in the scheduler's terms.

    `state` is one of `STATES`: "idle", "executing" (no stage reported), an executing
    stage ("started", "fetching_inputs", "running", "uploading_outputs"), or
    "completed" with `response`. `action_digest` is set for every state but "idle".
    """

    worker_id: Mapping[str, str]
    instance_name_prefix: str
    platform: re_pb2.Platform
    size_class: int
    state: str
    action_digest: re_pb2.Digest | None = None
    response: re_pb2.ExecuteResponse | None = None
    prefer_being_idle: bool = False


class _Identity(NamedTuple):
    """A synchronizing worker in the scripts' terms."""

    domain: str
    prefix: str
    platform_json: str
    wk: str
    tokens: str


@dataclass
class Workers:
    """The worker side of the scheduler: Synchronize, parking and waking."""

    redis: Any
    registry: Registry
    scripts: Scripts
    hints: Hints
    config: SchedulerConfig
    _identities: dict[tuple[Any, ...], _Identity] = field(default_factory=dict, init=False)

    async def synchronize(self, report: WorkerReport) -> replies.WorkerReply:
        """Record `report`; returns the worker's next desired state (parking first when
        there is nothing to do). Raises ResourceExhausted when the same worker is
        already synchronizing, InvalidArgument for a bad prefix or platform."""
        domain, prefix, pjson, wk, tokens = self._identity(report)
        digest, result, failed = "", b"", False
        if report.state != "idle" and report.action_digest is not None:
            digest = digests.key(report.action_digest)
        if report.state == "completed" and report.response is not None:
            result = codec.worker_result(report.response)
            failed = codec.response_failed(report.response)
        config = self.registry.script_config(domain)
        gone = ""
        while True:
            reply = await self.scripts.synchronize_worker(
                domain=domain,
                config=config,
                wk=wk,
                tokens=tokens,
                report=_REPORTS[report.state],
                digest=digest,
                result=result,
                failed=failed,
                prefer_idle=report.prefer_being_idle,
                gone_holder=gone,
            )
            if not isinstance(reply, replies.Busy):
                break
            # R38, unless the frontend holding the other call is gone (killed while
            # the worker was parked on it): the worker has come back through another
            # frontend, and waiting out the old lease would idle it for minutes.
            if (
                gone
                or reply.holder in ("", self.registry.fid)
                or (await self.hints.alive(reply.holder))
            ):
                raise ResourceExhausted(
                    "A worker with the same worker ID is already synchronizing with the scheduler"
                )
            gone = reply.holder
        # Registered only now that the script has recorded the worker (see
        # Registry.register): registered first, a reaper pass in between would find
        # the platform queue empty and unregister it under the new worker.
        await self.registry.register(domain, prefix, pjson)
        if isinstance(reply, replies.Parked):
            return await self._park(domain, wk, reply.now_us)
        return reply

    def _identity(self, report: WorkerReport) -> _Identity:
        """Who is synchronizing, in the scripts' terms. A worker sends the same worker ID,
        platform, prefix and size class every time: validated and encoded once, then
        looked up (a bounded cache; invalid reports raise and are never cached)."""
        prefix = report.instance_name_prefix
        cache_key = (
            prefix,
            report.size_class,
            tuple((p.name, p.value) for p in report.platform.properties),
            tuple(sorted(report.worker_id.items())),
        )
        found = self._identities.get(cache_key)
        if found is not None:
            return found
        digests.validate_instance_name(prefix)
        pjson = self.registry.platform_json(report.platform)
        domain = keys.domain_id(prefix, pjson)
        wk = keys.worker_key(report.size_class, digests.worker_json(report.worker_id))
        identity = _Identity(domain, prefix, pjson, wk, codec.tokens(report.worker_id))
        remember(self._identities, cache_key, identity)
        return identity

    async def _park(self, domain: str, wk: str, parked_us: int) -> replies.WorkerReply:
        t = self.config.idle_sync_timeout
        wait = random.uniform(t / 2, t) if t > 0 else 0.0
        topic = keys.worker_topic(domain, wk)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        reply: replies.WorkerReply | None = None
        try:
            # A hint lost on the way (Redis restarting, say) is caught by one look at the
            # worker record after the first second (one read per park).
            payload = await self.hints.wait(topic, min(wait, 1.0))
            if payload is None and loop.time() < until and not await self._assigned(domain, wk):
                payload = await self.hints.wait(topic, until - loop.time())
            reply = replies.worker_hint(payload, parked_us)
        finally:
            if reply is None:  # no assignment in hand: leave the parked state in Redis
                unpark = asyncio.ensure_future(
                    self.scripts.unpark_worker(
                        domain=domain, config=self.registry.script_config(domain), wk=wk
                    )
                )
                reply = await asyncio.shield(unpark)
        return reply

    async def _assigned(self, domain: str, wk: str) -> bool:
        raw = await self.redis.hget(keys.domain_key(domain, "workers"), wk)
        return raw is not None and bool(codec.WorkerRecord.parse(raw).tid)
