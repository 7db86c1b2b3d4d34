"""/metrics of a real frontend process with a real worker process (issue 17).

Ten operations are queued on a platform queue whose only worker is drained (so no idle
worker can take them): the queue gauge reads 10. Then the drain goes, they run, and the
completion counter and the queued and executing histograms have moved by exactly 10.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from reapi_client import ReapiClient  # type: ignore[import-not-found]

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

from .observe_cluster import observed, run

BB = "buildbarn_builder_in_memory_build_queue_"


def test_metrics_parse_and_queue_gauge_and_counters_move_by_ten(tmp_path: Path) -> None:
    with observed(tmp_path) as obs:
        status, text = obs.get("/metrics")
        assert status == 200
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {
            "redbarn_queue_operations_queued",
            "redbarn_queue_workers",
            "redbarn_queue_oldest_queued_operation_age_seconds",
            "grpc_server_handled",
        } <= names
        platform = obs.samples()
        labels = next(
            dict(ls) for (n, ls), _ in platform.items() if n == "redbarn_queue_operations_queued"
        )
        assert labels["instance_name_prefix"] == "" and labels["size_class"] == "0"
        pq = {k: labels[k] for k in ("instance_name_prefix", "platform", "size_class")}

        obs.drain({"proc": "w0"})
        obs.wait_for(
            "the worker drained",
            lambda: obs.total("redbarn_queue_workers", state="drained", **pq) == 1,
        )
        before = {
            "completed": obs.total(
                "redbarn_scheduler_tasks_completed_total", outcome="success", **pq
            ),
            "queued_h": obs.total(BB + "tasks_queued_duration_seconds_count", **pq),
            "exec_h": obs.total(BB + "tasks_executing_duration_seconds_count", **pq),
            "created": obs.total(BB + "in_flight_deduplications_total", outcome="New", **pq),
        }

        async def scenario() -> None:
            client = ReapiClient(obs.target)
            try:
                digests = [await client.prepare(["/bin/echo", f"op {i}"]) for i in range(10)]
                runs = [asyncio.ensure_future(client.execute(d)) for d in digests]
                await asyncio.to_thread(
                    obs.wait_for,
                    "ten queued operations on the gauge",
                    lambda: obs.total("redbarn_queue_operations_queued", **pq) == 10,
                )
                assert obs.total("redbarn_queue_oldest_queued_operation_age_seconds", **pq) > 0
                assert obs.total("redbarn_queue_operations_executing", **pq) == 0
                await asyncio.to_thread(obs.drain, {"proc": "w0"}, add=False)
                outcomes = await asyncio.gather(*runs)
                assert all(o.response.result.exit_code == 0 for o in outcomes)
            finally:
                await client.close()

        run(scenario())
        # Counters move in the frontend that decoded the reports; all of them here.
        obs.wait_for(
            "ten completions counted",
            lambda: (
                obs.total("redbarn_scheduler_tasks_completed_total", outcome="success", **pq)
                == before["completed"] + 10
            ),
        )
        assert (
            obs.total(BB + "tasks_queued_duration_seconds_count", **pq) == before["queued_h"] + 10
        )
        assert (
            obs.total(BB + "tasks_executing_duration_seconds_count", **pq) == before["exec_h"] + 10
        )
        assert (
            obs.total(BB + "in_flight_deduplications_total", outcome="New", **pq)
            == before["created"] + 10
        )
        # Hints reached every waiter: the lost hint counter is exported, and still 0.
        lost = {
            dict(ls)["waiter"]: v
            for (n, ls), v in obs.samples().items()
            if n == "redbarn_scheduler_hints_lost_total"
        }
        assert lost == {"worker": 0, "operation": 0}
        obs.wait_for(  # the gauges are read at most once a second
            "the queue gauge back to 0",
            lambda: obs.total("redbarn_queue_operations_queued", **pq) == 0,
        )
        # gRPC latency by method and code: a WaitExecution of an unknown name is NOT_FOUND.
        stub = re_grpc.ExecutionStub(grpc.insecure_channel(obs.target))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WaitExecution(re_pb2.WaitExecutionRequest(name="nope"), timeout=10))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        obs.wait_for(
            "the NOT_FOUND counted",
            lambda: (
                obs.total(
                    "grpc_server_handling_seconds_count",
                    grpc_method="WaitExecution",
                    grpc_code="NOT_FOUND",
                    grpc_type="server_stream",
                )
                == 1
            ),
        )
        # ... and the ten Executes ended OK.
        assert (
            obs.total(
                "grpc_server_handled_total",
                grpc_service="build.bazel.remote.execution.v2.Execution",
                grpc_method="Execute",
                grpc_code="OK",
            )
            >= 10
        )


def test_metrics_port_answers_unknown_paths_with_404(tmp_path: Path) -> None:
    with observed(tmp_path, worker=False) as obs:
        status, body = obs.get("/nope")
        assert status == 404 and "No page /nope" in body
        status, text = obs.get("/metrics")
        assert status == 200 and "redbarn_metrics_scrape_duration_seconds" in text
