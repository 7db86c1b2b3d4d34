"""Worker reports (Buildbarn's Synchronize): record a report, hand out the next action.

Steady state is ONE script call (synchronize_worker.lua): a completion and the next
assignment together. An idle or completed report with nothing to do parks: the call is
held until a hint hands this worker an action (L.offer has already assigned it in
Redis) or a jittered timeout passes.

Warm holds: at the end of a hold the worker is answered idle but stays parked in Redis
(the park's lease covers `park_holds` holds), and its next idle Synchronize on this
frontend is held again without any Redis call; work offered in between is a hint kept
for that next hold. A worker that does not come back within WARM_GRACE, that reports
anything else, or whose park lease is running out leaves the parked state through
unpark_worker.lua, as does a cancelled hold. So an idle worker costs Redis one park and
one unpark per `park_holds` holds. The frontend decodes SynchronizeRequest into a `WorkerReport` and
encodes the `replies.WorkerReply` (`redbarn.frontend.operation_queue`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from redbarn import digests
from redbarn.errors import InvalidArgument, ResourceExhausted
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys, replies
from redbarn.queue import events as ev
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.hints import Hints
from redbarn.queue.registry import Registry, remember
from redbarn.queue.scripts import Scripts
from redbarn.queue.sizeclass import SizeClassAnalyzer

log = logging.getLogger(__name__)

# A worker's state as one letter (or two) in the script's report argument.
# How long a worker answered idle at the end of a hold may take to come back before the
# frontend releases its park in Redis (under the hub's PENDING_TTL, which keeps a hint for
# its next hold), and the lease margin a warm hold leaves.
WARM_GRACE = 1.5
LEASE_MARGIN = 5.0
# Pauses before a Synchronize refused as held by another frontend tries again (that
# frontend has been asked to release a warm park); after them it is R38's refusal.
BUSY_RETRIES = (0.02, 0.05, 0.1, 0.2)
# While this frontend keeps warm parks, one look every WARM_CHECK seconds at their
# worker records (one HMGET per platform queue, whatever the number of workers) finds a
# worker given work whose hint was lost: it is counted and woken, so a lost hint costs
# a warm worker seconds, not the rest of its park's lease (minutes).
WARM_CHECK = 5.0
WARM_CHECK_BATCH = 500

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


@dataclass
class _Warm:
    """A worker answered idle at the end of a hold and still parked in Redis."""

    domain: str
    parked_us: int  # the park's Redis clock: hints newer than this are for it
    lease_until: float  # loop time at which the park's lease in Redis runs out
    release: asyncio.Task[None] | None = None  # lets go after WARM_GRACE or when asked


class _Identity(NamedTuple):
    """A synchronizing worker in the scripts' terms."""

    domain: str  # where it parks: its platform queue's, or its home shard's
    prefix: str
    platform_json: str
    wk: str
    tokens: str
    queue: str  # the platform queue's domain (shard 0)
    shards: int  # --queue-shards of the queue (1: not sharded)


