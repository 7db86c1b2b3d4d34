"""Feedback-driven initial size classes through real frontends, real gRPC and a real
redis-server: workers of size classes 1 and 4, each synchronizing with a different
frontend than the one clients Execute on, so that what the analyzer learns travels
with the task (the learner in the Executing message's auxiliary metadata, echoed by
the worker as bb_worker's NewDefaultExecuteResponse does) and through Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from redbarn import router
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import create_server
from redbarn.proto import iscc_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import sizeclass
from redbarn.queue.config import SchedulerConfig, parse_predeclared
from redbarn.queue.scheduler import Scheduler

from .conftest import digest_of
from .test_execution import (
    PLATFORM,
    SCHED,
    Node,
    SimWorker,
    collect,
    metadata_of,
    response_of,
    upload_action,
)

S = 1_000_000_000
# Buildbarn's recommended settings (its scheduler.proto), PageRank included.
ACTION_ROUTER = json.dumps(
    {
        "simple": {
            "platformKeyExtractor": {"action": {}},
            "invocationKeyExtractors": [{"correlatedInvocationsId": {}}, {"toolInvocationId": {}}],
            "initialSizeClassAnalyzer": {
                "defaultExecutionTimeout": "1800s",
                "maximumExecutionTimeout": "7200s",
                "feedbackDriven": {
                    "failureCacheDuration": "86400s",
                    "historySize": 32,
                    "pageRank": {
                        "acceptableExecutionTimeIncreaseExponent": 0.5,
                        "smallerSizeClassExecutionTimeoutMultiplier": 1.5,
                        "minimumExecutionTimeout": "10s",
                        "maximumConvergenceError": 0.002,
                    },
                },
            },
        }
    }
)


class SizedWorker(SimWorker):
    """A SimWorker of one size class whose result carries the assignment's auxiliary
    metadata, as bb_worker's and redbarn's results do."""

    def __init__(
        self,
        node: Node,
        name: str,
        size_class: int,
        result: Callable[[rw_pb2.DesiredState.Executing], re_pb2.ExecuteResponse],
    ) -> None:
        def echoed(ex: rw_pb2.DesiredState.Executing) -> re_pb2.ExecuteResponse:
            response = result(ex)
            response.result.execution_metadata.auxiliary_metadata.extend(ex.auxiliary_metadata)
            return response

        super().__init__(node, name, result=echoed)
        self.size_class = size_class

    def request(
        self, state: rw_pb2.CurrentState, prefer_idle: bool = False
    ) -> rw_pb2.SynchronizeRequest:
        req = super().request(state, prefer_idle)
        req.size_class = self.size_class
        return req


def out_of_memory(ex: rw_pb2.DesiredState.Executing) -> re_pb2.ExecuteResponse:
    """What the action does on size class 1: too little memory, exit code 137."""
    return re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=137, stderr_raw=b"OOM"))


def two_seconds(ex: rw_pb2.DesiredState.Executing) -> re_pb2.ExecuteResponse:
    response = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0, stdout_raw=b"ok"))
    response.result.execution_metadata.virtual_execution_duration.FromNanoseconds(2 * S)
    return response


class Frontends:
    """Frontends over one Redis, each with the feedback-driven --action-router."""

    def __init__(self, redis_url: str, sched: SchedulerConfig) -> None:
        self.config = FrontendConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            health_interval=0.2,
            grace_period=0.5,
            router=router.parse(ACTION_ROUTER),
        )
        self.sched = sched
        self.nodes: list[Node] = []
        self.schedulers: list[Scheduler] = []

    async def add(self) -> Node:
        hook = scheduling_hook(self.sched, reaper_interval=0.2)
        server, port = await create_server(self.config, hooks=[hook])
        await server.start()
        node = Node(server, port, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        self.nodes.append(node)
        self.schedulers.append(hook.scheduler)  # type: ignore[attr-defined]
        return node

    async def close(self) -> None:
        for n in self.nodes:
            await n.channel.close()
            await n.server.stop(0)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def execute(node: Node, digest: re_pb2.Digest) -> re_pb2.ExecuteResponse:
    ops = await asyncio.wait_for(
        collect(node.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest))), 10
    )
    assert metadata_of(ops[-1]).stage == re_pb2.ExecutionStage.COMPLETED
    return response_of(ops[-1])


async def statistics(
    redis: aioredis.Redis, action: re_pb2.Action, ready: Callable[[Any], bool]
) -> iscc_pb2.PreviousExecutionStats:
    """The action's statistics once `ready` holds (they are written in the background,
    right after the completion)."""
    key = sizeclass.stats_key(
        "",
        re_pb2.DigestFunction.SHA256,
        sizeclass.reduced_action_digest(action, re_pb2.DigestFunction.SHA256),
    )
    for _ in range(100):
        stats = sizeclass.decode_entry(await redis.get(key)).stats
        if ready(stats):
            assert 0 < await redis.ttl(key) <= 7 * 24 * 3600
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError(f"statistics never got there: {stats}")


def outcomes(stats: iscc_pb2.PreviousExecutionStats, size_class: int) -> list[str]:
    per = stats.size_classes.get(size_class)
    return [e.WhichOneof("outcome") or "" for e in (per.previous_executions if per else [])]


async def the_action(node: Node) -> tuple[re_pb2.Digest, re_pb2.Action]:
    digest = await upload_action(node, ["link", "--huge"])
    command = re_pb2.Command(arguments=["link", "--huge"], platform=PLATFORM).SerializeToString()
    action = re_pb2.Action(
        command_digest=digest_of(command),
        input_root_digest=digest_of(re_pb2.Directory().SerializeToString()),
        platform=PLATFORM,
    )
    assert digest_of(action.SerializeToString()) == digest
    return digest, action


async def test_an_action_that_needs_the_large_class_learns_to_start_there(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Buildbarn's InitialSizeClassFeedbackDrivenAnalyzer with PageRank. A new action
    starts on the smallest size class (no statistics: the smallest class without
    samples); it fails there and reruns on the largest (R22), where it succeeds, and
    both outcomes are stored. From then on its statistics say it fails on size class 1
    more often than it succeeds, so the strategy for size class 1 is a background run:
    whatever the random draw, every later Execute starts on the largest class, and size
    class 1 never sees the action again (this platform queue is not predeclared, so it
    allows no background learning runs, as in Buildbarn)."""
    frontends = Frontends(redis_url, SCHED)
    small = big = None
    try:
        a, b, c = await frontends.add(), await frontends.add(), await frontends.add()
        small = SizedWorker(b, "small", 1, out_of_memory)
        big = SizedWorker(c, "big", 4, two_seconds)
        for w in (small, big):
            await w.register()
            w.start()
        digest, action = await the_action(a)

        first = await execute(a, digest)
        assert first.result.stdout_raw == b"ok"
        assert [len(small.assigned), len(big.assigned)] == [1, 1]
        stats = await statistics(redis, action, lambda s: outcomes(s, 4) == ["succeeded"])
        assert outcomes(stats, 1) == ["failed"]
        assert stats.size_classes[4].previous_executions[0].succeeded.seconds == 2

        for n in range(2, 6):
            assert (await execute(a, digest)).result.stdout_raw == b"ok"
            assert [len(small.assigned), len(big.assigned)] == [1, n]
            stats = await statistics(redis, action, lambda s: len(outcomes(s, 4)) == n)  # noqa: B023
        assert outcomes(stats, 1) == ["failed"]
        assert not stats.HasField("last_seen_failure")
        # The unknown first run on size class 1 had Buildbarn's shortened timeout
        # (min(timeout, minimumExecutionTimeout) = 10 s); the rerun on the largest class,
        # and every run there since, the action's own.
        assert [ex.action.timeout.seconds for ex in small.assigned] == [10]
        assert {ex.action.timeout.seconds for ex in big.assigned} == {1800}
    finally:
        for w in (small, big):
            if w is not None:
                await w.stop()
        await frontends.close()


