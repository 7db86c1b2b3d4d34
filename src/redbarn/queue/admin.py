"""BuildQueueState reads (reference §2.15): plain reads of the domain keys, no scripts.

Reads are not atomic across keys (an admin page may mix two instants); every value is
read from Redis, so any frontend answers the same. Pagination follows Buildbarn:
`start_after` is exclusive, `pagination_info` = (index of the first entry, total).

A sharded platform queue (`--queue-shards`, keys.py "Shards") shows as the one queue
bb_scheduler would show: every read covers all its shards, counts are summed, lists are
merged in the order one domain lists them, and an operation or worker of any shard is
found. Only shard 0 has a registry entry (with `"shards": K`); `Domain.parts` is the
list of its shards.
"""

from __future__ import annotations

import bisect
import heapq
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import any_pb2

from redbarn.errors import InvalidArgument, NotFound
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import codec, keys
from redbarn.queue.config import SchedulerConfig

HI = "\xff"
# Fields one HSCAN call asks for: bounds the time any one admin read holds Redis.
SCAN_COUNT = 1000


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class Domain:
    """A platform queue as the registry lists it (`shards` > 1: shard 0 of a sharded
    queue), or one shard of it (`parts`)."""

    id: str
    prefix: str
    platform_json: str
    shards: int = 1

    @property
    def parts(self) -> list[Domain]:
        """The domain of every shard, shard 0 (this queue's own id) first; [self] when
        the queue is not sharded."""
        if self.shards <= 1:
            return [self]
        return [
            Domain(d, self.prefix, self.platform_json)
            for d in keys.shard_domains(self.id, self.shards)
        ]

    @property
    def platform(self) -> re_pb2.Platform:
        return codec.platform_from_json(self.platform_json)

    def sc_name(self, size_class: int) -> bq_pb2.SizeClassQueueName:
        return bq_pb2.SizeClassQueueName(
            platform_queue_name=bq_pb2.PlatformQueueName(
                instance_name_prefix=self.prefix, platform=self.platform
            ),
            size_class=size_class,
        )


_ts = codec.ms_timestamp


BACKGROUND = "b"  # the background learning runs' invocation (redbarn.queue.sizeclass)


def invocation_id(kind: str, value: str) -> any_pb2.Any:
    """An invocation id as BuildQueueState names it: Any(RequestMetadata) with the one
    field of its level, or Any(BackgroundLearning) for background learning runs."""
    if kind == BACKGROUND:
        bg = any_pb2.Any()
        bg.Pack(bq_pb2.BackgroundLearning())
        return bg
    md = re_pb2.RequestMetadata()
    if kind == codec.CORRELATED:
        md.correlated_invocations_id = value
    else:
        md.tool_invocation_id = value
    out = any_pb2.Any()
    out.Pack(md)
    return out


def _id_value(a: any_pb2.Any) -> tuple[str, str]:
    if a.TypeName() == bq_pb2.BackgroundLearning.DESCRIPTOR.full_name:
        return BACKGROUND, ""
    md = re_pb2.RequestMetadata()
    if not a.Unpack(md):
        raise NotFound("Invocation not found")
    if md.correlated_invocations_id and not md.tool_invocation_id:
        return codec.CORRELATED, md.correlated_invocations_id
    return codec.TOOL, md.tool_invocation_id


def _under(path: str, node: str) -> bool:
    """Whether invocation `path` is `node` or below it."""
    return not node or path == node or path.startswith(node + "/")


def _children(
    path: str, nodes: dict[str, tuple[int, int]], workers: list[tuple[str, Any, bool]], sc: str
) -> list[str]:
    """The child invocations of `path`: live nodes, and invocations that only idle workers
    still hang on (Buildbarn keeps an invocation while idle workers are attached to it)."""
    out = {p for p in nodes if p and p.rsplit("/", 1)[0] == path}
    depth = path.count("/") + 1
    for wk, rec, _ in workers:
        li = rec.last_invocation
        if wk.startswith(sc + " ") and not rec.tid and li != path and _under(li, path):
            out.add("/".join(li.split("/")[: depth + 1]))
    return sorted(out)