@dataclass
class Workers:
    """The worker side of the scheduler: Synchronize, parking and waking."""

    redis: Any
    registry: Registry
    scripts: Scripts
    hints: Hints
    config: SchedulerConfig
    events: ev.SchedulerEvents = field(default_factory=ev.NoEvents)
    # Feedback-driven initial size classes: told every completion.
    size_classes: SizeClassAnalyzer | None = None
    _identities: dict[tuple[Any, ...], _Identity] = field(default_factory=dict, init=False)
    _warm: dict[str, _Warm] = field(default_factory=dict, init=False)
    _releasing: dict[str, asyncio.Future[Any]] = field(default_factory=dict, init=False)
    # Workers in a warm hold now (worker key -> platform queue domain).
    _holding: dict[str, str] = field(default_factory=dict, init=False)
    _checker: asyncio.Task[None] | None = field(default=None, init=False)
    # Home shard domain -> (platform queue domain, shards) of sharded queues' workers.
    _homes: dict[str, tuple[str, int]] = field(default_factory=dict, init=False)

    async def synchronize(self, report: WorkerReport) -> replies.WorkerReply:
        """Record `report`; returns the worker's next desired state (parking first when
        there is nothing to do). Raises ResourceExhausted when the same worker is
        already synchronizing, InvalidArgument for a bad prefix or platform."""
        ident = self._identity(report)
        domain, prefix, pjson, wk = ident.domain, ident.prefix, ident.platform_json, ident.wk
        warm = self._warm.pop(wk, None)
        if warm is not None:
            if warm.release is not None:
                warm.release.cancel()
            if report.state == "idle" and not report.prefer_being_idle and warm.domain == domain:
                held = await self._warm_hold(wk, warm, self._stealer(ident, report))
                if isinstance(held, replies.Assignment):
                    self._count_assignment(ev.QueueName(prefix, pjson, report.size_class), held)
                if held is not None:
                    return held
            else:
                self._release(wk, warm.domain)
        releasing = self._releasing.get(wk)
        if releasing is not None:  # the park must be gone before the worker reports
            await asyncio.shield(releasing)
        digest, result, failed = "", b"", False
        if report.state != "idle" and report.action_digest is not None:
            digest = digests.key(report.action_digest)
        if report.state == "completed" and report.response is not None:
            result = codec.worker_result(report.response)
            failed = codec.response_failed(report.response)
            if failed and self.size_classes is not None:  # a background run is not rerun
                failed = self.size_classes.may_fall_back(report.response)
        mode = ""
        if ident.shards > 1 and digest:
            # A sharded queue: the action is in its digest's shard (keys.shard_of). Work
            # taken from a shard other than home is reported there, and the worker then
            # goes home for its next action, so every shard keeps its own workers.
            domain = keys.shard_domains(ident.queue, ident.shards)[
                keys.shard_of(digest, ident.shards)
            ]
            if domain != ident.domain and report.state == "completed":
                mode = "l"
        reply = await self._report(
            ident, domain, report, _REPORTS[report.state], digest, result, failed, mode
        )
        # Registered only now that the script has recorded the worker (see
        # Registry.register): registered first, a reaper pass in between would find
        # the platform queue empty and unregister it under the new worker.
        await self.registry.register(ident.queue, prefix, pjson)
        if mode == "l" and isinstance(reply, replies.Idle):
            reply = await self._report(ident, ident.domain, _idle(report), "i", "", b"", False)
        if isinstance(reply, replies.Parked):
            if ident.shards > 1:
                reply = await self._park_sharded(ident, report, reply)
            else:
                reply = await self._park(domain, wk, reply)
            if isinstance(reply, replies.Assignment):
                self._count_assignment(ev.QueueName(prefix, pjson, report.size_class), reply)
        return reply

    async def _report(
        self,
        ident: _Identity,
        domain: str,
        report: WorkerReport,
        state: str,
        digest: str,
        result: bytes,
        failed: bool,
        mode: str = "",
        *,
        count: bool = True,
    ) -> replies.Assignment | replies.Continue | replies.Idle | replies.Parked:
        """One synchronize_worker call on `domain` (R38's refusal after the retries a
        released warm park needs), observed; an assignment is counted unless `count` is
        False (the caller counts what it returns)."""
        config = self.registry.script_config(domain)
        gone = ""
        busy_retries = list(BUSY_RETRIES)
        while True:
            reply = await self.scripts.synchronize_worker(
                domain=domain,
                config=config,
                wk=ident.wk,
                tokens=ident.tokens,
                report=state,
                digest=digest,
                result=result,
                failed=failed,
                prefer_idle=report.prefer_being_idle,
                gone_holder=gone,
                mode=mode,
            )
            if isinstance(reply, replies.Refused):
                raise InvalidArgument(reply.message)
            if not isinstance(reply, replies.Busy):
                break
            # R38, unless the frontend holding the other call is gone (killed while
            # the worker was parked on it): the worker has come back through another
            # frontend, and waiting out the old lease would idle it for minutes.
            if not gone and reply.holder not in ("", self.registry.fid) and busy_retries:
                # The holder may keep the park of a worker it answered idle (a warm hold)
                # whose next call came here: the script asked it to let go; try again.
                await asyncio.sleep(busy_retries.pop(0))
                continue
            if (
                gone
                or reply.holder in ("", self.registry.fid)
                or (await self.hints.alive(reply.holder))
            ):
                raise ResourceExhausted(
                    "A worker with the same worker ID is already synchronizing with the scheduler"
                )
            gone = reply.holder
        self._observe(report, ident.prefix, ident.platform_json, reply, count=count)
        return reply

    # Sharded platform queues (--queue-shards) -------------------------------------

    async def _queued_besides(
        self, home: str, queue: str, shards: int, size_class: int
    ) -> list[str]:
        """The shards of `queue` other than `home` with work queued for this size class,
        in rotating order from the one after home (one ZRANGEBYLEX each, sent together)."""
        every = keys.shard_domains(queue, shards)
        at = every.index(home)
        others = [every[(at + i) % shards] for i in range(1, shards)]
        lo = f"[{keys.size_class_field(size_class)} "
        found = await asyncio.gather(
            *(
                self.redis.zrangebylex(keys.domain_key(d, "queued"), lo, lo + "\xff", 0, 1)
                for d in others
            )
        )
        return [d for d, f in zip(others, found, strict=True) if f]

    async def _steal(
        self, ident: _Identity, report: WorkerReport, found: list[str] | None = None
    ) -> replies.Assignment | None:
        """An idle worker (not parked) takes queued work from another shard, if any
        (`found`: the shards a look just found work in); its home record is then
        removed, so it is in one shard at a time (it comes back when it reports the
        completion)."""
        idle = _idle(report)
        if found is None:
            found = await self._queued_besides(
                ident.domain, ident.queue, ident.shards, report.size_class
            )
        for domain in found:
            reply = await self._report(ident, domain, idle, "i", "", b"", False, "n", count=False)
            if isinstance(reply, replies.Assignment):
                await self._report(ident, ident.domain, idle, "i", "", b"", False, "l")
                return reply
        return None

    def _stealer(
        self, ident: _Identity, report: WorkerReport
    ) -> Callable[[], Awaitable[replies.Assignment | None]] | None:
        if ident.shards <= 1:
            return None
        return lambda: self._steal(ident, report)

    async def _park_sharded(
        self, ident: _Identity, report: WorkerReport, parked: replies.Parked
    ) -> replies.WorkerReply:
        """Park at home, but first take work queued in another shard. The look comes
        after the park, so work queued in another shard before it is seen here and work
        queued after it wakes this worker (Operations._wake_elsewhere): none is missed."""
        for _ in range(2):
            found = await self._queued_besides(
                ident.domain, ident.queue, ident.shards, report.size_class
            )
            if not found:
                break
            got = await self._unpark(ident.domain, ident.wk)
            if isinstance(got, replies.Assignment):
                return got
            stolen = await self._steal(ident, report, found)
            if stolen is not None:
                return stolen
            again = await self._report(
                ident, ident.domain, _idle(report), "i", "", b"", False, count=False
            )
            if not isinstance(again, replies.Parked):
                return again
            parked = again
        return await self._park(ident.domain, ident.wk, parked, self._stealer(ident, report))

    def _observe(
        self,
        report: WorkerReport,
        prefix: str,
        pjson: str,
        reply: replies.Assignment | replies.Continue | replies.Idle | replies.Parked,
        *,
        count: bool = True,
    ) -> None:
        """Tell `events` what the script did with this report."""
        queue = ev.QueueName(prefix, pjson, report.size_class)
        events = self.events
        if reply.report == replies.REPORT_DONE and report.response is not None:
            outcome, code = completion_outcome(report.response)
            events.task_completed(
                queue,
                outcome=outcome,
                grpc_code=code,
                executing_seconds=executing_seconds(report.response),
            )
        elif reply.report == replies.REPORT_FALLBACK:
            events.task_requeued(queue, reason=ev.REQUEUE_SIZE_CLASS)
        elif reply.report == replies.REPORT_LATE:
            events.late_report(queue)
        if (
            self.size_classes is not None
            and reply.report in (replies.REPORT_DONE, replies.REPORT_FALLBACK)
            and report.response is not None
            and report.action_digest is not None
        ):
            self.size_classes.observe(
                domain=keys.domain_id(prefix, pjson),
                prefix=prefix,
                size_class=report.size_class,
                action_digest=report.action_digest,
                response=report.response,
                fallback=reply.report == replies.REPORT_FALLBACK,
            )
        if reply.lost:
            lost_events(events, prefix, pjson, replies.lost_tasks(reply.lost))
        if count and isinstance(reply, replies.Assignment):
            self._count_assignment(queue, reply)

    def _count_assignment(self, queue: ev.QueueName, reply: replies.Assignment) -> None:
        # next_ms is the script's clock plus the busy interval (L.exec_reply).
        now_ms = reply.next_ms - round(self.config.effective_busy_interval * 1000)
        self.events.task_assigned(queue, queued_seconds=max(0, now_ms - reply.queued_ms) / 1000)

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
        queue = keys.domain_id(prefix, pjson)
        shards = self.config.shards_of(queue)
        worker_json = digests.worker_json(report.worker_id)
        home = keys.shard_domains(queue, shards)[keys.shard_of(worker_json, shards)]
        wk = keys.worker_key(report.size_class, worker_json)
        identity = _Identity(home, prefix, pjson, wk, codec.tokens(report.worker_id), queue, shards)
        if shards > 1:
            remember(self._homes, home, (queue, shards))
        remember(self._identities, cache_key, identity)
        return identity

    def _hold_time(self) -> float:
        t = self.config.idle_sync_timeout
        return random.uniform(t / 2, t) if t > 0 else 0.0

    async def _park(
        self,
        domain: str,
        wk: str,
        parked: replies.Parked,
        steal: Callable[[], Awaitable[replies.Assignment | None]] | None = None,
    ) -> replies.WorkerReply:
        """Hold a parked worker until a hint or the hold's end. `steal`, for a sharded
        queue: a hold woken with nothing for it looks in the other shards first."""
        wait = self._hold_time()
        topic = keys.worker_topic(domain, wk)
        loop = asyncio.get_running_loop()
        start = loop.time()
        until = start + wait
        # The lease the script gave the park, on this loop's clock.
        warm = _Warm(
            domain, parked.now_us, start + (parked.deadline_ms - parked.now_us / 1000) / 1000
        )
        reply: replies.WorkerReply | None = None
        if steal is not None:  # a sharded queue: the warm check also looks at the others
            self._holding[wk] = domain
            self._check_warm_later()
        try:
            # A hint lost on the way (Redis restarting, say) is caught by one look at the
            # worker record after the first second (one read per park).
            payload = await self.hints.wait(topic, min(wait, 1.0))
            assigned = False
            if payload is None and loop.time() < until:
                assigned = await self._assigned(domain, wk)
                if assigned:
                    self.events.hint_lost(ev.HINT_WORKER)
                else:
                    payload = await self.hints.wait(topic, until - loop.time())
            reply = replies.worker_hint(payload, parked.now_us)
            if reply is None and payload is None and not assigned:
                reply = self._go_warm(wk, warm)
        finally:
            if steal is not None and self._holding.get(wk) == domain:
                del self._holding[wk]
            woken = reply is None
            if reply is None:  # no assignment in hand: leave the parked state in Redis
                reply = await self._unpark(domain, wk)
        if woken and steal is not None and isinstance(reply, replies.Idle):
            reply = await steal() or reply
        return reply

    async def _warm_hold(
        self,
        wk: str,
        warm: _Warm,
        steal: Callable[[], Awaitable[replies.Assignment | None]] | None = None,
    ) -> replies.WorkerReply | None:
        """Hold an idle worker that is still parked in Redis, without Redis; None when
        its park's lease would not cover another hold (it is released: park again)."""
        wait = self._hold_time()
        loop = asyncio.get_running_loop()
        if loop.time() + wait + WARM_GRACE + LEASE_MARGIN > warm.lease_until:
            self._release(wk, warm.domain)
            return None
        reply: replies.WorkerReply | None = None
        self._holding[wk] = warm.domain
        self._check_warm_later()
        try:
            payload = await self.hints.wait(keys.worker_topic(warm.domain, wk), wait)
            reply = replies.worker_hint(payload, warm.parked_us)
            if reply is None and payload is None:
                reply = self._go_warm(wk, warm)
        finally:
            self._holding.pop(wk, None)
            woken = reply is None
            if reply is None:  # a bare hint (drain, terminate, a lost hint found), or cancelled
                reply = await self._unpark(warm.domain, wk)
        if woken and steal is not None and isinstance(reply, replies.Idle):
            reply = await steal() or reply
        return reply

    def _check_warm_later(self) -> None:
        if self._checker is None or self._checker.done():
            self._checker = asyncio.ensure_future(self._check_warm())

    async def _check_warm(self) -> None:
        """Every WARM_CHECK seconds while there are warm parks: find the warm workers that
        were given work without their hint reaching this frontend; count each, and wake
        it with a bare hint (its hold then unparks, which hands it the assignment)."""
        while self._holding or self._warm:
            await asyncio.sleep(WARM_CHECK)
            by_domain: dict[str, list[str]] = {}
            for wk, domain in self._holding.items():
                by_domain.setdefault(domain, []).append(wk)
            for wk, warm in self._warm.items():
                by_domain.setdefault(warm.domain, []).append(wk)
            for domain, wks in by_domain.items():
                try:
                    lost = await self._assigned_among(domain, wks)
                except Exception as err:  # Redis away: the parks' leases still bound it
                    log.debug("warm park check of %s failed: %s", domain, err)
                    continue
                for wk in lost:
                    if self._holding.get(wk) == domain or (
                        wk in self._warm and self._warm[wk].domain == domain
                    ):
                        self.events.hint_lost(ev.HINT_WORKER)
                        self.hints.deliver(keys.worker_topic(domain, wk).encode())
                if domain in self._homes:
                    await self._check_shards(domain, [wk for wk in wks if wk not in lost])

    async def _check_shards(self, home: str, wks: list[str]) -> None:
        """Sharded queues: work queued in another shard while workers of its size class
        are held here means a wake-up was lost (Operations._wake_elsewhere): wake one
        held worker per size class that has some, and count it."""
        queue, shards = self._homes[home]
        by_class: dict[str, list[str]] = {}
        for wk in wks:
            by_class.setdefault(keys.size_class_of(wk), []).append(wk)
        for sc, held in by_class.items():
            try:
                found = await self._queued_besides(home, queue, shards, int(sc))
            except Exception as err:  # Redis away: the parks' leases still bound it
                log.debug("shard check of %s failed: %s", home, err)
                continue
            if found:
                self.events.hint_lost(ev.HINT_WORKER)
                self.hints.deliver(keys.worker_topic(home, held[0]).encode())

    async def _assigned_among(self, domain: str, wks: list[str]) -> list[str]:
        """Which of these workers' records name a task (they were offered one)."""
        found: list[str] = []
        key = keys.domain_key(domain, "workers")
        for i in range(0, len(wks), WARM_CHECK_BATCH):
            batch = wks[i : i + WARM_CHECK_BATCH]
            for wk, raw in zip(batch, await self.redis.hmget(key, batch), strict=True):
                if raw is not None and codec.WorkerRecord.parse(raw).tid:
                    found.append(wk)
        return found

    def _go_warm(self, wk: str, warm: _Warm) -> replies.Idle | None:
        """End a hold with nothing for the worker: answer it idle and keep its park for
        its next Synchronize (released after WARM_GRACE); None when the lease would not
        cover another hold."""
        loop = asyncio.get_running_loop()
        t = self.config.idle_sync_timeout
        if getattr(self.hints, "polling", False) or self.hints.closing:
            return None  # no hint would tell the next hold about work: park every time
        if loop.time() + t / 2 + WARM_GRACE + LEASE_MARGIN > warm.lease_until:
            return None
        warm.release = asyncio.ensure_future(self._watch_warm(wk, warm))
        self._warm[wk] = warm
        self._check_warm_later()
        return replies.Idle(int(time.time() * 1000))

    async def _watch_warm(self, wk: str, warm: _Warm) -> None:
        """Release a warm park after WARM_GRACE, or at once when another frontend asks
        (the worker came back through it)."""
        await self.hints.wait(keys.release_topic(warm.domain, wk), WARM_GRACE)
        self._release_warm(wk, warm)

    def _release_warm(self, wk: str, warm: _Warm) -> None:
        if self._warm.get(wk) is warm:
            del self._warm[wk]
            self._release(wk, warm.domain)

    def _release(self, wk: str, domain: str) -> None:
        """Leave the parked state in Redis in the background (the worker is not there to
        answer); its next Synchronize waits for this first."""
        if wk in self._releasing:
            return
        fut = asyncio.ensure_future(self._unpark(domain, wk))
        self._releasing[wk] = fut

        def done(f: asyncio.Future[Any]) -> None:
            if self._releasing.get(wk) is fut:
                del self._releasing[wk]
            if not f.cancelled() and f.exception() is not None:
                log.warning("releasing the park of worker %s failed: %s", wk, f.exception())

        fut.add_done_callback(done)

    async def _unpark(self, domain: str, wk: str) -> replies.Assignment | replies.Idle:
        unpark = asyncio.ensure_future(
            self.scripts.unpark_worker(
                domain=domain, config=self.registry.script_config(domain), wk=wk
            )
        )
        return await asyncio.shield(unpark)

    async def _assigned(self, domain: str, wk: str) -> bool:
        return bool(await self._assigned_among(domain, [wk]))


