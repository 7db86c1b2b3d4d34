"""Small builders for scheduler tests: workers, actions, reports."""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf import duration_pb2

from redbarn.frontend.operation_queue import decode_report, encode_reply
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import PollingHints, Scheduler

SHA256 = re_pb2.DigestFunction.SHA256

FAST = SchedulerConfig(
    worker_timeout=0.3,
    idle_sync_timeout=0.2,
    busy_sync_interval=10.0,
    operation_retention=0.5,
    execution_update_interval=60.0,
    platform_queue_timeout=0.5,
    waiter_poll_interval=0.05,
    platform_cache_ttl=0.0,
    # One level (tool_invocation_id), so the tree tests read simply; the default's two
    # levels are tested on their own (test_transitions: correlated level).
    invocation_keys=("t",),
)


def make(redis: Any, config: SchedulerConfig = FAST, fid: str | None = None) -> Scheduler:
    return Scheduler(redis, config, hints=PollingHints(fid))


async def synchronize(s: Scheduler, req: rw_pb2.SynchronizeRequest) -> rw_pb2.SynchronizeResponse:
    """One Synchronize through the core, as the OperationQueue servicer makes it."""
    return encode_reply(await s.workers.synchronize(decode_report(req)))


def action(
    n: int,
    *,
    do_not_cache: bool = False,
    platform: re_pb2.Platform | None = None,
    timeout: float | None = None,
) -> tuple[re_pb2.Digest, re_pb2.Action]:
    a = re_pb2.Action(
        command_digest=re_pb2.Digest(
            hash=hashlib.sha256(str(n).encode()).hexdigest(), size_bytes=n
        ),
        do_not_cache=do_not_cache,
    )
    if platform is not None:
        a.platform.CopyFrom(platform)
    if timeout is not None:
        a.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout)))
    data = a.SerializeToString()
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data)), a


def md(tool: str = "", correlated: str = "") -> re_pb2.RequestMetadata:
    return re_pb2.RequestMetadata(tool_invocation_id=tool, correlated_invocations_id=correlated)


async def execute(
    s: Scheduler, n: int, *, instance: str = "", tool: str = "inv", priority: int = 0, **kw: Any
):  # type: ignore[no-untyped-def]
    digest, a = action(n, **kw)
    return await s.operations.execute(
        instance_name=instance,
        action_digest=digest,
        action=a,
        digest_function=SHA256,
        priority=priority,
        request_metadata=md(tool),
    )


def request(
    worker: str,
    state: str = "idle",
    digest: re_pb2.Digest | None = None,
    *,
    response: re_pb2.ExecuteResponse | None = None,
    prefix: str = "",
    platform: re_pb2.Platform | None = None,
    size_class: int = 0,
    prefer_idle: bool = False,
) -> rw_pb2.SynchronizeRequest:
    req = rw_pb2.SynchronizeRequest(
        worker_id={"host": "h", "thread": worker},
        instance_name_prefix=prefix,
        size_class=size_class,
        prefer_being_idle=prefer_idle,
    )
    if platform is not None:
        req.platform.CopyFrom(platform)
    if state == "idle":
        req.current_state.idle.SetInParent()
    else:
        ex = req.current_state.executing
        assert digest is not None
        ex.action_digest.CopyFrom(digest)
        if state == "completed":
            ex.completed.CopyFrom(response or re_pb2.ExecuteResponse())
        else:
            getattr(ex, state).SetInParent()
    return req


def assigned(resp: rw_pb2.SynchronizeResponse) -> re_pb2.Digest | None:
    if resp.desired_state.WhichOneof("worker_state") == "executing":
        return resp.desired_state.executing.action_digest
    return None


def is_idle(resp: rw_pb2.SynchronizeResponse) -> bool:
    return resp.desired_state.WhichOneof("worker_state") == "idle"


def is_continue(resp: rw_pb2.SynchronizeResponse) -> bool:
    return resp.desired_state.WhichOneof("worker_state") is None
