"""Execution and OperationQueue over real gRPC channels, real frontends, real Redis.

A test worker speaks Synchronize like bb_worker; clients speak REAPI like Bazel.
Several frontends share one private Redis to show that none of them holds state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue import codec, keys
from redbarn.queue.config import SchedulerConfig

from .conftest import digest_of

SCHED = SchedulerConfig(
    idle_sync_timeout=20.0,
    worker_timeout=5.0,
    operation_retention=5.0,
    execution_update_interval=30.0,
    platform_queue_timeout=60.0,
    waiter_poll_interval=2.0,
)
PLATFORM = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="OSFamily", value="linux")])


@dataclass
class Node:
    server: FrontendServer
    port: int
    channel: grpc.aio.Channel
    execution: Any = None
    cas: Any = None
    queue: Any = None
    ac: Any = None

    def __post_init__(self) -> None:
        self.execution = re_grpc.ExecutionStub(self.channel)
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.queue = rw_grpc.OperationQueueStub(self.channel)


@dataclass
class Cluster:
    config: FrontendConfig
    sched: SchedulerConfig
    nodes: list[Node] = field(default_factory=list)

    async def add(self) -> Node:
        server, port = await create_server(
            self.config, hooks=[scheduling_hook(self.sched, reaper_interval=0.2)]
        )
        await server.start()
        node = Node(server, port, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        self.nodes.append(node)
        return node

    async def close(self) -> None:
        for n in self.nodes:
            await n.channel.close()
            await n.server.stop(0)


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[Cluster]:
    config = FrontendConfig(
        listen="127.0.0.1:0", redis_url=redis_url, health_interval=0.2, grace_period=0.5
    )
    c = Cluster(config, SCHED)
    try:
        yield c
    finally:
        await c.close()


async def upload_action(
    node: Node,
    argv: list[str],
    *,
    platform: re_pb2.Platform = PLATFORM,
    do_not_cache: bool = False,
    timeout: duration_pb2.Duration | None = None,
    salt: bytes = b"",
    action_platform: re_pb2.Platform | None = None,
) -> re_pb2.Digest:
    """Upload an Action and its Command, both with `platform` (the Action with
    `action_platform` instead, when given)."""
    command = re_pb2.Command(arguments=argv, platform=platform).SerializeToString()
    root = re_pb2.Directory().SerializeToString()
    action = re_pb2.Action(
        command_digest=digest_of(command),
        input_root_digest=digest_of(root),
        platform=platform if action_platform is None else action_platform,
        do_not_cache=do_not_cache,
        salt=salt,
    )
    if timeout is not None:
        action.timeout.CopyFrom(timeout)
    blob = action.SerializeToString()
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    reply = await node.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[Req(digest=digest_of(b), data=b) for b in (command, root, blob)]
        )
    )
    assert [r.status.code for r in reply.responses] == [0, 0, 0]
    return digest_of(blob)


def metadata_of(op: operations_pb2.Operation) -> re_pb2.ExecuteOperationMetadata:
    md = re_pb2.ExecuteOperationMetadata()
    op.metadata.Unpack(md)
    return md


def response_of(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    assert op.done and op.HasField("response") and not op.HasField("error")
    r = re_pb2.ExecuteResponse()
    op.response.Unpack(r)
    return r


def invocation(tool: str) -> list[tuple[str, bytes]]:
    md = re_pb2.RequestMetadata(tool_invocation_id=tool)
    return [("build.bazel.remote.execution.v2.requestmetadata-bin", md.SerializeToString())]


class SimWorker:
    """A bb_worker-shaped Synchronize loop whose 'execution' the test controls."""

    def __init__(
        self,
        node: Node,
        name: str = "w1",
        *,
        hold: asyncio.Event | None = None,
        result: Callable[[rw_pb2.DesiredState.Executing], re_pb2.ExecuteResponse] | None = None,
    ) -> None:
        self.node = node
        self.worker_id = {"hostname": "test", "thread": name}
        self.hold = hold
        self.result = result or (
            lambda ex: re_pb2.ExecuteResponse(
                result=re_pb2.ActionResult(exit_code=0, stdout_raw=b"hi")
            )
        )
        self.assigned: list[rw_pb2.DesiredState.Executing] = []
        self.assigned_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def request(
        self, state: rw_pb2.CurrentState, prefer_idle: bool = False
    ) -> rw_pb2.SynchronizeRequest:
        return rw_pb2.SynchronizeRequest(
            worker_id=self.worker_id,
            platform=PLATFORM,
            current_state=state,
            prefer_being_idle=prefer_idle,
        )

    async def sync(
        self, state: rw_pb2.CurrentState, prefer_idle: bool = False
    ) -> rw_pb2.SynchronizeResponse:
        return await self.node.queue.Synchronize(self.request(state, prefer_idle))

    async def register(self) -> None:
        """One non-blocking idle report so the platform queue exists."""
        reply = await self.sync(rw_pb2.CurrentState(idle={}), prefer_idle=True)
        assert reply.desired_state.WhichOneof("worker_state") == "idle"

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self.task

    async def _run(self) -> None:
        state = rw_pb2.CurrentState(idle={})
        while True:
            reply = await self.sync(state)
            assert reply.HasField("next_synchronization_at")
            if reply.desired_state.WhichOneof("worker_state") != "executing":
                state = rw_pb2.CurrentState(idle={})
                continue
            ex = reply.desired_state.executing
            self.assigned.append(ex)
            self.assigned_event.set()
            running = rw_pb2.CurrentState(
                executing=rw_pb2.CurrentState.Executing(action_digest=ex.action_digest, running={})
            )
            progress = await self.sync(running)
            assert not progress.HasField("desired_state")  # "continue"
            if self.hold is not None:
                await self.hold.wait()
            state = rw_pb2.CurrentState(
                executing=rw_pb2.CurrentState.Executing(
                    action_digest=ex.action_digest, completed=self.result(ex)
                )
            )


async def collect(stream: Any) -> list[operations_pb2.Operation]:
    """The rest of a stream (read() style, so it can follow earlier read() calls)."""
    ops = []
    while (op := await stream.read()) is not grpc.aio.EOF:
        ops.append(op)
    return ops


async def test_execute_to_completion(cluster: Cluster) -> None:
    node = await cluster.add()
    worker = SimWorker(node)
    await worker.register()
    worker.start()
    try:
        digest = await upload_action(node, ["echo", "hi"])
        ops = await asyncio.wait_for(
            collect(
                node.execution.Execute(
                    re_pb2.ExecuteRequest(action_digest=digest), metadata=invocation("build-7")
                )
            ),
            10,
        )
    finally:
        await worker.stop()
    assert len({op.name for op in ops}) == 1
    stages = [metadata_of(op).stage for op in ops]
    assert stages[-1] == re_pb2.ExecutionStage.COMPLETED
    assert set(stages[:-1]) <= {re_pb2.ExecutionStage.QUEUED, re_pb2.ExecutionStage.EXECUTING}
    assert response_of(ops[-1]) == re_pb2.ExecuteResponse(
        result=re_pb2.ActionResult(exit_code=0, stdout_raw=b"hi")
    )
    assert metadata_of(ops[-1]).action_digest == digest
    ex = worker.assigned[0]
    assert ex.action_digest == digest
    assert ex.action.timeout == duration_pb2.Duration(seconds=1800)
    assert ex.digest_function == re_pb2.DigestFunction.SHA256
    assert ex.HasField("queued_timestamp")
    # The client's RequestMetadata reaches the worker as auxiliary metadata.
    [aux] = ex.auxiliary_metadata
    sent = re_pb2.RequestMetadata()
    assert aux.Unpack(sent) and sent.tool_invocation_id == "build-7"


async def test_an_action_without_platform_takes_its_commands(cluster: Cluster) -> None:
    """Buildbarn's actionAndCommand platform key extractor: an Action with no platform
    (REAPI before 2.2, Bazel 4.2.3) is routed by its Command's platform, so it reaches
    the worker of that platform instead of "No workers exist" on the empty platform."""
    node = await cluster.add()
    worker = SimWorker(node)
    await worker.register()
    worker.start()
    try:
        digest = await upload_action(node, ["echo", "hi"], action_platform=re_pb2.Platform())
        ops = await asyncio.wait_for(
            collect(node.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest))), 10
        )
    finally:
        await worker.stop()
    assert metadata_of(ops[-1]).stage == re_pb2.ExecutionStage.COMPLETED
    assert response_of(ops[-1]).result.stdout_raw == b"hi"
    assert worker.assigned[0].action_digest == digest


async def test_parked_worker_on_a_is_woken_by_execute_on_b(cluster: Cluster) -> None:
    a, b = await cluster.add(), await cluster.add()
    worker = SimWorker(a)
    await worker.register()
    worker.start()
    try:
        await asyncio.sleep(0.3)  # parked on A (idle timeout is 20 s)
        digest = await upload_action(b, ["true"])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ops = await asyncio.wait_for(
            collect(b.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest))), 10
        )
        assert loop.time() - t0 < 3.0, "the parked worker was not woken by the hint"
        assert response_of(ops[-1]).result.exit_code == 0
        # Direct assignment to a parked worker: the first message is already EXECUTING.
        assert metadata_of(ops[0]).stage == re_pb2.ExecutionStage.EXECUTING
    finally:
        await worker.stop()


async def test_dedup_across_frontends_and_wait_elsewhere(cluster: Cluster) -> None:
    a, b = await cluster.add(), await cluster.add()
    hold = asyncio.Event()
    worker = SimWorker(a, hold=hold)
    await worker.register()
    worker.start()
    try:
        digest = await upload_action(a, ["sleep", "1"])
        req = re_pb2.ExecuteRequest(action_digest=digest)
        s1 = a.execution.Execute(req, metadata=invocation("build-1"))
        first1 = await s1.read()
        s2 = b.execution.Execute(req, metadata=invocation("build-1"))
        first2 = await s2.read()
        s3 = b.execution.Execute(req, metadata=invocation("build-2"))
        first3 = await s3.read()
        assert first1.name == first2.name, "same invocation joins the same operation"
        assert first3.name != first1.name, "another invocation gets its own operation"
        # WaitExecution on the other frontend, for an operation Execute created on A.
        w = b.execution.WaitExecution(re_pb2.WaitExecutionRequest(name=first1.name))
        first_w = await w.read()
        assert first_w.name == first1.name
        await asyncio.wait_for(worker.assigned_event.wait(), 5)
        hold.set()
        finals = [await asyncio.wait_for(collect(s), 10) for s in (s1, s2, s3, w)]
    finally:
        await worker.stop()
    results = [response_of(ops[-1]) for ops in finals]
    assert all(r == results[0] for r in results)
    assert len(worker.assigned) == 1, "deduplicated requests ran once"


async def test_skip_cache_lookup_false_answers_from_the_action_cache(cluster: Cluster) -> None:
    node = await cluster.add()
    digest = await upload_action(node, ["cached"])
    stdout = b"from cache"
    Req = re_pb2.BatchUpdateBlobsRequest.Request
    await node.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(requests=[Req(digest=digest_of(stdout), data=stdout)])
    )
    result = re_pb2.ActionResult(exit_code=0, stdout_digest=digest_of(stdout))
    await node.ac.UpdateActionResult(
        re_pb2.UpdateActionResultRequest(action_digest=digest, action_result=result)
    )
    ops = await collect(node.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest)))
    assert len(ops) == 1
    resp = response_of(ops[0])
    assert resp.cached_result and resp.result.stdout_digest == digest_of(stdout)
    # skip_cache_lookup=true must not answer from the cache: no workers -> UNAVAILABLE (grace).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(
            node.execution.Execute(
                re_pb2.ExecuteRequest(action_digest=digest, skip_cache_lookup=True)
            )
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 'No workers exist for instance name prefix ""' in (err.value.details() or "")


async def test_frontend_stopping_mid_stream_client_reattaches_elsewhere(cluster: Cluster) -> None:
    a, b = await cluster.add(), await cluster.add()
    hold = asyncio.Event()
    worker = SimWorker(b, hold=hold)
    await worker.register()
    worker.start()
    try:
        digest = await upload_action(a, ["x"])
        stream = a.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest))
        first = await stream.read()
        await asyncio.wait_for(worker.assigned_event.wait(), 5)
        await a.server.stop(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        hold.set()
        ops = await asyncio.wait_for(
            collect(b.execution.WaitExecution(re_pb2.WaitExecutionRequest(name=first.name))), 10
        )
        assert response_of(ops[-1]).result.stdout_raw == b"hi"
    finally:
        await worker.stop()


def _precondition(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for d in status.details:
                pf = error_details_pb2.PreconditionFailure()
                if d.Unpack(pf):
                    return [(v.type, v.subject) for v in pf.violations]
    return []


async def _execute_error(node: Node, request: re_pb2.ExecuteRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(node.execution.Execute(request))
    return err.value


async def test_execute_error_catalogue(cluster: Cluster) -> None:
    node = await cluster.add()
    worker = SimWorker(node)
    await worker.register()
    good = await upload_action(node, ["ok"])
    cases: list[tuple[re_pb2.ExecuteRequest, grpc.StatusCode, str]] = [
        (
            re_pb2.ExecuteRequest(instance_name="a//b", action_digest=good),
            grpc.StatusCode.INVALID_ARGUMENT,
            'Invalid instance name "a//b": Instance name contains redundant slashes',
        ),
        (
            re_pb2.ExecuteRequest(instance_name="x/blobs", action_digest=good),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reserved keyword",
        ),
        (
            re_pb2.ExecuteRequest(action_digest=re_pb2.Digest(hash="ab", size_bytes=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unknown digest function",
        ),
        (
            re_pb2.ExecuteRequest(action_digest=re_pb2.Digest(hash="G" * 64, size_bytes=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Failed to extract digest for action: Non-hexadecimal character in digest hash",
        ),
        (
            re_pb2.ExecuteRequest(action_digest=re_pb2.Digest(hash="a" * 64, size_bytes=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Failed to extract digest for action: Invalid digest size: -1",
        ),
        (
            re_pb2.ExecuteRequest(action_digest=good, digest_function=re_pb2.DigestFunction.MD5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MD5",
        ),
    ]
    for request, code, text in cases:
        err = await _execute_error(node, request)
        assert err.code() == code, (request, err)
        assert text in (err.details() or ""), (text, err.details())

    err = await _execute_error(node, re_pb2.ExecuteRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "Failed to extract digest for action: No digest provided"

    missing = re_pb2.Digest(hash="b" * 64, size_bytes=10)
    err = await _execute_error(node, re_pb2.ExecuteRequest(action_digest=missing))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.details() or "").startswith("Failed to obtain action: ")
    assert _precondition(err) == [("MISSING", f"blobs/{'b' * 64}/10")]

    unsorted = re_pb2.Platform(
        properties=[
            re_pb2.Platform.Property(name="b", value="1"),
            re_pb2.Platform.Property(name="a", value="1"),
        ]
    )
    err = await _execute_error(
        node,
        re_pb2.ExecuteRequest(action_digest=await upload_action(node, ["u"], platform=unsorted)),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Platform properties are not lexicographically sorted" in (err.details() or "")

    long = duration_pb2.Duration(seconds=7201)
    err = await _execute_error(
        node, re_pb2.ExecuteRequest(action_digest=await upload_action(node, ["t"], timeout=long))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is outside permitted range [0s, 2h0m0s]" in (err.details() or "")

    other = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="OSFamily", value="windows")])
    err = await _execute_error(
        node, re_pb2.ExecuteRequest(action_digest=await upload_action(node, ["w"], platform=other))
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # start-up grace period
    assert err.details() == (
        'No workers exist for instance name prefix "" platform '
        '{"properties":[{"name":"OSFamily","value":"windows"}]}'
    )

    with pytest.raises(grpc.aio.AioRpcError) as werr:
        await collect(node.execution.WaitExecution(re_pb2.WaitExecutionRequest(name="nope")))
    assert werr.value.code() == grpc.StatusCode.NOT_FOUND
    assert werr.value.details() == 'Operation with name "nope" not found'


async def test_no_workers_after_grace_is_failed_precondition(redis_url: str) -> None:
    config = FrontendConfig(
        listen="127.0.0.1:0", redis_url=redis_url, health_interval=0.2, grace_period=0.5
    )
    c = Cluster(config, dataclasses.replace(SCHED, platform_queue_timeout=0.0))
    try:
        node = await c.add()
        err = await _execute_error(
            node, re_pb2.ExecuteRequest(action_digest=await upload_action(node, ["z"]))
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "No workers exist for instance name prefix" in (err.details() or "")
    finally:
        await c.close()


async def test_synchronize_error_catalogue(cluster: Cluster) -> None:
    node = await cluster.add()
    worker = SimWorker(node)
    cases = [
        (
            rw_pb2.SynchronizeRequest(worker_id=worker.worker_id, platform=PLATFORM),
            "Worker did not provide its current state",
        ),
        (
            worker.request(
                rw_pb2.CurrentState(executing=rw_pb2.CurrentState.Executing(running={}))
            ),
            "Worker is executing, but provided no action digest",
        ),
        (
            rw_pb2.SynchronizeRequest(
                worker_id=worker.worker_id,
                instance_name_prefix="a/",
                platform=PLATFORM,
                current_state=rw_pb2.CurrentState(idle={}),
            ),
            "redundant slashes",
        ),
    ]
    for request, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node.queue.Synchronize(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in (err.value.details() or "")
    # The same worker ID synchronizing twice at once.
    parked = asyncio.ensure_future(worker.sync(rw_pb2.CurrentState(idle={})))
    await asyncio.sleep(0.3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await worker.sync(rw_pb2.CurrentState(idle={}))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        err.value.details()
        == "A worker with the same worker ID is already synchronizing with the scheduler"
    )
    parked.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await parked


async def test_shutdown_answers_parked_workers_idle(cluster: Cluster) -> None:
    node = await cluster.add()
    worker = SimWorker(node)
    await worker.register()
    parked = asyncio.ensure_future(worker.sync(rw_pb2.CurrentState(idle={})))
    await asyncio.sleep(0.3)
    stopping = asyncio.ensure_future(node.server.stop(5.0))
    reply = await asyncio.wait_for(parked, 3)
    assert reply.desired_state.WhichOneof("worker_state") == "idle"
    await stopping


async def test_stream_carries_worker_stage_timestamps(cluster: Cluster) -> None:
    """Each worker sub-stage is a stream update with partial_execution_metadata."""
    node = await cluster.add()
    worker = SimWorker(node)
    await worker.register()
    digest = await upload_action(node, ["stages"])
    stream = node.execution.Execute(re_pb2.ExecuteRequest(action_digest=digest))
    await stream.read()
    reply = await worker.sync(rw_pb2.CurrentState(idle={}))
    ex = reply.desired_state.executing
    assert ex.action_digest == digest
    seen: list[re_pb2.ExecutedActionMetadata] = []
    for stage in ("fetching_inputs", "running", "uploading_outputs"):
        state = rw_pb2.CurrentState(
            executing=rw_pb2.CurrentState.Executing(action_digest=digest, **{stage: {}})
        )
        await worker.sync(state)
        while True:
            md = metadata_of(await asyncio.wait_for(stream.read(), 5))
            if md.HasField("partial_execution_metadata"):
                seen.append(md.partial_execution_metadata)
                if {
                    "fetching_inputs": md.partial_execution_metadata.HasField(
                        "input_fetch_start_timestamp"
                    ),
                    "running": md.partial_execution_metadata.HasField("execution_start_timestamp"),
                    "uploading_outputs": md.partial_execution_metadata.HasField(
                        "output_upload_start_timestamp"
                    ),
                }[stage]:
                    break
    last = seen[-1]
    assert last.worker == '{"hostname":"test","thread":"w1"}'
    for name in (
        "queued_timestamp",
        "worker_start_timestamp",
        "input_fetch_start_timestamp",
        "input_fetch_completed_timestamp",
        "execution_start_timestamp",
        "execution_completed_timestamp",
        "output_upload_start_timestamp",
    ):
        assert last.HasField(name), name
    assert last.input_fetch_completed_timestamp == last.execution_start_timestamp
    done = rw_pb2.CurrentState(
        executing=rw_pb2.CurrentState.Executing(
            action_digest=digest, completed=re_pb2.ExecuteResponse()
        )
    )
    await worker.sync(done, prefer_idle=True)
    ops = await asyncio.wait_for(collect(stream), 5)
    assert ops[-1].done


@pytest.mark.parametrize("cas", ["scheduler-redis", "separate-redis"])
async def test_missing_command_or_input_root(redis_url: str, cas: str) -> None:
    """FAILED_PRECONDITION with a MISSING violation per absent blob, and nothing queued,
    whether the enqueue script checks the inputs (CAS in the scheduler's Redis) or the
    frontend does first (any other CAS)."""
    config = FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        cas_redis_url=redis_url.rsplit("/", 1)[0] + "/1" if cas == "separate-redis" else "",
        health_interval=0.2,
        grace_period=0.5,
    )
    c = Cluster(config, SCHED)
    try:
        node = await c.add()
        await node.queue.Synchronize(
            rw_pb2.SynchronizeRequest(
                worker_id={"w": "1"}, platform=PLATFORM, prefer_being_idle=True,
                current_state=rw_pb2.CurrentState(idle={}),
            )
        )  # fmt: skip
        command = re_pb2.Command(arguments=["x"], platform=PLATFORM).SerializeToString()
        root = re_pb2.Directory(
            files=[re_pb2.FileNode(name="f", digest=digest_of(b"gone"))]
        ).SerializeToString()
        action = re_pb2.Action(
            command_digest=digest_of(command), input_root_digest=digest_of(root), platform=PLATFORM
        ).SerializeToString()

        async def upload(*blobs: bytes) -> None:
            Req = re_pb2.BatchUpdateBlobsRequest.Request
            await node.cas.BatchUpdateBlobs(
                re_pb2.BatchUpdateBlobsRequest(
                    requests=[Req(digest=digest_of(b), data=b) for b in blobs]
                )
            )

        def subject(blob: bytes) -> str:
            d = digest_of(blob)
            return f"blobs/{d.hash}/{d.size_bytes}"

        request = re_pb2.ExecuteRequest(action_digest=digest_of(action), skip_cache_lookup=True)
        await upload(action)
        err = await _execute_error(node, request)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (err.details() or "").startswith(
            f"Failed to obtain inputs of action {digest_of(action).hash}-{len(action)}: Blobs "
        )
        assert _precondition(err) == [("MISSING", subject(command)), ("MISSING", subject(root))]
        await upload(command)
        err = await _execute_error(node, request)
        assert _precondition(err) == [("MISSING", subject(root))]
        await upload(root)
        first = await anext(node.execution.Execute(request).__aiter__())
        assert metadata_of(first).stage == re_pb2.ExecutionStage.QUEUED
        # Only now is there an operation: the refused calls created none.
        domain = keys.domain_id("", codec.platform_json(PLATFORM))
        async with aioredis.Redis.from_url(redis_url) as r:
            assert await r.hlen(keys.domain_key(domain, "ops")) == 1
    finally:
        await c.close()
