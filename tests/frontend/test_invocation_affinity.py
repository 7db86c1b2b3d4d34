"""Idle workers stay on the invocation of their last task, and new work finds them there
(Buildbarn's R35, R36), and worker invocation stickiness (R34): real frontends, real Redis,
workers driven one Synchronize at a time so every assignment is deterministic."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from redbarn.frontend.config import FrontendConfig
from redbarn.proto import bb_scheduler_pb2
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import buildqueuestate_pb2_grpc as bq_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue.admin import invocation_id
from redbarn.queue.config import parse_predeclared

from .test_execution import PLATFORM, SCHED, Cluster, Node, invocation, upload_action

_salts = itertools.count()

IDLE = rw_pb2.CurrentState(idle={})


class Worker:
    """One worker whose every Synchronize the test issues itself."""

    def __init__(self, node: Node, name: str, platform: re_pb2.Platform = PLATFORM) -> None:
        self.node = node
        self.id = {"hostname": "test", "thread": name}
        self.platform = platform
        self.pending: asyncio.Future[rw_pb2.SynchronizeResponse] | None = None

    def send(self, state: rw_pb2.CurrentState) -> None:
        """Start a Synchronize (an idle or completed one parks until work comes)."""
        req = rw_pb2.SynchronizeRequest(
            worker_id=self.id, platform=self.platform, current_state=state
        )
        self.pending = asyncio.ensure_future(self.node.queue.Synchronize(req))

    async def executing(self) -> re_pb2.Digest:
        """Wait for the pending Synchronize to hand out an action; return its digest."""
        assert self.pending is not None
        reply = await asyncio.wait_for(self.pending, 10)
        assert reply.desired_state.WhichOneof("worker_state") == "executing", reply
        return reply.desired_state.executing.action_digest

    def complete(self, digest: re_pb2.Digest) -> None:
        """Report `digest` completed; the Synchronize then parks for the next action."""
        done = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0))
        self.send(
            rw_pb2.CurrentState(
                executing=rw_pb2.CurrentState.Executing(action_digest=digest, completed=done)
            )
        )

    async def parked(self) -> None:
        """Give the pending Synchronize time to reach Redis and park there."""
        await asyncio.sleep(0.3)
        assert self.pending is not None and not self.pending.done()

    async def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            await asyncio.gather(self.pending, return_exceptions=True)


async def execute(node: Node, tool: str, platform: re_pb2.Platform = PLATFORM) -> Any:
    """Start an Execute from invocation `tool` (a fresh action each time); returns
    (digest, stream) once the first Operation message has arrived."""
    digest = await upload_action(node, ["true"], platform=platform, salt=str(next(_salts)).encode())
    stream = node.execution.Execute(
        re_pb2.ExecuteRequest(action_digest=digest), metadata=invocation(tool)
    )
    await stream.read()
    return digest, stream


def scq(platform: re_pb2.Platform = PLATFORM) -> bq_pb2.SizeClassQueueName:
    return bq_pb2.SizeClassQueueName(
        platform_queue_name=bq_pb2.PlatformQueueName(platform=platform)
    )


def tool_path(tool: str) -> list[Any]:
    """InvocationName ids of a request with only tool_invocation_id set (the default
    extractors: correlated_invocations_id, then tool_invocation_id)."""
    return [invocation_id("c", ""), invocation_id("t", tool)]


async def test_idle_workers_stay_on_their_invocation_and_get_its_next_task(
    redis_url: str,
) -> None:
    """Buildbarn's R35: a worker that completes a task stays attached to that task's
    invocation while idle (ListInvocationChildren shows it there). R36: a new task goes to
    an idle synchronizing worker found by walking up from its invocation, so a worker of
    the same invocation gets it before an unrelated one (here: before w1, which comes first
    in key order and is what a plain 'first parked worker' rule would pick)."""
    c = Cluster(FrontendConfig(listen="127.0.0.1:0", redis_url=redis_url), SCHED)
    w1 = w2 = None
    try:
        a, b = await c.add(), await c.add()
        admin = bq_grpc.BuildQueueStateStub(b.channel)
        w1, w2 = Worker(a, "w1"), Worker(b, "w2")
        for w in (w1, w2):
            w.send(IDLE)
            await w.parked()
        # Both idle at the root: the first of each invocation goes to whichever is free.
        d_x, s_x = await execute(a, "x")
        assert await w1.executing() == d_x  # first parked worker in key order
        d_y, s_y = await execute(b, "y")
        assert await w2.executing() == d_y
        w1.complete(d_x)
        w2.complete(d_y)
        await w1.parked()
        await w2.parked()

        # Idle workers show on the invocation of their last task.
        root = bq_pb2.InvocationName(size_class_queue_name=scq())
        children = await admin.ListInvocationChildren(
            bq_pb2.ListInvocationChildrenRequest(invocation_name=root)
        )
        (corr,) = children.children  # the empty correlated_invocations_id level
        assert corr.state.idle_workers_count == 2
        assert corr.state.idle_synchronizing_workers_count == 2
        below = await admin.ListInvocationChildren(
            bq_pb2.ListInvocationChildrenRequest(
                invocation_name=bq_pb2.InvocationName(
                    size_class_queue_name=scq(), ids=[invocation_id("c", "")]
                )
            )
        )
        by_tool = {ch.id.SerializeToString(): ch.state for ch in below.children}
        for tool in ("x", "y"):
            state = by_tool[invocation_id("t", tool).SerializeToString()]
            assert state.idle_workers_count == 1 and state.idle_synchronizing_workers_count == 1
        at_y = await admin.ListWorkers(
            bq_pb2.ListWorkersRequest(
                filter=bq_pb2.ListWorkersRequest.Filter(
                    idle_synchronizing=bq_pb2.InvocationName(
                        size_class_queue_name=scq(), ids=tool_path("y")
                    )
                ),
                page_size=10,
            )
        )
        assert [dict(w.id) for w in at_y.workers] == [w2.id]

        # y's next task finds w2 (its invocation), x's next finds w1.
        d_y2, s_y2 = await execute(a, "y")
        assert await w2.executing() == d_y2
        assert not w1.pending.done()  # type: ignore[union-attr]
        d_x2, s_x2 = await execute(b, "x")
        assert await w1.executing() == d_x2
        for s in (s_x, s_y, s_y2, s_x2):
            s.cancel()
    finally:
        for w in (w1, w2):
            if w is not None:
                await w.close()
        await c.close()


def _sticky_queue(platform: re_pb2.Platform, limits: Sequence[str]) -> str:
    msg = bb_scheduler_pb2.PredeclaredPlatformQueueConfiguration(
        platform=platform, size_classes=[0]
    )
    for text in limits:
        msg.worker_invocation_stickiness_limits.add().FromJsonString(text)
    return json_format.MessageToJson(msg)


async def test_worker_invocation_stickiness_wins_ties(redis_url: str) -> None:
    """Buildbarn's R34 (predeclared queues' worker_invocation_stickiness_limits): when a
    worker picks among child invocations whose scores tie, the one of the task it last
    completed wins while its stickiness limit has not run out; without limits the tie goes
    to the invocation that started an operation least recently (round robin)."""
    sticky = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="OSFamily", value="s")])
    plain = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="OSFamily", value="p")])
    sched = dataclasses.replace(
        SCHED,
        predeclared=(
            parse_predeclared(_sticky_queue(sticky, ["60s", "60s"])),
            parse_predeclared(_sticky_queue(plain, [])),
        ),
    )
    c = Cluster(FrontendConfig(listen="127.0.0.1:0", redis_url=redis_url), sched)
    workers: list[Worker] = []
    try:
        node = await c.add()
        await asyncio.sleep(0.5)  # the reaper declares the queues
        picked = {}
        for platform in (sticky, plain):
            w = Worker(node, "w-" + platform.properties[0].value, platform)
            workers.append(w)
            # Queued with no worker: invocation b first (so b is the older one), then a.
            d_b1, _ = await execute(node, "b", platform)
            d_a1, _ = await execute(node, "a", platform)
            w.send(IDLE)
            assert await w.executing() == d_b1  # tie; b is older
            d_b2, _ = await execute(node, "b", platform)
            # a (last started when created) is now older than b (just started b1).
            w.complete(d_b1)
            got = await w.executing()
            picked[platform.properties[0].value] = {d_a1.hash: "a", d_b2.hash: "b"}[got.hash]
        assert picked == {"s": "b", "p": "a"}
    finally:
        for w in workers:
            await w.close()
        await c.close()
