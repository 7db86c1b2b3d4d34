"""Predeclared platform queues (bb_scheduler's predeclared_platform_queues, issue 17):
parsed from protobuf JSON, never reaped, Execute queues on them with no worker, and
their size classes follow Buildbarn's rules (R17, R18)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from qhelpers import FAST, assigned, execute, make, request, synchronize

from redbarn.config import ConfigError
from redbarn.errors import InvalidArgument
from redbarn.proto import bb_scheduler_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys
from redbarn.queue.config import PredeclaredQueue, parse_predeclared

LINUX = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="os", value="linux")])
DECLARED = PredeclaredQueue("", codec.platform_json(LINUX), (4, 8))
CONFIG = dataclasses.replace(
    FAST, predeclared=(DECLARED,), platform_queue_timeout=0.2, operation_retention=30.0
)


def test_wire_numbers_are_bb_schedulers() -> None:
    fields = {
        f.name: f.number
        for f in bb_scheduler_pb2.PredeclaredPlatformQueueConfiguration.DESCRIPTOR.fields
    }
    assert fields == {
        "instance_name_prefix": 1,
        "platform": 2,
        "size_classes": 3,
        "worker_invocation_stickiness_limits": 5,
        "maximum_queued_background_learning_operations": 6,
        "background_learning_operation_priority": 7,
    }
    assert bb_scheduler_pb2.DESCRIPTOR.package == "buildbarn.configuration.bb_scheduler"


def test_parse_buildbarn_json_and_refuse_what_bb_scheduler_refuses() -> None:
    q = parse_predeclared(
        '{"instanceNamePrefix": "ci", "platform": {"properties": [{"name": "os", "value": '
        '"linux"}, {"name": "arch", "value": "x86_64"}]}, "sizeClasses": [4, 8], '
        '"workerInvocationStickinessLimits": ["3s"]}'
    )
    assert q.instance_name_prefix == "ci" and q.size_classes == (4, 8)
    assert q.platform_json == codec.platform_json(
        re_pb2.Platform(
            properties=[
                re_pb2.Platform.Property(name="arch", value="x86_64"),
                re_pb2.Platform.Property(name="os", value="linux"),
            ]
        )
    )
    assert parse_predeclared('{"sizeClasses": [0]}').size_classes == (0,)
    for text, reason in (
        ('{"sizeClasses": [8, 4]}', "sizeClasses must be in increasing order, got [8, 4]"),
        ('{"sizeClasses": [4, 4]}', "increasing order"),
        ('{"sizeClasses": [0, 4]}', "with more than one size class all must be positive"),
        ("{}", "sizeClasses must list at least one size class"),
        ('{"sizeClass": [1]}', 'has no field named "sizeClass"'),
        ("not json", "invalid --platform-queue 'not json'"),
        ('{"instanceNamePrefix": "a//b", "sizeClasses": [1]}', 'Invalid instance name "a//b"'),
    ):
        with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("]", r"\]")):
            parse_predeclared(text)


async def test_execute_queues_with_no_worker_and_the_queue_is_never_reaped(
    any_redis: Any,
) -> None:
    s = make(any_redis, CONFIG)
    await s.start()
    view = await execute(s, 1, platform=LINUX)
    assert view.stage == re_pb2.ExecutionStage.QUEUED
    assert view.size_class == 4  # the smallest, as no size class has workers
    # Long past --platform-queue-timeout, with the reaper running: still there.
    for _ in range(3):
        await asyncio.sleep(0.25)
        await s.reaper.reap()
    assert DECLARED.domain in await s.registry.queues(fresh=True)
    scs = await any_redis.hget(keys.domain_key(DECLARED.domain, "meta"), "scs")
    assert scs.split() == [keys.size_class_field(4).encode(), keys.size_class_field(8).encode()]
    # A worker of the smallest size class arrives and gets the queued action.
    resp = await synchronize(s, request("a", platform=LINUX, size_class=4))
    assert assigned(resp) is not None


async def test_size_classes_follow_buildbarns_rules(any_redis: Any) -> None:
    s = make(any_redis, CONFIG)
    await s.start()
    with pytest.raises(
        InvalidArgument,
        match="Worker provided size class 16, which exceeds the predeclared maximum of 8",
    ):
        await synchronize(s, request("big", platform=LINUX, size_class=16))
    with pytest.raises(InvalidArgument, match="Worker did not provide a size class"):
        await synchronize(s, request("none", platform=LINUX, size_class=0))
    # A smaller undeclared size class is created by its worker ...
    await synchronize(s, request("small", platform=LINUX, size_class=2, prefer_idle=True))
    meta = keys.domain_key(DECLARED.domain, "meta")
    assert keys.size_class_field(2).encode() in (await any_redis.hget(meta, "scs")).split()
    # ... and removed once its worker is gone, unlike the declared ones.
    for _ in range(12):
        await asyncio.sleep(0.1)
        await s.reaper.reap()
    assert (await any_redis.hget(meta, "scs")).split() == [
        keys.size_class_field(4).encode(),
        keys.size_class_field(8).encode(),
    ]
