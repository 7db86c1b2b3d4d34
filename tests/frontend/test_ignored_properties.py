"""--ignore-platform-property: a property left out of the platform queue key still
reaches the worker (one pool runs every container-image), over real frontends and Redis."""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2

from redbarn.frontend.config import FrontendConfig
from redbarn.proto import buildqueuestate_pb2_grpc as bq_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2

from .test_execution import PLATFORM, SCHED, Cluster, SimWorker, collect, invocation, upload_action


def with_image(image: str) -> re_pb2.Platform:
    props = [*PLATFORM.properties, re_pb2.Platform.Property(name="container-image", value=image)]
    return re_pb2.Platform(properties=sorted(props, key=lambda p: p.name))


async def test_ignored_property_leaves_the_queue_key_and_reaches_the_worker(
    redis_url: str,
) -> None:
    """Actions that differ only in an ignored property share one platform queue (one
    Redis hash slot), run on a worker that does not advertise the property, and that
    worker gets each Action with its own value intact."""
    config = FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        ignored_platform_properties=("container-image",),
    )
    c = Cluster(config, SCHED)
    worker = None
    try:
        node = await c.add()
        worker = SimWorker(node)  # advertises OSFamily=linux only
        await worker.register()
        worker.start()
        digests = []
        for image in ("docker://a", "docker://b"):
            d = await upload_action(node, ["true"], platform=with_image(image))
            digests.append(d)
            stream = node.execution.Execute(
                re_pb2.ExecuteRequest(action_digest=d), metadata=invocation("i")
            )
            ops = await asyncio.wait_for(collect(stream), 10)
            assert ops[-1].done and not ops[-1].HasField("error")
        got = {ex.action_digest.hash: ex.action.platform for ex in worker.assigned}
        assert got == {digests[0].hash: with_image("docker://a"),
                       digests[1].hash: with_image("docker://b")}  # fmt: skip
        admin = bq_grpc.BuildQueueStateStub(node.channel)
        queues = await admin.ListPlatformQueues(empty_pb2.Empty())
        assert [q.name.platform for q in queues.platform_queues] == [PLATFORM]
    finally:
        if worker is not None:
            await worker.stop()
        await c.close()


async def test_without_the_flag_the_property_is_part_of_the_key(redis_url: str) -> None:
    """The default: every property routes, so no worker of OSFamily=linux alone can take
    an action that names a container-image (FAILED_PRECONDITION, no workers)."""
    c = Cluster(FrontendConfig(listen="127.0.0.1:0", redis_url=redis_url), SCHED)
    try:
        node = await c.add()
        await SimWorker(node).register()
        d = await upload_action(node, ["true"], platform=with_image("docker://a"))
        stream = node.execution.Execute(re_pb2.ExecuteRequest(action_digest=d))
        try:
            await stream.read()
        except Exception as err:  # grpc.aio.AioRpcError
            assert "No workers exist" in str(err)
        else:
            raise AssertionError("Execute should have been refused")
    finally:
        await c.close()
