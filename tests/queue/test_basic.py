from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from qhelpers import action, assigned, execute, is_continue, is_idle, make, request, synchronize

from redbarn.errors import InvalidArgument, ResourceExhausted
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2

Stage = re_pb2.ExecutionStage
P = re_pb2.Platform.Property


async def test_queue_assign_complete(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await s.start()
    resp = await synchronize(s, request("1"))
    assert is_idle(resp)
    view = await execute(s, 1)
    assert view.stage == Stage.QUEUED
    digest, _ = action(1)
    resp = await synchronize(s, request("1"))
    assert assigned(resp) == digest
    ex = resp.desired_state.executing
    assert ex.action.timeout.seconds == 1800
    assert ex.queued_timestamp.seconds > 0
    assert (await s.operations.get_operation_view(view.name)).stage == Stage.EXECUTING
    resp = await synchronize(s, request("1", "running", digest))
    assert is_continue(resp)
    done = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0))
    resp = await synchronize(s, request("1", "completed", digest, response=done))
    assert is_idle(resp)
    v = await s.operations.get_operation_view(view.name)
    assert v.done and v.response == done


async def test_cached_identities_still_refuse_bad_requests(any_redis: aioredis.Redis) -> None:
    """Synchronize and Execute remember each worker identity and platform they have
    validated; a bad one is refused every time, whatever was seen before."""
    s = make(any_redis)
    good = re_pb2.Platform(properties=[P(name="cpu", value="x"), P(name="os", value="y")])
    unsorted = re_pb2.Platform(properties=[P(name="os", value="y"), P(name="cpu", value="x")])
    for _ in range(2):
        assert is_idle(await synchronize(s, request("w1", platform=good, prefer_idle=True)))
        with pytest.raises(InvalidArgument, match="not lexicographically sorted"):
            await synchronize(s, request("w1", platform=unsorted, prefer_idle=True))
        with pytest.raises(InvalidArgument, match="redundant slashes"):
            await synchronize(s, request("w1", platform=good, prefix="a//b", prefer_idle=True))
        with pytest.raises(InvalidArgument, match="not lexicographically sorted"):
            await execute(s, 1, platform=unsorted)
    # One worker, whichever order its ID's pairs come in: a second call while the first
    # is parked is the same worker synchronizing twice.
    first = rw_pb2.SynchronizeRequest(worker_id={"host": "h", "thread": "w2"}, platform=good)
    first.current_state.idle.SetInParent()
    again = rw_pb2.SynchronizeRequest(platform=good)
    again.worker_id["thread"] = "w2"
    again.worker_id["host"] = "h"
    again.current_state.idle.SetInParent()
    parked = asyncio.ensure_future(synchronize(s, first))
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted):
        await synchronize(s, again)
    await parked
