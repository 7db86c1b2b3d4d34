"""A real frontend process with --metrics-listen, a real worker process, and helpers to
read /metrics and the pages (shared by test_metrics*, test_web*, test_state*)."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from cluster import Cluster, Proc
from prometheus_client.parser import text_string_to_metric_families

from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import buildqueuestate_pb2_grpc as bq_grpc
from redbarn.runtime.redisserver import free_port

FAST = [
    "--worker-timeout", "3s", "--idle-sync-timeout", "2s", "--operation-retention", "30s",
    "--execution-update-interval", "5s", "--platform-queue-timeout", "60s",
]  # fmt: skip


@dataclass
class Observed:
    cluster: Cluster
    frontend: Proc
    target: str  # gRPC host:port of the frontend
    http: str  # http://host:port of --metrics-listen

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.http + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, parsed as Prometheus text: (name, labels) -> value."""
        status, text = self.get("/metrics")
        assert status == 200, text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def total(self, name: str, **labels: str) -> float:
        """Sum of `name`'s samples whose labels include `labels`."""
        return sum(
            v
            for (n, ls), v in self.samples().items()
            if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
        )

    def bqs(self) -> Any:
        return bq_grpc.BuildQueueStateStub(grpc.insecure_channel(self.target))

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what} not within {timeout}s\n{self.cluster.logs()}")

    def wait_workers(self, n: int) -> None:
        self.wait_for(f"{n} workers", lambda: self.total("redbarn_queue_workers") >= n)

    def drain(self, pattern: dict[str, str], *, add: bool = True, size_class: int = 0) -> None:
        """AddDrain (or RemoveDrain) on the empty-platform queue of instance prefix ""."""
        req = bq_pb2.AddOrRemoveDrainRequest()
        req.size_class_queue_name.platform_queue_name.instance_name_prefix = ""
        req.size_class_queue_name.size_class = size_class
        req.worker_id_pattern.update(pattern)
        stub = self.bqs()
        (stub.AddDrain if add else stub.RemoveDrain)(req, timeout=10)


@contextmanager
def observed(tmp: Path, *frontend_args: str, worker: bool = True) -> Iterator[Observed]:
    """A cluster of one frontend (with --metrics-listen) and, with `worker`, one worker."""
    http_port = free_port()
    with Cluster(tmp) as cluster:
        fe = cluster.add_frontend(
            "--metrics-listen", f"127.0.0.1:{http_port}", *FAST, *frontend_args
        )
        target = f"127.0.0.1:{cluster.frontend_ports[0]}"
        obs = Observed(cluster, fe, target, f"http://127.0.0.1:{http_port}")
        if worker:
            cluster.add_worker(target)
            obs.wait_workers(1)
        try:
            yield obs
        except BaseException:
            print(cluster.logs())
            raise


def run(coro: Any) -> Any:
    return asyncio.run(coro)
