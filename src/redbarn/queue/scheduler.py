"""The scheduler core: the operations a frontend performs, each one script call.

`Scheduler` is used by the Execution, OperationQueue and BuildQueueState servicers.
It raises the domain errors of `redbarn.errors`; it never imports grpc. Every state
change is one Lua script (see `scripts`); the only state outside a script is the
global platform registry and the start time (see `keys`).

Frontend use, in short:
- at start: `Scheduler(redis, config, hints=hub)`, `await start()`, and run
  `run_reaper()` in the background (every frontend does; the reaper is idempotent);
- Execute: validate the instance name, digest function and digest (`validate`), read
  the Action from the CAS, `view = await execute(...)`, then stream
  `watch_operation(view.name, first=view)`, sending `view.operation()` for each view;
- WaitExecution: stream `watch_operation(name)` (NotFound for unknown names);
- Synchronize: `await synchronize(request)` returns the SynchronizeResponse; it parks
  (holds) idle/completed reports itself and always leaves the parked state, even when
  cancelled;
- BuildQueueState: `kill_operations`, `modify_drain`, `terminate_workers` and the
  `get_operation` / `list_*` reads take and return the buildqueuestate messages.
The redis client must allow as many connections as there are concurrent calls
(redis-py's asyncio pool raises beyond 100 by default: use a BlockingConnectionPool).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

from google.longrunning import operations_pb2
from google.protobuf import any_pb2, duration_pb2

from redbarn.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import codec, keys, validate
from redbarn.queue.admin import AdminReads
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scripts import Reply, RequiredBlobs, Scripts
from redbarn.runtime.fastredis import FastRedis

log = logging.getLogger(__name__)

Stage = re_pb2.ExecutionStage
_STAGES = {"q": Stage.QUEUED, "x": Stage.EXECUTING, "d": Stage.COMPLETED}
# Worker sub-stages (CurrentState.Executing) as one letter in Redis.
_SUBSTAGES = {"started": "s", "fetching_inputs": "f", "running": "r", "uploading_outputs": "u"}
_METADATA_URL = "type.googleapis.com/" + re_pb2.ExecuteOperationMetadata.DESCRIPTOR.full_name
_RESPONSE_URL = "type.googleapis.com/" + re_pb2.ExecuteResponse.DESCRIPTOR.full_name

_STAGE_STARTS = {
    "s": "worker_start_timestamp",
    "f": "input_fetch_start_timestamp",
    "r": "execution_start_timestamp",
    "u": "output_upload_start_timestamp",
}
# A stage ended when the next one began.
_STAGE_ENDS = {
    "f": ("r", "input_fetch_completed_timestamp"),
    "r": ("u", "execution_completed_timestamp"),
}


class Hints(Protocol):
    """Wake-up hints for this frontend (implemented by `redbarn.frontend.hub.Hub`).

    `fid` names the frontend's channel `redbarn:v1:fe:<fid>`; `wait(topic, timeout)`
    returns the payload published with the topic (b"" when there was none), or None on
    timeout. Scripts publish the new state with each hint (see `OperationView.updated`
    and `_hinted_assignment`), so a woken waiter usually needs no Redis call. `closing`
    turns true when the frontend shuts down (every wait then returns at once).
    """

    fid: str
    closing: bool

    async def wait(self, topic: str, timeout: float) -> bytes | None: ...

    def deliver(self, message: bytes) -> None:
        """A hint for this frontend that came back in a script's reply instead of over
        pub/sub ("<topic>\x1f<payload>", as published)."""


class MissingBlobs(Exception):
    """`execute(required=...)` found required blobs missing; nothing was enqueued.
    `positions` index `RequiredBlobs.keys` (0-based)."""

    def __init__(self, positions: list[int]) -> None:
        super().__init__(f"missing blobs at {positions}")
        self.positions = positions


class PollingHints:
    """No pub/sub: every wait just sleeps (the waiter then re-reads state)."""

    closing = False

    def __init__(self, fid: str | None = None, step: float = 0.05) -> None:
        self.fid = fid or uuid.uuid4().hex[:12]
        self._step = step

    async def wait(self, topic: str, timeout: float) -> bytes | None:
        await asyncio.sleep(max(0.0, min(timeout, self._step)))
        return None

    def deliver(self, message: bytes) -> None:
        """Dropped: polling waiters re-read state anyway."""


ms_timestamp = codec.ms_timestamp
_set_ms = codec.set_ms_timestamp


def _hinted_assignment(payload: bytes | None, parked_us: int) -> Reply | None:
    """The executing reply a worker hint carries (L.offer in _lib.lua has already taken
    the worker out of the parked state), or None: no payload, or one from before this
    park (a hint that outlived an earlier call)."""
    if not payload:
        return None
    parts = payload.split(b"\x1f", 5)
    if len(parts) != 6 or not parts[0].isdigit() or int(parts[0]) <= parked_us:
        return None
    return [b"x", *parts[1:]]


def _s(v: bytes | str | int) -> str:
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


@dataclass(frozen=True)
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
        """This view moved to the state an operation hint carries (see notify_task in
        _lib.lua), or None when the payload is malformed or older than this view."""
        parts = payload.split(b"\x1f", 4)
        if len(parts) != 5 or not parts[0].isdigit():
            return None
        at = int(parts[0])
        stage = _STAGES.get(parts[1].decode())
        if at < self.now_us or stage is None:
            return None
        wk = parts[3].decode()
        return OperationView(  # every field named: dataclasses.replace costs twice as much
            name=self.name,
            stage=stage,
            action_digest=self.action_digest,
            digest_function=self.digest_function,
            response=codec.decode_result(parts[4]) if stage == Stage.COMPLETED else None,
            queued_ms=self.queued_ms,
            size_class=self.size_class,
            priority=self.priority,
            invocation=self.invocation,
            worker=wk[11:] if wk else "",
            gc_deadline_ms=self.gc_deadline_ms,
            now_ms=self.now_ms,
            worker_stages=parts[2].decode(),
            now_us=at,
        )

    @property
    def done(self) -> bool:
        return self.stage == Stage.COMPLETED

    def metadata(self) -> re_pb2.ExecuteOperationMetadata:
        md = re_pb2.ExecuteOperationMetadata(
            stage=cast(Any, self.stage),
            action_digest=self.action_digest,
            digest_function=cast(Any, self.digest_function),
        )
        if self.stage == Stage.EXECUTING and self.worker_stages:
            md.partial_execution_metadata.CopyFrom(self.partial_execution_metadata())
        return md

    def partial_execution_metadata(self) -> re_pb2.ExecutedActionMetadata:
        """The worker's progress so far: each stage's start, and the end of the stages
        it has left behind (REAPI's partial_execution_metadata)."""
        at = {part[0]: int(part[1:]) for part in self.worker_stages.split() if len(part) > 1}
        meta = re_pb2.ExecutedActionMetadata(worker=self.worker)
        _set_ms(meta.queued_timestamp, self.queued_ms)
        for stage, name in _STAGE_STARTS.items():
            if stage in at:
                _set_ms(getattr(meta, name), at[stage])
        for stage, (after, name) in _STAGE_ENDS.items():
            if stage in at and after in at:
                _set_ms(getattr(meta, name), at[after])
        return meta

    def operation(self) -> operations_pb2.Operation:
        """The longrunning.Operation message of REAPI (never `error`, R51)."""
        # Any's fields set directly: what Any.Pack does, without its Python-level lookups
        # (this runs for every message of every Execute stream).
        op = operations_pb2.Operation(name=self.name)
        op.metadata.type_url = _METADATA_URL
        op.metadata.value = self.metadata().SerializeToString()
        if self.done and self.response is not None:
            op.done = True
            op.response.type_url = _RESPONSE_URL
            op.response.value = self.response.SerializeToString()
        return op


@dataclass
class _Platform:
    prefix: str
    platform_json: str


@dataclass
class _Registry:
    at: float = -1e9
    entries: dict[str, _Platform] = field(default_factory=dict)


def _prefix_matches(prefix: str, instance: str) -> bool:
    return prefix == "" or instance == prefix or instance.startswith(prefix + "/")


def _suffix(instance: str, prefix: str) -> str:
    if prefix == "":
        return instance
    if instance == prefix:
        return ""
    return instance[len(prefix) + 1 :]


class _Identity(NamedTuple):
    """A synchronizing worker in the scripts' terms (Scheduler._identity)."""

    domain: str
    prefix: str
    platform_json: str
    wk: str
    tokens: str


_CACHE_MAX = 10_000  # workers (or platforms) a frontend remembers


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """A bounded cache entry: a full cache is cleared whole (entries are cheap to redo)."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


class Scheduler:
    """The scheduler as seen by a frontend. Stateless apart from caches: any number of
    Scheduler objects (in any number of processes) may share one Redis."""

    def __init__(
        self,
        redis: Any,
        config: SchedulerConfig | None = None,
        *,
        hints: Hints | None = None,
        fast: FastRedis | None = None,
    ) -> None:
        self.redis = redis
        self.config = config or SchedulerConfig()
        self.hints: Hints = hints or PollingHints()
        self.scripts = Scripts(redis, fast, local_hints=self.hints.deliver)
        self.admin = AdminReads(redis, self.config)
        self._registry = _Registry()
        self._registered: dict[str, float] = {}
        self._cfg: dict[str, str] = {}
        self._identities: dict[tuple[Any, ...], _Identity] = {}
        self._platforms_seen: dict[tuple[tuple[str, str], ...], str] = {}

    @property
    def fid(self) -> str:
        return self.hints.fid

    def _config(self, domain: str) -> str:
        c = self._cfg.get(domain)
        if c is None:
            c = self._cfg[domain] = f"{self.config.script_config(domain)} {self.fid}"
        return c

    async def now_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def start(self) -> None:
        """Record the first start time (drives the start-up grace period)."""
        await self.redis.set(keys.STARTED, str(await self.now_ms()), nx=True)

    # Domains -------------------------------------------------------------------

    async def _register(self, domain: str, prefix: str, platform_json: str) -> None:
        now = time.monotonic()
        if now - self._registered.get(domain, -1e9) < 5 * self.config.platform_cache_ttl:
            return
        value = json.dumps({"instance_name_prefix": prefix, "platform": platform_json})
        await self.redis.hsetnx(keys.PLATFORMS, domain, value)
        self._registered[domain] = now

    async def _platforms(self, *, fresh: bool = False) -> dict[str, _Platform]:
        now = time.monotonic()
        if fresh or now - self._registry.at > self.config.platform_cache_ttl:
            raw = await self.redis.hgetall(keys.PLATFORMS)
            entries = {}
            for k, v in raw.items():
                d = json.loads(v)
                entries[_s(k)] = _Platform(d["instance_name_prefix"], d["platform"])
            self._registry = _Registry(now, entries)
        return self._registry.entries

    async def _resolve(self, instance: str, platform_json: str) -> tuple[str, str] | None:
        for fresh in (False, True):
            best: tuple[str, str] | None = None
            for domain, p in (await self._platforms(fresh=fresh)).items():
                if (
                    p.platform_json == platform_json
                    and _prefix_matches(p.prefix, instance)
                    and (best is None or len(p.prefix) > len(best[1]))
                ):
                    best = (domain, p.prefix)
            if best is not None:
                return best
        return None

    async def _no_workers(self, instance: str, platform_json: str) -> Exception:
        msg = f'No workers exist for instance name prefix "{instance}" platform {platform_json}'
        started = await self.redis.get(keys.STARTED)
        now = await self.now_ms()
        if started is None:
            await self.redis.set(keys.STARTED, str(now), nx=True)
            started = str(now).encode()
        if now < int(started) + self.config.platform_queue_timeout * 1000:
            return Unavailable(msg)
        return FailedPrecondition(msg)

    # Execute and waiting -------------------------------------------------------

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
    ) -> OperationView:
        """Create or join an operation; returns its first view (QUEUED or EXECUTING).

        The caller has validated the instance name, digest function and digest
        (`validate`) and fetched `action` from the CAS. Raises InvalidArgument (platform,
        timeout), Unavailable/FailedPrecondition (no workers), ResourceExhausted (full),
        MissingBlobs when `required` blobs (checked in the same script, so in the same
        round trip) are gone.
        """
        pjson = self._platform_json(action.platform)
        timeout = validate.action_timeout(
            action,
            default=self.config.default_action_timeout,
            maximum=self.config.max_action_timeout,
        )
        found = await self._resolve(instance_name, pjson)
        if found is None:
            raise await self._no_workers(instance_name, pjson)
        domain, prefix = found
        routed = re_pb2.Action()
        routed.CopyFrom(action)
        routed.timeout.CopyFrom(
            duration_pb2.Duration(seconds=int(timeout), nanos=round((timeout % 1) * 1e9))
        )
        executing = rw_pb2.DesiredState.Executing(
            action_digest=action_digest,
            action=routed,
            auxiliary_metadata=list(auxiliary_metadata),
            instance_name_suffix=_suffix(instance_name, prefix),
            digest_function=digest_function,  # type: ignore[arg-type]
            w3c_trace_context=dict(w3c_trace_context or {}),
        )
        path = codec.invocation_path(
            codec.request_metadata_path(
                request_metadata, correlated_level=self.config.correlated_invocations_level
            )
        )
        dk = (
            ""
            if action.do_not_cache
            else codec.dedup_key(digest_function, action_digest, instance_name)
        )
        reply = await self.scripts.enqueue_operation(
            domain=domain,
            config=self._config(domain),
            opid=uuid.uuid4().hex,
            dedup_key=dk,
            path=path,
            priority=codec.priority_field(priority),
            executing=executing.SerializeToString(),
            digest=codec.digest_field(action_digest),
            digest_function=digest_function,
            required=required,
        )
        kind = _s(reply[0])
        if kind == "missing":
            raise MissingBlobs([int(_s(i)) - 1 for i in reply[1:]])
        if kind == "nodomain":
            raise await self._no_workers(instance_name, pjson)
        if kind == "full":
            raise ResourceExhausted(
                f'Platform queue for instance name prefix "{prefix}" platform {pjson} has '
                f"{self.config.max_queued_per_platform} queued operations"
            )
        wk = _s(reply[6])
        return OperationView(
            name=keys.operation_name(domain, _s(reply[1])),
            stage=_STAGES[_s(reply[2])],
            action_digest=action_digest,
            digest_function=digest_function,
            response=None,
            queued_ms=int(_s(reply[3])),
            size_class=int(_s(reply[4])),
            priority=codec.priority_from_field(_s(reply[5])),
            invocation=tuple(codec.parse_invocation_path(path)),
            worker=wk[11:] if wk else "",
            gc_deadline_ms=int(_s(reply[8])),
            now_ms=int(_s(reply[7])),
            now_us=int(_s(reply[9])),
            worker_stages=_s(reply[10]),
        )

    async def get_operation_view(self, name: str, *, watch: bool = True) -> OperationView:
        """Touch (watch=True: attach this frontend and renew the waiter lease) and read.

        Unknown names raise NotFound `Operation with name "<n>" not found` (WaitExecution).
        """
        view = await self._view(name, watch=watch)
        if view is None:
            raise NotFound(f'Operation with name "{name}" not found')
        return view

    async def _view(self, name: str, *, watch: bool) -> OperationView | None:
        parsed = keys.parse_operation_name(name)
        if parsed is None:
            return None
        domain, opid = parsed
        r = await self.scripts.touch_operation(
            domain=domain, config=self._config(domain), opid=opid, fid=self.fid if watch else ""
        )
        if _s(r[0]) != "op":
            return None
        stage = _STAGES[_s(r[1])]
        result = bytes(r[5])
        qm = _s(r[7])
        wk = _s(r[10])
        return OperationView(
            name=name,
            stage=stage,
            action_digest=codec.digest_from_field(_s(r[3])),
            digest_function=int(_s(r[4]) or 0),
            response=codec.decode_result(result) if stage == Stage.COMPLETED else None,
            queued_ms=int(_s(r[2])),
            size_class=int(_s(r[6])),
            priority=codec.priority_from_field(qm),
            invocation=tuple(codec.parse_invocation_path(_s(r[8]))),
            worker=wk[11:] if wk else "",
            gc_deadline_ms=int(float(_s(r[12]))) if r[12] else None,
            now_ms=int(_s(r[11])),
            worker_stages=_s(r[13]),
            now_us=int(_s(r[14])),
        )

    async def watch_operation(
        self, name: str, *, first: OperationView | None = None
    ) -> AsyncIterator[OperationView]:
        """The Execute/WaitExecution stream: the current view at once, then one on every
        stage change and every execution_update_interval, ending after the done view."""
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
                view = await self.get_operation_view(name)
                touched_at = loop.time()
            else:
                view = hinted
            if (
                (view.stage, view.worker_stages) != sent
                or view.done
                or loop.time() - sent_at >= self.config.execution_update_interval
            ):
                yield view
                sent_at, sent = loop.time(), (view.stage, view.worker_stages)

    # Synchronize -----------------------------------------------------------------

    async def synchronize(self, request: rw_pb2.SynchronizeRequest) -> rw_pb2.SynchronizeResponse:
        """One worker report. Steady state is ONE script call; an idle or completed report
        with nothing to do parks (holds the call until a hint or the jittered timeout)."""
        domain, prefix, pjson, wk, tokens = self._identity(request)
        await self._register(domain, prefix, pjson)
        state = request.current_state
        which = state.WhichOneof("worker_state") if request.HasField("current_state") else None
        digest, result, failed = "", b"", False
        if which is None:
            raise InvalidArgument("Worker did not provide its current state")
        if which == "idle":
            report = "i"
        elif which == "executing":
            ex = state.executing
            if not ex.HasField("action_digest"):
                raise InvalidArgument("Worker is executing, but provided no action digest")
            digest = codec.digest_field(ex.action_digest)
            if ex.WhichOneof("execution_state") == "completed":
                report = "c"
                result = codec.worker_result(ex.completed)
                failed = codec.response_failed(ex.completed)
            else:
                report = "p" + _SUBSTAGES.get(ex.WhichOneof("execution_state") or "", "")
        else:
            raise InvalidArgument("Worker provided an unknown current state")
        reply = await self.scripts.synchronize_worker(
            domain=domain,
            config=self._config(domain),
            wk=wk,
            tokens=tokens,
            report=report,
            digest=digest,
            result=result,
            failed=failed,
            prefer_idle=request.prefer_being_idle,
        )
        kind = _s(reply[0])
        if kind == "b":
            raise ResourceExhausted(
                "A worker with the same worker ID is already synchronizing with the scheduler"
            )
        if kind == "p":
            reply = await self._park(domain, wk, int(_s(reply[2])))
        return self._sync_response(reply)

    def _platform_json(self, platform: re_pb2.Platform) -> str:
        """`platform` validated and in its JSON form; a bounded cache, since a cluster
        sees few distinct platforms (invalid ones raise and are never cached)."""
        cache_key = tuple((p.name, p.value) for p in platform.properties)
        pjson = self._platforms_seen.get(cache_key)
        if pjson is None:
            validate.platform(platform)
            pjson = codec.platform_json(platform)
            _remember(self._platforms_seen, cache_key, pjson)
        return pjson

    def _identity(self, request: rw_pb2.SynchronizeRequest) -> _Identity:
        """Who is synchronizing, in the scripts' terms. A worker sends the same worker ID,
        platform, prefix and size class every time: validated and encoded once, then
        looked up (a bounded cache; invalid requests raise and are never cached)."""
        prefix = request.instance_name_prefix
        cache_key = (
            prefix,
            request.size_class,
            tuple((p.name, p.value) for p in request.platform.properties),
            tuple(sorted(request.worker_id.items())),
        )
        found = self._identities.get(cache_key)
        if found is not None:
            return found
        validate.instance_name(prefix)
        pjson = self._platform_json(request.platform)
        domain = keys.domain_id(prefix, pjson)
        wk = keys.worker_key(request.size_class, codec.worker_json(request.worker_id))
        identity = _Identity(domain, prefix, pjson, wk, codec.tokens(request.worker_id))
        _remember(self._identities, cache_key, identity)
        return identity

    async def _park(self, domain: str, wk: str, parked_us: int) -> Reply:
        t = self.config.idle_sync_timeout
        wait = random.uniform(t / 2, t) if t > 0 else 0.0
        topic = keys.worker_topic(domain, wk)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        reply: Reply | None = None
        try:
            # A hint lost on the way (Redis restarting, say) is caught by one look at the
            # worker record after the first second (one read per park).
            payload = await self.hints.wait(topic, min(wait, 1.0))
            if payload is None and loop.time() < until and not await self._assigned(domain, wk):
                payload = await self.hints.wait(topic, until - loop.time())
            reply = _hinted_assignment(payload, parked_us)
        finally:
            if reply is None:  # no assignment in hand: leave the parked state in Redis
                unpark = asyncio.ensure_future(
                    self.scripts.unpark_worker(domain=domain, config=self._config(domain), wk=wk)
                )
                reply = await asyncio.shield(unpark)
        return reply

    async def _assigned(self, domain: str, wk: str) -> bool:
        raw = await self.redis.hget(keys.domain_key(domain, "workers"), wk)
        return raw is not None and bool(codec.WorkerRecord.parse(raw).tid)

    def _sync_response(self, reply: Reply) -> rw_pb2.SynchronizeResponse:
        kind = _s(reply[0])
        resp = rw_pb2.SynchronizeResponse()
        if kind == "x":
            _set_ms(resp.next_synchronization_at, int(reply[4]))
            ex = resp.desired_state.executing
            ex.MergeFromString(bytes(reply[5]))
            _set_ms(ex.queued_timestamp, int(reply[3]))
        elif kind == "c":
            _set_ms(resp.next_synchronization_at, int(reply[1]))
        else:
            _set_ms(resp.next_synchronization_at, int(reply[1]))
            resp.desired_state.idle.SetInParent()
        return resp

    # Housekeeping ------------------------------------------------------------------

    async def reap(self) -> dict[str, int]:
        """Run the reaper over every domain (idempotent; any frontend, any time)."""
        totals = {"workers": 0, "operations": 0, "queued": 0, "domains_removed": 0}
        for domain in list((await self._platforms(fresh=True)).keys()):
            while True:
                r = await self.scripts.reap_domain(
                    domain=domain, config=self._config(domain), batch=self.config.reap_batch
                )
                totals["workers"] += int(r[0])
                totals["operations"] += int(r[1])
                totals["queued"] += int(r[2])
                if int(r[4]):
                    await self.redis.hdel(keys.PLATFORMS, domain)
                    self._registered.pop(domain, None)
                    totals["domains_removed"] += 1
                if not int(r[3]):
                    break
        return totals

    async def run_reaper(self, interval: float = 1.0) -> None:
        """Reap forever on a jittered tick (a frontend runs this as a background task)."""
        while True:
            try:
                await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper tick failed")
            await asyncio.sleep(random.uniform(interval / 2, interval * 1.5))

    # Admin transitions ---------------------------------------------------------------

    async def kill_operation(self, name: str, status: Any) -> None:
        """KillOperations by name: complete the task (all its operations) with `status`."""
        parsed = keys.parse_operation_name(name)
        if parsed is not None:
            domain, opid = parsed
            result = codec.worker_result(re_pb2.ExecuteResponse(status=status))
            r = await self.scripts.kill_operation(
                domain=domain, config=self._config(domain), opid=opid, result=result
            )
            if _s(r[0]) == "ok":
                return
        raise NotFound(f'Operation "{name}" not found')

    async def _size_class_domain(self, prefix: str, platform: re_pb2.Platform) -> str:
        domain = keys.domain_id(prefix, codec.platform_json(platform))
        if domain not in await self._platforms(fresh=True):
            raise NotFound("Size class queue not found")
        return domain

    async def kill_queued_operations(
        self, *, instance_name_prefix: str, platform: re_pb2.Platform, size_class: int, status: Any
    ) -> int:
        """KillOperations filter size_class_queue_without_workers."""
        domain = await self._size_class_domain(instance_name_prefix, platform)
        result = codec.worker_result(re_pb2.ExecuteResponse(status=status))
        killed = 0
        while True:
            r = await self.scripts.kill_queued(
                domain=domain,
                config=self._config(domain),
                size_class=keys.size_class_field(size_class),
                result=result,
                batch=self.config.reap_batch,
            )
            kind = _s(r[0])
            if kind == "none":
                raise NotFound("Size class queue not found")
            if kind == "busy":
                raise FailedPrecondition(
                    "Cannot kill operations, as size class queue still has workers"
                )
            killed += int(r[1])
            if not int(r[2]):
                return killed

    async def add_drain(
        self,
        *,
        instance_name_prefix: str,
        platform: re_pb2.Platform,
        size_class: int,
        pattern: Mapping[str, str],
    ) -> None:
        await self._drain(True, instance_name_prefix, platform, size_class, pattern)

    async def remove_drain(
        self,
        *,
        instance_name_prefix: str,
        platform: re_pb2.Platform,
        size_class: int,
        pattern: Mapping[str, str],
    ) -> None:
        await self._drain(False, instance_name_prefix, platform, size_class, pattern)

    async def _drain(
        self,
        add: bool,
        prefix: str,
        platform: re_pb2.Platform,
        size_class: int,
        pattern: Mapping[str, str],
    ) -> None:
        domain = await self._size_class_domain(prefix, platform)
        common = {
            "domain": domain,
            "config": self._config(domain),
            "size_class": keys.size_class_field(size_class),
            "pattern_json": codec.worker_json(pattern),
        }
        if add:
            r = await self.scripts.add_drain(**common, tokens=codec.tokens(pattern))
        else:
            r = await self.scripts.remove_drain(**common)
        if _s(r[0]) != "ok":
            raise NotFound("Size class queue not found")

    async def terminate_workers(
        self, pattern: Mapping[str, str], *, wait: bool = True, poll: float = 0.2
    ) -> int:
        """Mark matching workers terminating in every domain; with wait, return once the
        tasks they were executing have left that state. Returns the number matched."""
        matched = 0
        pending: list[tuple[str, str]] = []
        for domain in await self._platforms(fresh=True):
            r = await self.scripts.terminate_workers(
                domain=domain, config=self._config(domain), tokens=codec.tokens(pattern)
            )
            matched += int(r[0])
            pending.extend((domain, _s(t)) for t in r[1:])
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

    async def kill_operations(self, request: bq_pb2.KillOperationsRequest) -> None:
        """KillOperations (R57-R59)."""
        which = request.filter.WhichOneof("type") if request.HasField("filter") else None
        if which == "operation_name":
            await self.kill_operation(request.filter.operation_name, request.status)
        elif which == "size_class_queue_without_workers":
            scq = request.filter.size_class_queue_without_workers
            if not scq.HasField("platform_queue_name"):
                raise InvalidArgument("No platform queue name provided")
            await self.kill_queued_operations(
                instance_name_prefix=scq.platform_queue_name.instance_name_prefix,
                platform=scq.platform_queue_name.platform,
                size_class=scq.size_class,
                status=request.status,
            )
        else:
            raise InvalidArgument("Unknown filter provided")

    async def modify_drain(self, request: bq_pb2.AddOrRemoveDrainRequest, *, add: bool) -> None:
        """AddDrain (add=True) / RemoveDrain (R60)."""
        if not request.HasField("size_class_queue_name"):
            raise InvalidArgument("No size class queue name provided")
        scq = request.size_class_queue_name
        if not scq.HasField("platform_queue_name"):
            raise InvalidArgument("No platform queue name provided")
        await self._drain(
            add,
            scq.platform_queue_name.instance_name_prefix,
            scq.platform_queue_name.platform,
            scq.size_class,
            dict(request.worker_id_pattern),
        )

    # BuildQueueState reads (see `redbarn.queue.admin`) ---------------------------------

    async def get_operation(self, name: str) -> bq_pb2.GetOperationResponse:
        return await self.admin.get_operation(name)

    async def list_operations(
        self, request: bq_pb2.ListOperationsRequest
    ) -> bq_pb2.ListOperationsResponse:
        return await self.admin.list_operations(request)

    async def list_platform_queues(self) -> bq_pb2.ListPlatformQueuesResponse:
        return await self.admin.list_platform_queues()

    async def list_invocation_children(
        self, request: bq_pb2.ListInvocationChildrenRequest
    ) -> bq_pb2.ListInvocationChildrenResponse:
        return await self.admin.list_invocation_children(request)

    async def list_queued_operations(
        self, request: bq_pb2.ListQueuedOperationsRequest
    ) -> bq_pb2.ListQueuedOperationsResponse:
        return await self.admin.list_queued_operations(request)

    async def list_workers(self, request: bq_pb2.ListWorkersRequest) -> bq_pb2.ListWorkersResponse:
        return await self.admin.list_workers(request)

    async def list_drains(self, request: bq_pb2.ListDrainsRequest) -> bq_pb2.ListDrainsResponse:
        return await self.admin.list_drains(request)
