"""A worker's Prometheus metrics at `/metrics` of `redbarn worker --metrics-listen HOST:PORT`.

Read at scrape time from the objects the worker already keeps: `WorkerMetrics` (the
executor chain's counts and stage time) and the input cache (`LocalCache`). Served by a
small asyncio HTTP server on the worker's loop: GET /metrics only, one request per
connection, 8 KiB of request head at most, 10 s to send it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from redbarn.worker.executors.metrics import STAGE_BUCKETS, WorkerMetrics

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WorkerCollector(Collector):
    def __init__(self, metrics: WorkerMetrics, cache: Any) -> None:
        self.metrics = metrics
        self.cache = cache

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        actions = CounterMetricFamily(
            "redbarn_worker_actions",
            "Actions this worker finished, by result (Success, NonZeroExit, Failure) and "
            "status code.",
            labels=("result", "grpc_code"),
        )
        for (result, code), n in sorted(m.actions.items()):
            actions.add_metric([result, code], n)
        stages = HistogramMetricFamily(
            "buildbarn_builder_build_executor_duration_seconds",
            "Time spent per build execution stage (FetchingInputs, Running, "
            "UploadingOutputs), in seconds.",
            labels=("result", "grpc_code", "stage"),
        )
        bounds = [*(f"{b:g}" for b in STAGE_BUCKETS), "+Inf"]
        for (result, code, stage), h in sorted(m.stage_histograms.items()):
            cumulative, running = [], 0
            for bound, n in zip(bounds, h.counts, strict=True):
                running += n
                cumulative.append((bound, running))
            stages.add_metric([result, code, stage], cumulative, h.total)
        yield actions
        yield stages
        c = self.cache
        size = GaugeMetricFamily(
            "redbarn_worker_input_cache_bytes", "Bytes held by the input cache."
        )
        size.add_metric([], float(c.total_bytes))
        limit = GaugeMetricFamily(
            "redbarn_worker_input_cache_max_bytes", "Size the input cache evicts down to."
        )
        limit.add_metric([], float(c.max_bytes))
        evictions = CounterMetricFamily(
            "redbarn_worker_input_cache_evictions", "Blobs evicted from the input cache (LRU)."
        )
        evictions.add_metric([], float(c.evictions))
        yield from (size, limit, evictions)
        for value, name, help_text in (
            (c.hits, "redbarn_worker_input_cache_hits", "Input files found in the cache."),
            (c.misses, "redbarn_worker_input_cache_misses",
             "Input files not in the cache (fetched, or copied from the other mode's entry)."),
            (c.fetched_bytes, "redbarn_worker_input_cache_fetched_bytes",
             "Bytes of input blobs read from the CAS into the cache."),
        ):  # fmt: skip
            fam = CounterMetricFamily(name, help_text)
            fam.add_metric([], float(value))
            yield fam


async def serve_metrics(address: str, registry: CollectorRegistry) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = head.split(b"\r\n", 1)[0].split(b" ")
            if len(line) == 3 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE, generate_latest(registry)
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"GET /metrics only\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
                "\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await asyncio.wait_for(writer.drain(), 10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):  # fmt: skip
            pass
        finally:
            writer.close()

    host, _, port = address.rpartition(":")
    return await asyncio.start_server(handle, host.strip("[]") or None, int(port), limit=8192)
