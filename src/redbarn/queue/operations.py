"""Operations as clients see them: enqueue (Execute), read and watch (WaitExecution).

`Operations.execute` enqueues an Action that the caller has read and checked (see
`redbarn.queue.intake` for the whole Execute: Action from the CAS, Action Cache, then
here); `watch` is the stream of `OperationView`s an Execute or WaitExecution sends: the
current state at once, one view per stage change, a keep-alive every
`execution_update_interval`, ending with the done view. The frontend encodes views as
longrunning Operations (`redbarn.frontend.execution`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import any_pb2, duration_pb2

from redbarn import digests
from redbarn.errors import NotFound, ResourceExhausted, Unavailable
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import codec, keys, replies, validate
from redbarn.queue import events as ev
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.hints import Hints
from redbarn.queue.registry import Registry, instance_suffix
from redbarn.queue.scripts import RequiredBlobs, Scripts
from redbarn.queue.sizeclass import SizeClassAnalyzer

Stage = re_pb2.ExecutionStage
log = logging.getLogger(__name__)
# Sharded queues: after a wake pass found no parked worker in any other shard, the
# Executes of the next this many seconds are woken for together at its end.
WAKE_QUIET = 0.02


class MissingBlobs(Exception):
    """`execute(required=...)` found required blobs missing; nothing was enqueued.
    `positions` index `RequiredBlobs.keys` (0-based)."""

    def __init__(self, positions: Sequence[int]) -> None:
        super().__init__(f"missing blobs at {list(positions)}")
        self.positions = list(positions)


@dataclass(frozen=True, slots=True)
class OperationView:
    """What a waiter (or an admin read) sees of one operation."""

    name: str
    stage: int  # ExecutionStage.Value
    action_digest: re_pb2.Digest
    digest_function: int
    response: re_pb2.ExecuteResponse | None
    queued_ms: int
    size_class: int
    priority: int
    invocation: tuple[tuple[str, str], ...]
    worker: str  # worker-id JSON while executing (and after), else ""
    gc_deadline_ms: int | None
    now_ms: int
    # "<stage><ms> ..." of the current assignment: s assigned, f fetching inputs,
    # r running, u uploading outputs (as the worker reported them).
    worker_stages: str = ""
    # Redis time (us) of the script that produced this state; orders it against hints.
    now_us: int = 0

    def updated(self, payload: bytes) -> OperationView | None:
        """This view moved to the state an operation hint carries, or None when the
        payload is malformed or older than this view."""
        hint = replies.operation_hint(payload)
        if hint is None or hint.now_us < self.now_us:
            return None
        return OperationView(  # every field named: dataclasses.replace costs twice as much
            name=self.name,
            stage=hint.stage,
            action_digest=self.action_digest,
            digest_function=self.digest_function,
            response=hint.response,
            queued_ms=self.queued_ms,
            size_class=self.size_class,
            priority=self.priority,
            invocation=self.invocation,
            worker=hint.worker,
            gc_deadline_ms=self.gc_deadline_ms,
            now_ms=self.now_ms,
            worker_stages=hint.worker_stages,
            now_us=hint.now_us,
        )

    @property
    def done(self) -> bool:
        return self.stage == Stage.COMPLETED


@dataclass
class Operations:
    """Execute and WaitExecution over the scripts (enqueue_operation, touch_operation)."""

    registry: Registry
    scripts: Scripts
    hints: Hints
    config: SchedulerConfig
    events: ev.SchedulerEvents = field(default_factory=ev.NoEvents)
    # Feedback-driven initial size classes (None: the smallest size class with workers).
    size_classes: SizeClassAnalyzer | None = None
    # Sharded queues: (queue, size class) -> (loop time a quiet period ends, Executes
    # counted in it); see _wake_elsewhere.
    _wake_quiet: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict, init=False)

    async def execute(
        self,
        *,
        instance_name: str,
        action_digest: re_pb2.Digest,
        action: re_pb2.Action,
        digest_function: int,
        priority: int = 0,
        request_metadata: re_pb2.RequestMetadata | None = None,
        auxiliary_metadata: Sequence[any_pb2.Any] = (),
        w3c_trace_context: Mapping[str, str] | None = None,
        required: RequiredBlobs | None = None,
        queue_platform: re_pb2.Platform | None = None,
    ) -> OperationView:
        """Create or join an operation; returns its first view (QUEUED or EXECUTING).

        The caller has validated the instance name, digest function and digest and
        fetched `action` from the CAS. Raises InvalidArgument (platform, timeout),
        Unavailable/FailedPrecondition (no workers), ResourceExhausted (full),
        MissingBlobs when `required` blobs (checked in the same script, so in the same
        round trip) are gone. `queue_platform`, when given, picks the platform queue
        instead of the Action's platform (which the worker still gets whole).
        """
        config = self.config
        pjson = self.registry.platform_json(action.platform)
        if queue_platform is not None:
            pjson = self.registry.platform_json(queue_platform)
        timeout = validate.action_timeout(
            action, default=config.default_action_timeout, maximum=config.max_action_timeout
        )
        analysis = None
        if self.size_classes is not None:  # its read overlaps the queue lookup
            analysis = self.size_classes.start(
                instance_name=instance_name, digest_function=digest_function, action=action
            )
        try:
            queue = await self.registry.resolve(instance_name, pjson)
        except BaseException:
            if analysis is not None:
                analysis.cancel()
            raise
        choice = await analysis.choose(queue.domain, timeout) if analysis is not None else None
        # A sharded queue (--queue-shards): the action's own shard, so that in-flight
        # dedup still meets the same action (keys.shard_of).
        digest_key = digests.key(action_digest)
        shards = config.shards_of(queue.domain)
        shard = keys.shard_of(digest_key, shards)
        domain = keys.shard_domains(queue.domain, shards)[shard]
        routed = re_pb2.Action()
        routed.CopyFrom(action)
        routed.timeout.CopyFrom(
            duration_pb2.Duration(seconds=int(timeout), nanos=round((timeout % 1) * 1e9))
        )
        executing = rw_pb2.DesiredState.Executing(
            action_digest=action_digest,
            action=routed,
            auxiliary_metadata=[*auxiliary_metadata, *([choice.learner] if choice else [])],
            instance_name_suffix=instance_suffix(instance_name, queue.prefix),
            digest_function=digest_function,  # type: ignore[arg-type]
            w3c_trace_context=dict(w3c_trace_context or {}),
        )
        largest = b""
        if choice is not None and choice.timeout is not None:
            # The analyzer's shorter timeout on a smaller class; a failure there reruns
            # on the largest class with the action's own (the script keeps both).
            largest = executing.SerializeToString()
            executing.action.timeout.CopyFrom(
                duration_pb2.Duration(
                    seconds=int(choice.timeout), nanos=round((choice.timeout % 1) * 1e9)
                )
            )
        path = codec.invocation_path(
            codec.request_metadata_path(request_metadata, levels=config.invocation_keys)
        )
        dedup = (
            ""
            if action.do_not_cache
            else codec.dedup_key(digest_function, action_digest, instance_name)
        )
        opid = uuid.uuid4().hex
        reply = await self.scripts.enqueue_operation(
            domain=domain,
            config=self.registry.script_config(domain),
            opid=opid,
            dedup_key=dedup,
            path=path,
            priority=codec.priority_field(priority),
            executing=executing.SerializeToString(),
            digest=digest_key,
            digest_function=digest_function,
            target_id=request_metadata.target_id if request_metadata is not None else "",
            initial_size_class=choice.size_class
            if choice
            # A shard sees only the workers in it now: the smallest size class, as
            # Buildbarn's fallback analyzer picks, not the smallest with workers here.
            else (config.smallest_size_class(queue.domain) if shards > 1 else None),
            largest_executing=largest,
            required=required,
        )
        if isinstance(reply, replies.BlobsMissing):
            raise MissingBlobs(reply.positions)
        if isinstance(reply, replies.EnqueueRefused):
            if reply.reason == "full":
                raise ResourceExhausted(
                    f'Platform queue for instance name prefix "{queue.prefix}" platform '
                    f"{pjson} has {config.max_queued_per_platform} queued operations"
                )
            raise await self.registry.no_workers(instance_name, pjson)
        # The script answers with the existing operation when the same invocation asked
        # for the same action before (in-flight dedup, Buildbarn's SameInvocation).
        dedup = {"s": ev.SAME_INVOCATION, "o": ev.OTHER_INVOCATION}.get(reply.dedup, ev.NEW)
        if reply.opid != opid:  # the same invocation's operation came back
            dedup = ev.SAME_INVOCATION
        if shards > 1 and dedup == ev.NEW and reply.stage == Stage.QUEUED:
            await self._wake_elsewhere(queue.domain, shard, shards, reply.size_class)
        self.events.operation_created(
            ev.QueueName(queue.prefix, pjson, reply.size_class),
            dedup=dedup,
            to_worker=dedup == ev.NEW and reply.stage == Stage.EXECUTING,
        )
        return OperationView(
            name=keys.operation_name(domain, reply.opid),
            stage=reply.stage,
            action_digest=action_digest,
            digest_function=digest_function,
            response=None,
            queued_ms=reply.queued_ms,
            size_class=reply.size_class,
            priority=reply.priority,
            invocation=tuple(codec.parse_invocation_path(path)),
            worker=reply.worker,
            gc_deadline_ms=reply.gc_deadline_ms,
            now_ms=reply.now_ms,
            now_us=reply.now_us,
            worker_stages=reply.worker_stages,
        )

    async def _wake_elsewhere(self, queue: str, shard: int, shards: int, size_class: int) -> None:
        """New work queued in `shard`, where no worker of its size class was parked: wake
        one parked in another shard (the next ones first), which takes it from here
        (`Workers`). A worker parking meanwhile looks at every shard after it parks, so
        work queued before that look is found by it and work queued after it wakes it.

        Under load nobody is parked anywhere, and every queued Execute would ask K-1
        shards in vain: after a pass that found nobody, the Executes of the next
        WAKE_QUIET seconds only count themselves, and one pass at its end wakes as many
        workers as they were (parked in any shard), so none waits longer than that."""
        key = (queue, size_class)
        loop = asyncio.get_running_loop()
        quiet = self._wake_quiet.get(key)
        if quiet is not None:
            until, waiting = quiet
            if loop.time() < until:
                self._wake_quiet[key] = (until, waiting + 1)
                return
        others = keys.shard_domains(queue, shards)
        if await self._wake(others[:shard] + others[shard + 1 :], size_class, 1):
            self._wake_quiet.pop(key, None)
            return
        until = loop.time() + WAKE_QUIET
        self._wake_quiet[key] = (until, 0)
        loop.call_at(until, lambda: asyncio.ensure_future(self._wake_later(key, shards)))

    async def _wake_later(self, key: tuple[str, int], shards: int) -> None:
        """The pass at the end of a quiet period, for the Executes it counted."""
        quiet = self._wake_quiet.pop(key, None)
        if quiet is None or quiet[1] == 0:
            return
        queue, size_class = key
        try:
            await self._wake(keys.shard_domains(queue, shards), size_class, quiet[1])
        except Exception as err:  # Redis away: the parks' own looks still find the work
            log.warning("waking parked workers of %s failed: %s", queue, err)

    async def _wake(self, domains: Sequence[str], size_class: int, count: int) -> int:
        """Wake up to `count` workers parked in `domains`; how many were woken."""
        sc = keys.size_class_field(size_class)
        woken = 0
        for domain in domains:
            while woken < count:
                wk = await self.scripts.wake_parked(
                    domain=domain, config=self.registry.script_config(domain), size_class=sc
                )
                if wk is None:
                    break
                woken += 1
        return woken

    async def get_operation_view(self, name: str, *, watch: bool = True) -> OperationView:
        """Touch (watch=True: attach this frontend and renew the waiter lease) and read.

        Unknown names raise NotFound `Operation with name "<n>" not found` (WaitExecution).
        """
        parsed = keys.parse_operation_name(name)
        read = None
        if parsed is not None:
            domain, opid = parsed
            read = await self.scripts.touch_operation(
                domain=domain,
                config=self.registry.script_config(domain),
                opid=opid,
                fid=self.registry.fid if watch else "",
            )
        if read is None:
            raise NotFound(f'Operation with name "{name}" not found')
        return OperationView(
            name=name,
            stage=read.stage,
            action_digest=read.action_digest,
            digest_function=read.digest_function,
            response=read.response,
            queued_ms=read.queued_ms,
            size_class=read.size_class,
            priority=read.priority,
            invocation=tuple(codec.parse_invocation_path(read.invocation_path)),
            worker=read.worker,
            gc_deadline_ms=read.gc_deadline_ms,
            now_ms=read.now_ms,
            worker_stages=read.worker_stages,
            now_us=read.now_us,
        )

    async def watch_operation(
        self, name: str, *, first: OperationView | None = None
    ) -> AsyncIterator[OperationView]:
        """The Execute/WaitExecution stream: the current view at once, then one on every
        stage change and every execution_update_interval, ending after the done view.
        Raises Unavailable when this frontend shuts down (the client reattaches)."""
        view = first or await self.get_operation_view(name)
        yield view
        loop = asyncio.get_running_loop()
        keepalive, touch_every = self.config.execution_update_interval, self.config.touch_interval
        sent_at = touched_at = loop.time()
        sent = (view.stage, view.worker_stages)
        topic = keys.operation_topic(name)
        while not view.done:
            due = min(touched_at + touch_every, sent_at + keepalive) - loop.time()
            payload = await self.hints.wait(topic, max(0.0, due))
            if self.hints.closing:
                raise Unavailable(
                    f"Frontend is shutting down; reattach to operation {name} with WaitExecution"
                )
            # A hint with the new state saves the read, unless the lease needs renewing.
            hinted = view.updated(payload) if payload else None
            if hinted is None or loop.time() - touched_at >= touch_every:
                known = (view.stage, view.worker_stages)
                view = await self.get_operation_view(name)
                touched_at = loop.time()
                if payload is None and (view.stage, view.worker_stages) != known:
                    # Every stage change is hinted to the operation's watching frontends
                    # (the 4 most recent), so the timer finding one means a hint was lost.
                    self.events.hint_lost(ev.HINT_OPERATION)
            else:
                view = hinted
            if (
                (view.stage, view.worker_stages) != sent
                or view.done
                or loop.time() - sent_at >= keepalive
            ):
                yield view
                sent_at, sent = loop.time(), (view.stage, view.worker_stages)
