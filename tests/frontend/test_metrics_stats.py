"""The queue gauges' read (lua/reads/queue_stats.lua through `QueueStats`) and the
scheduler events behind the counters, on the private redis-server and on fakeredis."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from redbarn.frontend.metrics import Metrics
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import events as ev
from redbarn.queue.stats import QueueStats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "queue"))

from qhelpers import FAST, assigned, execute, make, request, synchronize


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }


def value(text: bytes, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples(text).items()
        if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    )


async def test_queue_stats_count_queued_executing_and_workers_by_state(any_redis: Any) -> None:
    s = make(any_redis)
    metrics = Metrics(ttl=0)
    s.observe(metrics)
    stats = QueueStats(any_redis, s.registry, ttl=0)
    metrics.add_queue_gauges(stats)
    # Three workers: one will execute, one idle, one drained.
    for w in ("a", "b", "c"):
        await synchronize(s, request(w, prefer_idle=True))
    await s.control.set_drain(
        add=True, instance_name_prefix="", platform=re_pb2.Platform(), size_class=0,
        pattern={"thread": "c"},
    )  # fmt: skip
    for n in range(4):
        await execute(s, n, tool=f"inv{n % 2}")
    resp = await synchronize(s, request("a"))
    digest = assigned(resp)
    assert digest is not None
    text = await metrics.exposition()
    pq = {"instance_name_prefix": "", "size_class": "0"}
    assert value(text, "redbarn_queue_operations_queued", **pq) == 3
    assert value(text, "redbarn_queue_operations_executing", **pq) == 1
    assert value(text, "redbarn_queue_workers", state="executing", **pq) == 1
    assert value(text, "redbarn_queue_workers", state="idle", **pq) == 1
    assert value(text, "redbarn_queue_workers", state="drained", **pq) == 1
    assert value(text, "redbarn_queue_oldest_queued_operation_age_seconds", **pq) >= 0
    assert stats.snapshot().size_classes[0].oldest_exact
    assert value(text, "buildbarn_builder_in_memory_build_queue_in_flight_deduplications_total",
                 outcome="New", **pq) == 4  # fmt: skip
    assert value(text, "buildbarn_builder_in_memory_build_queue_tasks_queued_duration_seconds_count",
                 **pq) == 1  # fmt: skip
    # The worker completes with a failing exit code: an action failure, with its time.
    done = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=3))
    md = done.result.execution_metadata
    md.worker_start_timestamp.FromMilliseconds(1_000)
    md.worker_completed_timestamp.FromMilliseconds(3_500)
    await synchronize(s, request("a", "completed", digest, response=done, prefer_idle=True))
    # A late report of the same action by a worker that never held it is fenced.
    await synchronize(s, request("b", "completed", digest, response=done, prefer_idle=True))
    text = await metrics.exposition()
    assert value(text, "redbarn_scheduler_tasks_completed_total", outcome="action_failure",
                 **pq) == 1  # fmt: skip
    hist = "buildbarn_builder_in_memory_build_queue_tasks_executing_duration_seconds"
    assert value(text, hist + "_sum", result="action_failure", grpc_code="OK", **pq) == 2.5
    assert value(text, "redbarn_scheduler_late_reports_total", **pq) == 1
    assert value(text, "redbarn_queue_operations_queued", **pq) == 3
    assert value(text, "redbarn_queue_operations_executing", **pq) == 0


async def test_lost_worker_requeue_and_failure_are_counted(any_redis: Any) -> None:
    import asyncio
    import dataclasses

    s = make(any_redis, dataclasses.replace(FAST, max_attempts=2))
    seen: list[tuple[str, str]] = []

    class Recorder(ev.NoEvents):
        def task_requeued(self, queue: ev.QueueName, *, reason: str) -> None:
            seen.append(("requeued", reason))

        def task_completed(
            self, queue: ev.QueueName, *, outcome: str, grpc_code: str,
            executing_seconds: float | None,
        ) -> None:  # fmt: skip
            seen.append(("completed", outcome))

    s.observe(Recorder())
    await synchronize(s, request("a", prefer_idle=True))
    await execute(s, 1)
    for attempt in range(2):
        assert assigned(await synchronize(s, request("a"))) is not None
        await asyncio.sleep(FAST.worker_timeout + 0.1)  # its lease runs out
        await s.reaper.reap()
        if attempt == 0:
            assert seen == [("requeued", ev.REQUEUE_WORKER_LOST)]
    assert seen[-1] == ("completed", ev.WORKER_LOST)
