"""The one boundary between Lua replies and Python: each script's reply, and each hint a
script publishes, becomes a named, typed record here. Nothing else indexes a reply.

Each decoder follows the `Returns:` line of its script's header (src/redbarn/lua/); a
change to a reply's layout is a change to that header and to one decoder below, and
`tests/queue/test_scripts.py` checks that every script has a decoder. Replies are
positional lists because a Lua table is the cheapest thing a script can return (fakeredis
has no cmsgpack, and cjson would cost a string build per call on the hot path); this
module gives the positions their names once.

Values arrive as bytes (or str from a client that decodes, or int); `_s` takes either.
Worker keys in replies are "<size class, 10 digits> <worker-id JSON>": records carry
the JSON only (`keys.worker_json_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys

Stage = re_pb2.ExecutionStage
# Task stages as one letter in Redis (task record field `st`).
STAGES = {"q": Stage.QUEUED, "x": Stage.EXECUTING, "d": Stage.COMPLETED}
_SEP = codec.SEP.encode()


def _s(v: bytes | str | int) -> str:
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def _worker(wk: bytes | str) -> str:
    text = _s(wk)
    return keys.worker_json_of(text) if text else ""


def local_hints(reply: Sequence[Any]) -> tuple[list[Any], list[bytes]]:
    """Every reply: the script's own reply, and the hints it made for the calling
    frontend, which `scripts.script_source` appends as one last, nested list."""
    out = list(reply)
    if out and isinstance(out[-1], list):
        return out[:-1], [bytes(m) for m in out[-1]]
    return out, []


# enqueue_operation.lua ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueued:
    """{'op', opid, stage, queued_ms, sc, prio+seq, worker, now_ms, gc_deadline_ms, now_us,
    worker_stages}: the operation created (or joined) and its first state."""

    opid: str
    stage: int  # ExecutionStage
    queued_ms: int
    size_class: int
    priority: int
    worker: str  # worker-id JSON when handed straight to a parked worker, else ""
    now_ms: int
    gc_deadline_ms: int
    now_us: int
    worker_stages: str
    # How in-flight dedup went: "" a new task, "s" the same invocation's operation was
    # returned, "o" a new operation joined another invocation's task.
    dedup: str = ""


@dataclass(frozen=True, slots=True)
class EnqueueRefused:
    """{'nodomain'}: no size class queue exists; {'full'}: the platform queue is full."""

    reason: str  # "nodomain" | "full"


@dataclass(frozen=True, slots=True)
class BlobsMissing:
    """{'missing', i...}: required blobs are gone; `positions` are 0-based."""

    positions: tuple[int, ...]


def enqueue_operation(reply: Sequence[Any]) -> Enqueued | EnqueueRefused | BlobsMissing:
    kind = _s(reply[0])
    if kind == "missing":
        return BlobsMissing(tuple(int(_s(i)) - 1 for i in reply[1:]))
    if kind != "op":
        return EnqueueRefused(kind)
    _, opid, stage, queued, sc, qm, wk, now, gc, now_us, stages, *rest = reply
    return Enqueued(
        opid=_s(opid),
        stage=STAGES[_s(stage)],
        queued_ms=int(queued),
        size_class=int(sc),
        priority=codec.priority_from_field(_s(qm)),
        worker=_worker(wk),
        now_ms=int(now),
        gc_deadline_ms=int(gc),
        now_us=int(now_us),
        worker_stages=_s(stages),
        dedup=_s(rest[0]) if rest else "",
    )


# touch_operation.lua --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperationRead:
    """{'op', stage, queued_ms, digest, digest_fn, result, sc, qm, path, tid, worker, now_ms,
    gc_deadline_ms, worker_stages, now_us}; {'none'} decodes to None."""

    stage: int  # ExecutionStage
    queued_ms: int
    action_digest: re_pb2.Digest
    digest_function: int
    response: re_pb2.ExecuteResponse | None  # when COMPLETED
    size_class: int
    priority: int
    invocation_path: str
    task_id: str
    worker: str
    now_ms: int
    gc_deadline_ms: int | None
    worker_stages: str
    now_us: int


def touch_operation(reply: Sequence[Any]) -> OperationRead | None:
    if _s(reply[0]) != "op":
        return None
    _, stage, queued, dg, fn, result, sc, qm, path, tid, wk, now, gc, stages, now_us = reply
    st = STAGES[_s(stage)]
    return OperationRead(
        stage=st,
        queued_ms=int(queued),
        action_digest=codec.digest_from_field(_s(dg)),
        digest_function=int(_s(fn) or 0),
        response=codec.decode_result(bytes(result)) if st == Stage.COMPLETED else None,
        size_class=int(sc),
        priority=codec.priority_from_field(_s(qm)),
        invocation_path=_s(path),
        task_id=_s(tid),
        worker=_worker(wk),
        now_ms=int(now),
        gc_deadline_ms=int(float(_s(gc))) if gc else None,
        worker_stages=_s(stages),
        now_us=int(now_us),
    )


# Operation hints (L.notify_task) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperationHint:
    """The payload of an operation hint, "<now_us>\\x1f<stage>\\x1f<worker stages>\\x1f
    <worker key>\\x1f<result>": the operation's new state as of `now_us`."""

    now_us: int
    stage: int
    worker_stages: str
    worker: str
    response: re_pb2.ExecuteResponse | None


