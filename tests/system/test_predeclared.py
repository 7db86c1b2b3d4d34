"""Scaling from zero with a predeclared platform queue (issue 17), real processes.

A frontend with `--platform-queue` and no worker: Execute gives QUEUED (not
FAILED_PRECONDITION, even after the start-up grace), the queue gauge rises, the queue
outlives `--platform-queue-timeout`, and a worker that arrives runs the operation.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import grpc
from cluster import Cluster
from prometheus_client.parser import text_string_to_metric_families
from reapi_client import ReapiClient

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.runtime.redisserver import free_port

from .conftest import FAST

QUEUE = {
    "instanceNamePrefix": "",
    "platform": {"properties": [{"name": "pool", "value": "scale-from-zero"}]},
    "sizeClasses": [0],
}
POOL = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="pool", value="scale-from-zero")])


def queued_gauge(http: str) -> float:
    with urllib.request.urlopen(http + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "redbarn_queue_operations_queued" and "scale-from-zero" in s.labels["platform"]
    )


def test_scale_from_zero_on_a_predeclared_queue(tmp_path: Path) -> None:
    http_port = free_port()
    # FAST ends with --platform-queue-timeout 60s; ours, given later, wins: 2s, so the
    # start-up grace is over and an undeclared queue without workers would be gone.
    with Cluster(tmp_path) as cluster:
        cluster.add_frontend(
            *FAST, "--platform-queue-timeout", "2s", "--platform-queue", json.dumps(QUEUE),
            "--metrics-listen", f"127.0.0.1:{http_port}",
        )  # fmt: skip
        target = f"127.0.0.1:{cluster.frontend_ports[0]}"
        http = f"http://127.0.0.1:{http_port}"
        time.sleep(3)  # past --platform-queue-timeout (the start-up grace) with no worker

        async def scenario() -> re_pb2.ExecuteResponse:
            client = ReapiClient(target)
            try:
                digest = await client.prepare(["/bin/echo", "from zero"], platform=POOL)
                stream = client.execution.Execute(
                    re_pb2.ExecuteRequest(action_digest=digest, skip_cache_lookup=True)
                )
                first = await stream.read()
                md = re_pb2.ExecuteOperationMetadata()
                first.metadata.Unpack(md)
                assert md.stage == re_pb2.ExecutionStage.QUEUED, md
                deadline = time.monotonic() + 20
                while await asyncio.to_thread(queued_gauge, http) != 1:
                    assert time.monotonic() < deadline, "queue gauge did not read 1"
                    await asyncio.sleep(0.2)
                await asyncio.sleep(3)  # outlive --platform-queue-timeout, still queued
                assert await asyncio.to_thread(queued_gauge, http) == 1
                cluster.add_worker(target, "--platform", "pool=scale-from-zero")
                while True:
                    op = await stream.read()
                    assert op is not grpc.aio.EOF, "stream ended before the operation was done"
                    if op.done:
                        resp = re_pb2.ExecuteResponse()
                        op.response.Unpack(resp)
                        return resp
            finally:
                await client.close()

        try:
            resp = asyncio.run(asyncio.wait_for(scenario(), 90))
        except BaseException:
            print(cluster.logs())
            raise
        assert resp.status.code == 0 and resp.result.exit_code == 0, resp
