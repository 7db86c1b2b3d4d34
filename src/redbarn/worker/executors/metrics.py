"""MetricsBuildExecutor: count actions, and histogram stage durations and resource usage.

Labelled like Buildbarn's (`result`, `grpc_code`, `stage`). They live in a plain
`WorkerMetrics` object that the CLI logs periodically and at exit, that tests and
benchmarks read directly, and that `redbarn.worker.prometheus` exports at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from google.rpc import code_pb2

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import resourceusage_pb2
from redbarn.worker.executors.base import BuildExecutor, Job

_STAGES = {
    "FetchingInputs": ("input_fetch_start_timestamp", "input_fetch_completed_timestamp"),
    "Running": ("execution_start_timestamp", "execution_completed_timestamp"),
    "UploadingOutputs": ("output_upload_start_timestamp", "output_upload_completed_timestamp"),
}


# Buildbarn's stage buckets: 1 ms to 1000 s, two per decade (DecimalExponentialBuckets(-3, 6, 2)).
STAGE_BUCKETS = tuple(10 ** (k / 2) for k in range(-6, 7))


@dataclass
class Histogram:
    """Cumulative-free bucket counts over STAGE_BUCKETS (+Inf last) and the sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(STAGE_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(STAGE_BUCKETS, value)] += 1
        self.total += value


@dataclass
class WorkerMetrics:
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    duration_seconds: dict[str, float] = field(default_factory=dict)
    # (result, grpc_code, stage) -> that stage's durations
    stage_histograms: dict[tuple[str, str, str], Histogram] = field(default_factory=dict)
    posix: dict[str, float] = field(default_factory=dict)

    def record(self, response: re_pb2.ExecuteResponse) -> None:
        """Count one finished action: its result and code, stage times, resource usage."""
        result, code = result_label(response), code_pb2.Code.Name(response.status.code)
        self.actions[(result, code)] += 1
        meta = response.result.execution_metadata
        for stage, (start, end) in _STAGES.items():
            if meta.HasField(start) and meta.HasField(end):
                ns = getattr(meta, end).ToNanoseconds() - getattr(meta, start).ToNanoseconds()
                seconds = max(0, ns) / 1e9
                self.duration_seconds[stage] = self.duration_seconds.get(stage, 0.0) + seconds
                h = self.stage_histograms.setdefault((result, code, stage), Histogram())
                h.observe(seconds)
        for aux in meta.auxiliary_metadata:
            usage = resourceusage_pb2.POSIXResourceUsage()
            if aux.Unpack(usage):
                for name, value in (
                    ("user_time", usage.user_time.ToNanoseconds() / 1e9),
                    ("system_time", usage.system_time.ToNanoseconds() / 1e9),
                    ("voluntary_context_switches", usage.voluntary_context_switches),
                    ("involuntary_context_switches", usage.involuntary_context_switches),
                ):
                    self.posix[name] = self.posix.get(name, 0.0) + value

    def summary(self) -> str:
        done = ", ".join(f"{r}/{c}={n}" for (r, c), n in sorted(self.actions.items()))
        stages = ", ".join(f"{s}={v:.3f}s" for s, v in sorted(self.duration_seconds.items()))
        return f"actions: {done or 'none'}; stage time: {stages or 'none'}"


def result_label(response: re_pb2.ExecuteResponse) -> str:
    if response.status.code != code_pb2.OK:
        return "Failure"
    return "Success" if response.result.exit_code == 0 else "NonZeroExit"


class MetricsBuildExecutor:
    def __init__(self, inner: BuildExecutor, metrics: WorkerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def execute(self, job: Job) -> re_pb2.ExecuteResponse:
        response = await self._inner.execute(job)
        self._metrics.record(response)
        return response