async def test_a_background_learning_run_after_success_on_the_largest(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Buildbarn's background learning (IMBQ's task completion, R23) on a predeclared
    queue with maximumQueuedBackgroundLearningOperations 1: when the strategy drawn for
    an action is a background run on size class 1 (the draw, fixed at 0 here, falls
    under that strategy's probability of 1/3), it runs on the largest class for the
    client, and after that success a copy runs on size class 1 with do_not_cache and
    the timeout GetBackgroundExecutionTimeout gives (median 2 s x (4/1)^0.5 x 1.5 = 6 s,
    raised to minimumExecutionTimeout 10 s). Its failure is recorded, and it is not
    rerun on the largest class."""
    queue = parse_predeclared(
        json.dumps(
            {
                "platform": json.loads('{"properties": [{"name": "OSFamily", "value": "linux"}]}'),
                "sizeClasses": [1, 4],
                "maximumQueuedBackgroundLearningOperations": 1,
                "backgroundLearningOperationPriority": 100,
            }
        )
    )
    frontends = Frontends(redis_url, dataclasses.replace(SCHED, predeclared=(queue,)))
    small = big = None
    try:
        a, b, c = await frontends.add(), await frontends.add(), await frontends.add()
        analyzer = frontends.schedulers[0].size_classes
        assert analyzer is not None
        analyzer.rand = lambda: 0.0
        small = SizedWorker(b, "small", 1, out_of_memory)
        big = SizedWorker(c, "big", 4, two_seconds)
        for w in (small, big):
            await w.register()
            w.start()
        digest, action = await the_action(a)
        await execute(a, digest)  # class 1 fails, class 4 succeeds
        await statistics(redis, action, lambda s: outcomes(s, 4) == ["succeeded"])

        second = await execute(a, digest)
        assert second.result.stdout_raw == b"ok"
        assert len(big.assigned) == 2
        stats = await statistics(redis, action, lambda s: outcomes(s, 1) == ["failed", "failed"])
        assert outcomes(stats, 4) == ["succeeded", "succeeded"]
        assert len(small.assigned) == 2
        background = small.assigned[1]
        assert background.action_digest == digest
        assert background.action.do_not_cache and background.action.timeout.seconds == 10
        await asyncio.sleep(0.5)
        assert len(big.assigned) == 2  # the background failure is not rerun
    finally:
        for w in (small, big):
            if w is not None:
                await w.stop()
        await frontends.close()
