from __future__ import annotations

import redis.asyncio as aioredis
from qhelpers import action, assigned, execute, is_continue, is_idle, make, request

from redbarn.proto import remote_execution_pb2 as re_pb2

Stage = re_pb2.ExecutionStage


async def test_queue_assign_complete(any_redis: aioredis.Redis) -> None:
    s = make(any_redis)
    await s.start()
    resp = await s.synchronize(request("1"))
    assert is_idle(resp)
    view = await execute(s, 1)
    assert view.stage == Stage.QUEUED
    digest, _ = action(1)
    resp = await s.synchronize(request("1"))
    assert assigned(resp) == digest
    ex = resp.desired_state.executing
    assert ex.action.timeout.seconds == 1800
    assert ex.queued_timestamp.seconds > 0
    assert (await s.get_operation_view(view.name)).stage == Stage.EXECUTING
    resp = await s.synchronize(request("1", "running", digest))
    assert is_continue(resp)
    done = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0))
    resp = await s.synchronize(request("1", "completed", digest, response=done))
    assert is_idle(resp)
    v = await s.get_operation_view(view.name)
    assert v.done and v.response == done