def _idle(report: WorkerReport) -> WorkerReport:
    """The same worker reporting idle (its next report at home, after work elsewhere)."""
    return WorkerReport(
        worker_id=report.worker_id,
        instance_name_prefix=report.instance_name_prefix,
        platform=report.platform,
        size_class=report.size_class,
        state="idle",
        prefer_being_idle=report.prefer_being_idle,
    )


def completion_outcome(response: re_pb2.ExecuteResponse) -> tuple[str, str]:
    """(outcome, gRPC code name) of a completed action, for `events.task_completed`."""
    code = response.status.code
    name = _CODE_NAMES.get(code, str(code))
    if code == _DEADLINE_EXCEEDED:
        return ev.TIMEOUT, name
    if code != 0 or response.result.exit_code != 0:
        return ev.ACTION_FAILURE, name
    return ev.SUCCESS, name


def executing_seconds(response: re_pb2.ExecuteResponse) -> float | None:
    """How long the worker worked on it (worker_start to worker_completed), if it said."""
    md = response.result.execution_metadata
    if not (md.HasField("worker_start_timestamp") and md.HasField("worker_completed_timestamp")):
        return None
    start = md.worker_start_timestamp.ToNanoseconds()
    return max(0, md.worker_completed_timestamp.ToNanoseconds() - start) / 1e9


def lost_events(
    events: ev.SchedulerEvents, prefix: str, pjson: str, lost: list[tuple[str, int]]
) -> None:
    """Requeues and failures of tasks whose workers were lost (`replies.lost_tasks`)."""
    for kind, size_class in lost:
        queue = ev.QueueName(prefix, pjson, size_class)
        if kind == "r":
            events.task_requeued(queue, reason=ev.REQUEUE_WORKER_LOST)
        else:
            events.task_completed(
                queue, outcome=ev.WORKER_LOST, grpc_code="UNAVAILABLE", executing_seconds=None
            )


_DEADLINE_EXCEEDED = 4
# google.rpc.Code numbers -> the names gRPC uses (grpc_code label values).
_CODE_NAMES = {
    i: n
    for i, n in enumerate(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
    )
}