class AdminReads:
    """The read side of BuildQueueState over one Redis."""

    def __init__(self, redis: Any, config: SchedulerConfig) -> None:
        self.redis = redis
        self.config = config

    async def domains(self) -> list[Domain]:
        raw = await self.redis.hgetall(keys.PLATFORMS)
        out = []
        for k, v in raw.items():
            d = json.loads(v)
            out.append(
                Domain(_s(k), d["instance_name_prefix"], d["platform"], int(d.get("shards", 1)))
            )
        out.sort(key=lambda d: (d.prefix, d.platform_json))
        return out

    async def _domain_for(
        self, name: bq_pb2.SizeClassQueueName, *, what: str = "size class queue"
    ) -> Domain:
        if not name.HasField("platform_queue_name"):
            raise InvalidArgument("No platform queue name provided")
        pq = name.platform_queue_name
        did = keys.domain_id(pq.instance_name_prefix, codec.platform_json(pq.platform))
        for d in await self.domains():
            if d.id != did:
                continue
            for part in d.parts:  # a worker may have added a class in its shard only
                classes = _s(
                    await self.redis.hget(keys.domain_key(part.id, "meta"), "scs") or b""
                ).split()
                if keys.size_class_field(name.size_class) in classes:
                    return d
        raise NotFound("Size class queue not found")

    # Operations -----------------------------------------------------------------

    async def _operation_state(
        self, domain: Domain, opid: str, op_raw: bytes
    ) -> bq_pb2.OperationState | None:
        op = codec.OpRecord.parse(op_raw)
        tasks = keys.domain_key(domain.id, "tasks")
        task_raw, ex_raw, res_raw = await self.redis.hmget(
            tasks, op.tid, op.tid + "|a", op.tid + "|r"
        )
        if task_raw is None:
            return None
        t = codec.TaskRecord.parse(task_raw)
        gc = await self.redis.zscore(keys.domain_key(domain.id, "opgc"), opid)
        st = bq_pb2.OperationState(
            name=keys.operation_name(domain.id, opid),
            invocation_name=bq_pb2.InvocationName(
                size_class_queue_name=domain.sc_name(t.size_class),
                ids=[invocation_id(k, v) for k, v in codec.parse_invocation_path(op.path)],
            ),
            queued_timestamp=_ts(t.queued_ms),
            action_digest=codec.digest_from_field(t.digest),
            priority=op.priority,
            digest_function=cast(Any, t.digest_function),
            target_id=op.target_id,
        )
        if gc is not None and not self._waited_on(float(gc)):
            st.timeout.CopyFrom(_ts(int(gc)))
        if ex_raw is not None:
            ex = rw_pb2.DesiredState.Executing.FromString(ex_raw)
            st.instance_name_suffix = ex.instance_name_suffix
            st.expected_duration.CopyFrom(ex.action.timeout)
        if t.stage == "q":
            st.queued.SetInParent()
        elif t.stage == "x":
            st.executing.SetInParent()
        else:
            st.completed.CopyFrom(codec.decode_result(res_raw or b""))
        return st

    def _waited_on(self, gc_ms: float) -> bool:
        """Whether a client still waits on an operation whose removal is due at `gc_ms`.

        Buildbarn leaves OperationState.timeout unset while any client waits and sets it
        to the removal time once the last one has gone. A waiter (on any frontend) renews
        the removal time to now + operation_retention every touch_interval, so the
        operation is waited on while that time is within 1.5 touch intervals of a fresh
        renewal; a client that has just left still shows as waiting for at most that long.
        """
        c = self.config
        fresh = time.time() * 1000 + c.operation_retention * 1000
        return gc_ms > fresh - 1.5 * c.touch_interval * 1000

    async def get_operation(self, name: str) -> bq_pb2.GetOperationResponse:
        parsed = keys.parse_operation_name(name)
        if parsed is not None:
            did, opid = parsed
            # The name's domain is a registered queue or one of its shards.
            for d in [p for q in await self.domains() for p in q.parts]:
                if d.id == did:
                    raw = await self.redis.hget(keys.domain_key(did, "ops"), opid)
                    st = raw is not None and await self._operation_state(d, opid, raw)
                    if st:
                        st.ClearField("name")
                        return bq_pb2.GetOperationResponse(operation=st)
        raise NotFound(f'Operation "{name}" not found')

    async def _scan(self, key: str, match: str | None = None) -> dict[str, bytes]:
        """Every field of hash `key` (matching `match`), read SCAN_COUNT fields per call, so
        no single command holds Redis for longer than one batch takes."""
        out: dict[str, bytes] = {}
        async for field_, value in self.redis.hscan_iter(key, match=match, count=SCAN_COUNT):
            out[_s(field_)] = value
        return out

    async def list_operations(
        self, request: bq_pb2.ListOperationsRequest
    ) -> bq_pb2.ListOperationsResponse:
        """Operations sorted by name, `start_after` exclusive, optionally filtered by an
        invocation id (anywhere on the operation's invocation path) or a stage.

        Cost without a filter: O(platform queues + page). Each platform queue keeps its
        operation ids in a sorted set of equal scores (`opnames`), so a page is
        ZRANGEBYLEX from `start_after`, and its position ZCARD/ZLEXCOUNT. With a filter,
        the operation records of every platform queue are enumerated with HSCAN
        (SCAN_COUNT per call; the stage filter scans the task records too); the full
        state (task record, timeout) is read only for the operations of the page."""
        if request.HasField("filter_invocation_id") or request.filter_stage:
            return await self._list_filtered_operations(request)
        return await self._list_operations_by_name(request)

    async def _list_operations_by_name(
        self, request: bq_pb2.ListOperationsRequest
    ) -> bq_pb2.ListOperationsResponse:
        after = request.start_after.operation_name if request.HasField("start_after") else None
        # A name is "<domain id>.<operation id>": compare a domain's "<id>." with the
        # first part of `after`, then operation ids within the domain it names. Every
        # shard is a domain of its own here: its operations are named after it.
        domains = sorted((p for q in await self.domains() for p in q.parts), key=lambda d: d.id)
        start = total = 0
        page: list[bq_pb2.OperationState] = []
        for d in domains:
            names = keys.domain_key(d.id, "opnames")
            count = int(await self.redis.zcard(names))
            total += count
            low = "-"
            if after is not None:
                head, rest = d.id + ".", after[len(d.id) + 1 :]
                if head < after[: len(head)]:
                    start += count  # the whole domain sorts before `after`
                    continue
                if head == after[: len(head)]:
                    start += int(await self.redis.zlexcount(names, "-", f"[{rest}"))
                    low = f"({rest}"
            while len(page) < request.page_size:
                want = request.page_size - len(page)
                opids = [_s(o) for o in await self.redis.zrangebylex(names, low, "+", 0, want)]
                if not opids:
                    break
                raws = await self.redis.hmget(keys.domain_key(d.id, "ops"), opids)
                for opid, raw in zip(opids, raws, strict=True):
                    st = None if raw is None else await self._operation_state(d, opid, raw)
                    if st is not None:  # None: it went between the two reads
                        page.append(st)
                low = f"({opids[-1]}"
        return bq_pb2.ListOperationsResponse(
            operations=page,
            pagination_info=bq_pb2.PaginationInfo(start_index=start, total_entries=total),
        )

    async def _list_filtered_operations(
        self, request: bq_pb2.ListOperationsRequest
    ) -> bq_pb2.ListOperationsResponse:
        want_id = (
            _id_value(request.filter_invocation_id)
            if request.HasField("filter_invocation_id")
            else None
        )
        want_stage = {
            re_pb2.ExecutionStage.QUEUED: "q",
            re_pb2.ExecutionStage.EXECUTING: "x",
            re_pb2.ExecutionStage.COMPLETED: "d",
        }.get(request.filter_stage)
        entries: list[tuple[str, Domain, str, bytes]] = []
        for d in [p for q in await self.domains() for p in q.parts]:
            ops = await self._scan(keys.domain_key(d.id, "ops"))
            stages = await self._task_stages(d) if want_stage else {}
            for opid, raw in ops.items():
                if want_id is not None or want_stage:
                    op = codec.OpRecord.parse(raw)
                    if want_id is not None and want_id not in codec.parse_invocation_path(op.path):
                        continue
                    if want_stage and stages.get(op.tid) != want_stage:
                        continue
                entries.append((keys.operation_name(d.id, opid), d, opid, raw))
        entries.sort(key=lambda e: e[0])
        start = 0
        if request.HasField("start_after"):
            names = [e[0] for e in entries]
            start = bisect.bisect_right(names, request.start_after.operation_name)
        page: list[bq_pb2.OperationState] = []
        for _, d, opid, raw in entries[start:]:
            if len(page) >= request.page_size:
                break
            st = await self._operation_state(d, opid, raw)
            if st is not None:  # its task just went with its last operation
                page.append(st)
        return bq_pb2.ListOperationsResponse(
            operations=page,
            pagination_info=bq_pb2.PaginationInfo(start_index=start, total_entries=len(entries)),
        )

    async def _task_stages(self, domain: Domain) -> dict[str, str]:
        """tid -> stage ("q", "x", "d") of a domain's tasks; the "<tid>|a", "|s" and "|r"
        fields (payloads) do not match the pattern and are never sent."""
        records = await self._scan(keys.domain_key(domain.id, "tasks"), match="*[0-9]")
        stages = {}
        for tid, raw in records.items():
            stage = _s(raw).split(codec.SEP, 1)[0]
            stages[tid] = stage if stage in ("q", "x") else "d"
        return stages

    # Invocations ----------------------------------------------------------------

    async def _nodes(self, shards: list[Domain], sc: str) -> dict[str, tuple[int, int]]:
        """path -> (executing, last_started_ms) of the size class's live nodes; a node
        live in several shards is one, its executing counts summed."""
        out: dict[str, tuple[int, int]] = {}
        for shard in shards:
            inv = await self.redis.hgetall(keys.domain_key(shard.id, "inv"))
            for field, v in inv.items():
                f = _s(field)
                if f.startswith(sc + " "):
                    parts = _s(v).split(codec.SEP)
                    path, node = f[len(sc) + 1 :], (int(parts[0]), int(parts[1]))
                    seen = out.get(path)
                    if seen is not None:
                        node = (seen[0] + node[0], max(seen[1], node[1]))
                    out[path] = node
        return out

    async def _queued_count(self, shards: list[Domain], low: str, high: str) -> int:
        """Queued operations of every shard between lex bounds `low` and `high`."""
        n = 0
        for shard in shards:
            n += int(await self.redis.zlexcount(keys.domain_key(shard.id, "queued"), low, high))
        return n

    async def _invocation_state(
        self,
        shards: list[Domain],
        sc: str,
        path: str,
        nodes: dict[str, tuple[int, int]],
        workers: list[tuple[str, Any, bool]],
    ) -> bq_pb2.InvocationState:
        """One invocation over every shard of its queue (`nodes` and `workers` of them
        all): operation and worker counts summed, each child counted once."""
        direct = await self._queued_count(shards, f"[{sc} {path}\x1f", f"[{sc} {path}\x1f{HI}")
        below = await self._queued_count(shards, f"[{sc} {path}/", f"[{sc} {path}/{HI}")
        children = _children(path, nodes, workers, sc)
        active = queued_children = 0
        for c in children:
            n_q = await self._queued_count(shards, f"[{sc} {c}\x1f", f"[{sc} {c}/{HI}")
            queued_children += n_q > 0
            active += n_q > 0 or nodes.get(c, (0, 0))[0] > 0
        # Idle workers stay attached to the invocation of the task they last completed
        # (R35): counted on it and on every invocation above it, as Buildbarn does.
        idle = [
            w
            for w in workers
            if w[0].startswith(sc + " ") and not w[1].tid and _under(w[1].last_invocation, path)
        ]
        return bq_pb2.InvocationState(
            queued_operations_count=bq_pb2.InvocationState.InvocationObjectCount(
                direct=direct, indirect=direct + below
            ),
            # The root keeps no record: its count is its children's.
            executing_workers_count=(
                nodes.get(path, (0, 0))[0]
                if path
                else sum(nodes.get(c, (0, 0))[0] for c in children)
            ),
            idle_workers_count=len(idle),
            idle_synchronizing_workers_count=sum(1 for w in idle if w[2]),
            children_count=len(children),
            active_children_count=active,
            queued_children_count=queued_children,
        )

    async def _worker_records(self, shards: list[Domain]) -> list[tuple[Domain, str, Any, bool]]:
        """(shard, worker key, record, parked) of every worker of the queue. A worker has a
        record in one shard at a time, but while it moves to work in another shard it is
        briefly in two: it is listed once, by the record that has its task."""
        out: dict[str, tuple[Domain, str, Any, bool]] = {}
        for shard in shards:
            raw = await self.redis.hgetall(keys.domain_key(shard.id, "workers"))
            for k, v in raw.items():
                wk, rec = _s(k), codec.WorkerRecord.parse(v)
                seen = out.get(wk)
                if seen is None or (rec.tid and not seen[2].tid):
                    out[wk] = (shard, wk, rec, bool(rec.holder))
        return list(out.values())

    async def _workers(self, shards: list[Domain]) -> list[tuple[str, Any, bool]]:
        return [(wk, rec, parked) for _, wk, rec, parked in await self._worker_records(shards)]

    async def list_platform_queues(self) -> bq_pb2.ListPlatformQueuesResponse:
        resp = bq_pb2.ListPlatformQueuesResponse()
        for d in await self.domains():
            shards = d.parts
            metas = []
            for shard in shards:
                raw = await self.redis.hgetall(keys.domain_key(shard.id, "meta"))
                metas.append({_s(k): _s(v) for k, v in raw.items()})
            if len(metas) == 1:
                classes = metas[0].get("scs", "").split()
            else:  # a worker may have added a size class in its shard only
                classes = sorted({c for m in metas for c in m.get("scs", "").split()})
            if not classes:
                continue
            workers = await self._workers(shards)
            # Drains are written to every shard alike (Control.set_drain): shard 0's
            # are the queue's, counted once.
            drains = [_s(k) for k in await self.redis.hkeys(keys.domain_key(d.id, "drains"))]
            pq = resp.platform_queues.add()
            pq.name.instance_name_prefix = d.prefix
            pq.name.platform.CopyFrom(d.platform)
            for sc in classes:
                nodes = await self._nodes(shards, sc)
                count = sum(int(m.get("w" + sc, "0")) for m in metas)
                scq = pq.size_class_queues.add(
                    size_class=int(sc),
                    workers_count=count,
                    drains_count=sum(1 for k in drains if k.startswith(sc + " ")),
                    root_invocation=await self._invocation_state(shards, sc, "", nodes, workers),
                )
                # A shard whose last worker left (or went to work in another shard) has
                # a removal time; the queue is due for removal, at the earliest shard's
                # time, only while no shard has a worker of the class.
                due = [int(m["z" + sc]) for m in metas if "z" + sc in m]
                if due and (len(metas) == 1 or count == 0):
                    scq.timeout.CopyFrom(_ts(min(due)))
        return resp

    def _path(self, ids: Sequence[any_pb2.Any]) -> str:
        elements = []
        for depth, a in enumerate(ids):
            kind, value = _id_value(a)
            levels = self.config.invocation_keys
            if depth < len(levels) and kind != BACKGROUND:
                kind = levels[depth]
            elements.append((kind, value))
        return codec.invocation_path(elements)

    async def _invocation(
        self, request: bq_pb2.ListInvocationChildrenRequest | bq_pb2.ListQueuedOperationsRequest
    ) -> tuple[Domain, str, bq_pb2.InvocationName]:
        """The domain, size class field and name of a request's invocation_name."""
        if not request.HasField("invocation_name"):
            raise InvalidArgument("No invocation name provided")
        name = request.invocation_name
        d = await self._domain_for(name.size_class_queue_name)
        return d, keys.size_class_field(name.size_class_queue_name.size_class), name

    async def list_invocation_children(
        self, request: bq_pb2.ListInvocationChildrenRequest
    ) -> bq_pb2.ListInvocationChildrenResponse:
        d, sc, name = await self._invocation(request)
        shards = d.parts
        path = self._path(name.ids)
        nodes = await self._nodes(shards, sc)
        workers = await self._workers(shards)
        if (
            path
            and path not in nodes
            and not any(
                _under(w[1].last_invocation, path) for w in workers if w[0].startswith(sc + " ")
            )
        ):
            raise NotFound("Invocation not found")
        F = bq_pb2.ListInvocationChildrenRequest.Filter
        children = []
        if request.filter == F.QUEUED:
            pre = f"{sc} {path}\x1f"
            picks = []
            for shard in shards:
                pick = keys.domain_key(shard.id, "pick")
                picks += [
                    _s(m)[len(pre) :]
                    for m in await self.redis.zrangebylex(pick, f"[{pre}", f"[{pre}{HI}")
                ]
            # Best first (the pick members' order); a child queued in several shards
            # once, at its best place in any of them.
            children = list(dict.fromkeys(m[30:] for m in sorted(picks)))
        else:
            for c in _children(path, nodes, workers, sc):
                st = await self._invocation_state(shards, sc, c, nodes, workers)
                if request.filter == F.ACTIVE and not (
                    st.queued_operations_count.indirect or st.executing_workers_count
                ):
                    continue
                children.append(c)
        resp = bq_pb2.ListInvocationChildrenResponse()
        for c in children:
            kind, value = codec.parse_invocation_path(c)[-1]
            resp.children.add(
                id=invocation_id(kind, value),
                state=await self._invocation_state(shards, sc, c, nodes, workers),
            )
        return resp

    async def list_queued_operations(
        self, request: bq_pb2.ListQueuedOperationsRequest
    ) -> bq_pb2.ListQueuedOperationsResponse:
        d, sc, name = await self._invocation(request)
        pre = f"{sc} {self._path(name.ids)}\x1f"
        # Each shard's list is in scheduling order (priority, then FIFO); the shards'
        # lists merge by (priority, queued time), a tie in the earlier shard's favour.
        per_shard = [await self._queued_entries(shard, pre) for shard in d.parts]
        listed = list(heapq.merge(*per_shard, key=lambda e: e[3]))
        start = 0
        if request.HasField("start_after"):
            sa = request.start_after
            key = (
                sa.priority,
                sa.queued_timestamp.seconds * 1000 + sa.queued_timestamp.nanos // 1_000_000,
            )
            start = next((i for i, e in enumerate(listed) if e[3] > key), len(listed))
        states = []
        for shard, opid, raw, _ in listed[start : start + request.page_size]:
            st = await self._operation_state(shard, opid, raw)
            if st:
                st.ClearField("invocation_name")
                states.append(st)
        return bq_pb2.ListQueuedOperationsResponse(
            queued_operations=states,
            pagination_info=bq_pb2.PaginationInfo(start_index=start, total_entries=len(listed)),
        )

    async def _queued_entries(
        self, shard: Domain, pre: str
    ) -> list[tuple[Domain, str, bytes, tuple[int, int]]]:
        """(shard, opid, operation record, (priority, queued ms)) of the operations queued
        in `shard` under member prefix `pre`, in scheduling order. Paged before the full
        state is read: one HMGET of the operation records and one of their task records
        give each entry's sort key; only the page's operations are read whole."""
        members = [
            _s(m)
            for m in await self.redis.zrangebylex(
                keys.domain_key(shard.id, "queued"), f"[{pre}", f"[{pre}{HI}"
            )
        ]
        ops = keys.domain_key(shard.id, "ops")
        opids = [m.rsplit(" ", 1)[1] for m in members]
        op_raws = await self.redis.hmget(ops, opids) if opids else []
        entries = [
            (opid, raw, codec.OpRecord.parse(raw))
            for opid, raw in zip(opids, op_raws, strict=True)
            if raw is not None
        ]
        task_raws = (
            await self.redis.hmget(keys.domain_key(shard.id, "tasks"), [e[2].tid for e in entries])
            if entries
            else []
        )
        return [
            (shard, opid, raw, (op.priority, codec.TaskRecord.parse(task).queued_ms))
            for (opid, raw, op), task in zip(entries, task_raws, strict=True)
            if task is not None
        ]

    async def list_workers(self, request: bq_pb2.ListWorkersRequest) -> bq_pb2.ListWorkersResponse:
        which = request.filter.WhichOneof("type")
        if which is None:
            raise InvalidArgument("No filter provided")
        if which == "all":
            scq = request.filter.all
            path = None
        else:
            inv = getattr(request.filter, which)
            scq = inv.size_class_queue_name
            path = self._path(inv.ids)
        d = await self._domain_for(scq)
        sc = keys.size_class_field(scq.size_class)
        drains = await self._drain_patterns(d, sc)
        entries = []
        # Every shard's workers; each one's task, operation and lease are in its shard.
        for shard, wk, rec, parked in await self._worker_records(d.parts):
            if not wk.startswith(sc + " "):
                continue
            op_state = None
            if rec.tid:
                raw = await self.redis.hget(keys.domain_key(shard.id, "tasks"), rec.tid)
                t = codec.TaskRecord.parse(raw) if raw is not None else None
                if (
                    t is not None
                    and t.stage == "x"
                    and t.worker == wk
                    and t.epoch == rec.epoch
                    and t.ops
                ):
                    opid = sorted(t.ops)[0]
                    op_raw = await self.redis.hget(keys.domain_key(shard.id, "ops"), opid)
                    if op_raw is not None:
                        op_state = await self._operation_state(shard, opid, op_raw)
                        if which == "executing":
                            op_path = codec.OpRecord.parse(op_raw).path
                            if path and not (op_path == path or op_path.startswith(path + "/")):
                                continue
            if which == "executing" and op_state is None:
                continue
            if which == "idle_synchronizing" and (
                op_state is not None or not parked or rec.last_invocation != path
            ):
                continue
            worker_id = json.loads(keys.worker_json_of(wk))
            # Buildbarn: drained when terminating, or when any drain's pattern matches
            # (every label of the pattern has the worker's value).
            drained = rec.terminating or any(
                all(worker_id.get(k) == v for k, v in pattern.items()) for pattern in drains
            )
            ws = bq_pb2.WorkerState(id=worker_id, drained=drained)
            if not parked:
                score = await self.redis.zscore(keys.domain_key(shard.id, "leases"), wk)
                if score is not None:
                    ws.timeout.CopyFrom(_ts(int(score)))
            if op_state is not None:
                op_state.ClearField("invocation_name")
                op_state.ClearField("queued")
                op_state.ClearField("executing")
                ws.current_operation.CopyFrom(op_state)
            entries.append((keys.worker_json_of(wk), ws))
        entries.sort(key=lambda e: e[0])
        start = 0
        if request.HasField("start_after"):
            after = codec.worker_json(request.start_after.worker_id)
            start = next((i for i, e in enumerate(entries) if e[0] > after), len(entries))
        page = [ws for _, ws in entries[start : start + request.page_size]]
        return bq_pb2.ListWorkersResponse(
            workers=page,
            pagination_info=bq_pb2.PaginationInfo(start_index=start, total_entries=len(entries)),
        )

    async def _drain_patterns(self, domain: Domain, sc: str) -> list[dict[str, str]]:
        """The worker id patterns of the size class's drains. Control.set_drain writes a
        drain to every shard of a sharded queue alike, so shard 0's (`domain`'s own) are
        all of them."""
        pre = sc + " "
        fields = await self.redis.hkeys(keys.domain_key(domain.id, "drains"))
        return [json.loads(_s(f)[len(pre) :]) for f in fields if _s(f).startswith(pre)]

    async def list_drains(self, request: bq_pb2.ListDrainsRequest) -> bq_pb2.ListDrainsResponse:
        # Shard 0 only: every shard of a sharded queue holds the same drains
        # (Control.set_drain writes each one to all of them).
        d = await self._domain_for(request.size_class_queue_name)
        pre = keys.size_class_field(request.size_class_queue_name.size_class) + " "
        raw = await self.redis.hgetall(keys.domain_key(d.id, "drains"))
        entries = sorted(
            (_s(k)[len(pre) :], int(_s(v).split(codec.SEP)[0]))
            for k, v in raw.items()
            if _s(k).startswith(pre)
        )
        return bq_pb2.ListDrainsResponse(
            drains=[
                bq_pb2.DrainState(worker_id_pattern=json.loads(p), created_timestamp=_ts(c))
                for p, c in entries
            ]
        )