def operation_hint(payload: bytes) -> OperationHint | None:
    """None for a malformed payload (hints are only hints: the waiter then reads)."""
    parts = payload.split(_SEP, 4)
    if len(parts) != 5 or not parts[0].isdigit():
        return None
    stage = STAGES.get(parts[1].decode())
    if stage is None:
        return None
    return OperationHint(
        now_us=int(parts[0]),
        stage=stage,
        worker_stages=parts[2].decode(),
        worker=_worker(parts[3]),
        response=codec.decode_result(parts[4]) if stage == Stage.COMPLETED else None,
    )


# synchronize_worker.lua, unpark_worker.lua, worker hints (L.offer) ----------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """{'x', tid, epoch, queued_ms, next_ms, Executing bytes}: execute this task."""

    task_id: str
    epoch: int
    queued_ms: int
    next_ms: int
    executing: bytes  # DesiredState.Executing, as the enqueue stored it
    report: str = ""  # synchronize only: what became of a completion report (see Report)
    lost: str = ""  # synchronize only: tasks the worker lost by coming back without them


@dataclass(frozen=True, slots=True)
class Continue:
    """{'c', next_ms}: a progress report was recorded; keep executing."""

    next_ms: int
    report: str = ""
    lost: str = ""


@dataclass(frozen=True, slots=True)
class Idle:
    """{'i', next_ms}: nothing to do (or prefer_being_idle); stay idle."""

    next_ms: int
    report: str = ""
    lost: str = ""


@dataclass(frozen=True, slots=True)
class Parked:
    """{'p', park_deadline_ms, now_us}: nothing to do yet; the call holds (parks) until a
    worker hint newer than `now_us` or the deadline."""

    deadline_ms: int
    now_us: int
    report: str = ""
    lost: str = ""


@dataclass(frozen=True, slots=True)
class Busy:
    """{'b', holder_fid}: a Synchronize of the same worker is already in progress, held
    by frontend `holder`."""

    holder: str


@dataclass(frozen=True, slots=True)
class Refused:
    """{'e', message}: the worker may not join its platform queue (a size class its
    predeclared queue cannot have); the caller answers INVALID_ARGUMENT with `message`."""

    message: str


WorkerReply = Assignment | Continue | Idle
SynchronizeReply = Assignment | Continue | Idle | Parked | Busy | Refused


def _assignment(
    tid: Any,
    epoch: Any,
    queued: Any,
    nxt: Any,
    executing: Any,
    report: str = "",
    lost: str = "",
) -> Assignment:
    return Assignment(_s(tid), int(epoch), int(queued), int(nxt), bytes(executing), report, lost)


# What became of a completion report (`report` of a synchronize reply).
REPORT_DONE = "d"  # the task completed with the reported result
REPORT_FALLBACK = "f"  # failed on a smaller size class: requeued on the largest
REPORT_LATE = "l"  # the worker no longer held the assignment: discarded (fenced)


def _tail(reply: Sequence[Any], at: int) -> tuple[str, str]:
    """The (report, lost) pair synchronize_worker.lua appends at position `at`; unpark
    replies have none."""
    if len(reply) < at + 2:
        return "", ""
    return _s(reply[at]), _s(reply[at + 1])


