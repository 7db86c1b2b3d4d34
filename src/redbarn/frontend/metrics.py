"""A frontend's Prometheus metrics: one registry of its own, served at `/metrics`.

Three kinds (docs/metrics.md lists every metric):

- queue gauges, read from Redis when scraped (`QueueGauges` over `queue.stats`): per
  instance name prefix, platform and size class, operations queued and executing,
  workers by state, and the age of the oldest queued operation. Any frontend reports
  the whole cluster's queue; cached for two seconds, so many scrapers cost Redis little.
- counters and histograms of what this frontend decoded (`Metrics` is the scheduler's
  `SchedulerEvents`): operations created, Action Cache hits, assignments with their
  queued time, completions by outcome with their execution time, requeues, fenced
  late reports, Lua script latency. Sum them over every frontend for the cluster.
- gRPC latency per method and code (`GrpcMetricsInterceptor`).

Names follow Buildbarn's bb_scheduler (`buildbarn_builder_in_memory_build_queue_*`)
and go-grpc-prometheus (`grpc_server_*`) where they measure the same thing; the rest
are `redbarn_*`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from redbarn.frontend.decoding import Continuation
from redbarn.queue import events as ev
from redbarn.queue.stats import QueueStats, Snapshot

BB = "buildbarn_builder_in_memory_build_queue_"
QUEUE_LABELS = ("instance_name_prefix", "platform", "size_class")
# Buildbarn's DecimalExponentialBuckets(-3, 6, 2): 1 ms to 1000 s, two per decade.
DURATION_BUCKETS = tuple(round(10 ** (k / 2), 6) for k in range(-6, 7))
# Lua scripts and gRPC calls: 100 us to 10 s.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 10.0)  # fmt: skip
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _q(queue: ev.QueueName) -> tuple[str, str, str]:
    return queue.instance_name_prefix, queue.platform, str(queue.size_class)


class QueueGauges(Collector):
    """Gauges of the last `QueueStats` snapshot (refreshed before each scrape)."""

    def __init__(self, stats: QueueStats) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        return self.families(self.stats.snapshot())

    @staticmethod
    def families(snapshot: Snapshot) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "redbarn_queue_operations_queued",
            "Operations waiting for a worker.",
            labels=QUEUE_LABELS,
        )
        executing = GaugeMetricFamily(
            "redbarn_queue_operations_executing",
            "Operations whose task a worker is executing (deduplicated ones included).",
            labels=QUEUE_LABELS,
        )
        workers = GaugeMetricFamily(
            "redbarn_queue_workers",
            "Workers by state: executing, idle (may get work), drained (drained or "
            "terminating, not executing).",
            labels=(*QUEUE_LABELS, "state"),
        )
        oldest = GaugeMetricFamily(
            "redbarn_queue_oldest_queued_operation_age_seconds",
            "Time the oldest queued operation has been queued (0 when none is).",
            labels=QUEUE_LABELS,
        )
        for s in snapshot.size_classes:
            labels = [s.instance_name_prefix, s.platform, str(s.size_class)]
            queued.add_metric(labels, s.queued)
            executing.add_metric(labels, s.executing)
            workers.add_metric([*labels, "executing"], s.workers_executing)
            workers.add_metric([*labels, "idle"], s.workers_idle)
            workers.add_metric([*labels, "drained"], s.workers_drained)
            oldest.add_metric(labels, s.oldest_queued_age)
        yield from (queued, executing, workers, oldest)


class Metrics:
    """The frontend's metrics: a registry, the scheduler's events, the gRPC interceptor."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl  # how long one rendering of /metrics (and a queue reading) serves
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.deduplications = Counter(
            BB + "in_flight_deduplications_total",
            "Execute requests that created an operation, and whether they were in-flight "
            "deduplicated (New, SameInvocation; OtherInvocation counts as New).",
            (*QUEUE_LABELS, "outcome"),
            registry=r,
        )
        self.scheduled = Counter(
            BB + "tasks_scheduled_total",
            "New tasks, queued (Queue) or handed straight to a parked worker (Worker).",
            (*QUEUE_LABELS, "assignment"),
            registry=r,
        )
        self.queued_duration = Histogram(
            BB + "tasks_queued_duration_seconds",
            "Time in seconds that tasks were queued before a worker got them.",
            QUEUE_LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.executing_duration = Histogram(
            BB + "tasks_executing_duration_seconds",
            "Time in seconds that tasks were executing before completing (the worker's "
            "own start and completion times), by outcome.",
            (*QUEUE_LABELS, "result", "grpc_code"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.completed = Counter(
            "redbarn_scheduler_tasks_completed_total",
            "Tasks completed, by outcome: success, action_failure, timeout, worker_lost, killed.",
            (*QUEUE_LABELS, "outcome"),
            registry=r,
        )
        self.requeued = Counter(
            "redbarn_scheduler_tasks_requeued_total",
            "Tasks put back in the queue: worker_lost, size_class_fallback.",
            (*QUEUE_LABELS, "reason"),
            registry=r,
        )
        self.late_reports = Counter(
            "redbarn_scheduler_late_reports_total",
            "Completion reports from workers that no longer held the assignment (discarded).",
            QUEUE_LABELS,
            registry=r,
        )
        self.hints_lost = Counter(
            "redbarn_scheduler_hints_lost_total",
            "Changes a waiter found by its own look at Redis because the hint that should "
            "have woken it did not come: waiter=worker (a parked worker given work: checked "
            "1 s into a park, and every 5 s for warm holds), waiter=operation (an Execute or WaitExecution stream, at its next "
            "lease renewal or keepalive). Normally 0; hints lost in a reconnect of the hint "
            "channel are not counted (every waiter re-reads then).",
            ("waiter",),
            registry=r,
        )
        for waiter in ev.HINT_WAITERS:
            self.hints_lost.labels(waiter)
        self.ac_hits = Counter(
            "redbarn_scheduler_action_cache_hits_total",
            "Execute requests answered from the Action Cache.",
            ("instance_name",),
            registry=r,
        )
        self.script_duration = Histogram(
            "redbarn_redis_script_duration_seconds",
            "Round trip of each Lua script call, as this frontend saw it.",
            ("script",),
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by method and status code.",
            ("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its end, by method and status code.",
            ("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.scrape_seconds = Histogram(
            "redbarn_metrics_scrape_duration_seconds",
            "Time to read the queue gauges for /metrics (once per second at most).",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.gauges: QueueGauges | None = None
        self._rendered = b""
        self._rendered_at = -1e9

    def add_queue_gauges(self, stats: QueueStats) -> None:
        self.gauges = QueueGauges(stats)
        self.registry.register(self.gauges)

    async def exposition(self) -> bytes:
        """The Prometheus text of every metric, queue gauges read first when due. The
        text is kept for `ttl` seconds (as long as the queue gauges are): scrapers in
        that time share one rendering (a few ms), so counters may lag by up to `ttl`."""
        now = time.monotonic()
        if now - self._rendered_at < self.ttl:
            return self._rendered
        start = time.perf_counter()
        if self.gauges is not None:
            await self.gauges.stats.refresh()
        self.scrape_seconds.observe(time.perf_counter() - start)
        self._rendered = generate_latest(self.registry)
        self._rendered_at = time.monotonic()
        return self._rendered

    # SchedulerEvents -------------------------------------------------------------------

    def operation_created(self, queue: ev.QueueName, *, dedup: str, to_worker: bool) -> None:
        labels = _q(queue)
        self.deduplications.labels(*labels, dedup).inc()
        if dedup == ev.NEW:
            self.scheduled.labels(*labels, "Worker" if to_worker else "Queue").inc()

    def action_cache_hit(self, instance_name: str) -> None:
        self.ac_hits.labels(instance_name).inc()

    def task_assigned(self, queue: ev.QueueName, *, queued_seconds: float) -> None:
        self.queued_duration.labels(*_q(queue)).observe(queued_seconds)

    def task_completed(
        self, queue: ev.QueueName, *, outcome: str, grpc_code: str, executing_seconds: float | None
    ) -> None:
        labels = _q(queue)
        self.completed.labels(*labels, outcome).inc()
        if executing_seconds is not None:
            self.executing_duration.labels(*labels, outcome, grpc_code).observe(executing_seconds)

    def task_requeued(self, queue: ev.QueueName, *, reason: str) -> None:
        self.requeued.labels(*_q(queue), reason).inc()

    def late_report(self, queue: ev.QueueName) -> None:
        self.late_reports.labels(*_q(queue)).inc()

    def script_called(self, script: str, seconds: float) -> None:
        self.script_duration.labels(script).observe(seconds)

    def hint_lost(self, waiter: str) -> None:
        self.hints_lost.labels(waiter).inc()

    # gRPC ------------------------------------------------------------------------------

    def interceptor(self) -> GrpcMetricsInterceptor:
        return GrpcMetricsInterceptor(self)


_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


def _code_name(context: Any, error: BaseException | None) -> str:
    code = None
    try:
        code = context.code()
    except Exception:  # an aio context without a code yet
        code = None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int) and code != 0:
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return str(c.name)
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by service, method and final status code."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        entry = self._wrapped.get(id(handler))
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = self._wrap(handler, details.method)
        if len(self._wrapped) < 1000:
            self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        kind = _TYPES[(bool(handler.request_streaming), bool(handler.response_streaming))]
        handled, seconds = self._m.grpc_handled, self._m.grpc_seconds

        def observe(start: float, context: Any, error: BaseException | None) -> None:
            code = _code_name(context, error)
            handled.labels(kind, service, name, code).inc()
            seconds.labels(kind, service, name, code).observe(time.perf_counter() - start)

        def timed(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(behavior):

                async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    start, error = time.perf_counter(), None
                    try:
                        async for item in behavior(request, context):
                            yield item
                    except BaseException as err:
                        error = err
                        raise
                    finally:
                        observe(start, context, error)

                return stream

            async def unary(request: Any, context: Any) -> Any:
                start, error = time.perf_counter(), None
                try:
                    return await behavior(request, context)
                except BaseException as err:
                    error = err
                    raise
                finally:
                    observe(start, context, error)

            return unary

        deser, ser = handler.request_deserializer, handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(timed(handler.stream_stream), deser, ser)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(timed(handler.stream_unary), deser, ser)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(timed(handler.unary_stream), deser, ser)
        return grpc.unary_unary_rpc_method_handler(timed(handler.unary_unary), deser, ser)