def synchronize_worker(reply: Sequence[Any]) -> SynchronizeReply:
    kind = _s(reply[0])
    if kind == "x":
        report, lost = _tail(reply, 6)
        tid, epoch, queued, nxt, executing = reply[1:6]
        return _assignment(tid, epoch, queued, nxt, executing, report, lost)
    if kind == "c":
        return Continue(int(reply[1]), *_tail(reply, 2))
    if kind == "i":
        return Idle(int(reply[1]), *_tail(reply, 2))
    if kind == "p":
        return Parked(int(reply[1]), int(reply[2]), *_tail(reply, 3))
    if kind == "b":
        return Busy(_s(reply[1]) if len(reply) > 1 else "")
    if kind == "e":
        return Refused(_s(reply[1]))
    raise ValueError(f"synchronize_worker replied {kind!r}")


def unpark_worker(reply: Sequence[Any]) -> Assignment | Idle:
    decoded = synchronize_worker(reply)
    if not isinstance(decoded, Assignment | Idle):
        raise ValueError(f"unpark_worker replied {decoded!r}")
    return decoded


def worker_hint(payload: bytes | None, parked_us: int) -> Assignment | None:
    """The assignment a worker hint carries ("<now_us>\\x1f<tid>\\x1f<epoch>\\x1f<queued_ms>
    \\x1f<next_ms>\\x1f<Executing bytes>"; L.offer has already taken the worker out of the
    parked state), or None: no payload, or one from before this park (a hint that
    outlived an earlier call)."""
    if not payload:
        return None
    parts = payload.split(_SEP, 5)
    if len(parts) != 6 or not parts[0].isdigit() or int(parts[0]) <= parked_us:
        return None
    tid, epoch, queued, nxt, executing = parts[1:]
    return _assignment(tid, epoch, queued, nxt, executing)


# Housekeeping and admin transitions -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reaped:
    """{workers_expired, operations_detached, queued_failed, more, gone, lost}."""

    workers: int
    operations: int
    queued: int
    more: bool  # a batch was full: call again
    gone: bool  # the domain had no size class queues left: it was removed
    # Tasks of lost workers: "r<sc>" requeued, "f<sc>" failed, "q<sc>" failed while queued.
    lost: tuple[str, ...] = ()


def reap_domain(reply: Sequence[Any]) -> Reaped:
    nw, no, nq, more, gone = (int(v) for v in reply[:5])
    lost = tuple(_s(reply[5]).split()) if len(reply) > 5 else ()
    return Reaped(nw, no, nq, bool(more), bool(gone), lost)


def lost_tasks(lost: str | Sequence[str]) -> list[tuple[str, int]]:
    """("r"|"f"|"q", size class) of each entry of a `lost` list (see L.lose)."""
    words = lost.split() if isinstance(lost, str) else lost
    return [(w[0], int(w[1:])) for w in words if len(w) > 1]


def wake_parked(reply: Sequence[Any]) -> str | None:
    """The worker key wake_parked.lua woke, or None when none was parked there."""
    return _s(reply[1]) if _s(reply[0]) == "w" else None


def found(reply: Sequence[Any]) -> bool:
    """{'ok'} | {'none'}: add_drain, remove_drain."""
    return _s(reply[0]) == "ok"


def killed(reply: Sequence[Any]) -> int | None:
    """kill_operation: {'ok', size class} -> the killed task's size class; {'done'} (it
    had completed already) -> -1; {'none'} (no such operation) -> None."""
    outcome = _s(reply[0])
    if outcome == "ok":
        return int(reply[1])
    return -1 if outcome == "done" else None


@dataclass(frozen=True, slots=True)
class QueuedKilled:
    """{'ok', killed, more} | {'none'} (no such queue) | {'busy'} (it has workers)."""

    outcome: str  # "ok" | "none" | "busy"
    killed: int = 0
    more: bool = False


def kill_queued(reply: Sequence[Any]) -> QueuedKilled:
    kind = _s(reply[0])
    if kind != "ok":
        return QueuedKilled(kind)
    return QueuedKilled(kind, int(reply[1]), bool(int(reply[2])))


@dataclass(frozen=True, slots=True)
class Terminated:
    """{matched, tid...}: how many workers matched, and the tasks they are executing."""

    matched: int
    executing: tuple[str, ...]


def terminate_workers(reply: Sequence[Any]) -> Terminated:
    return Terminated(int(reply[0]), tuple(_s(t) for t in reply[1:]))


# declare_queue.lua -----------------------------------------------------------------------


def declare_queue(reply: Sequence[Any]) -> int:
    """{'ok', added}: how many predeclared size classes did not exist before."""
    return int(_s(reply[1]))
