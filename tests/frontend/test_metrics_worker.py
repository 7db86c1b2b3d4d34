"""`redbarn worker --metrics-listen`: a real worker process serves /metrics with its
actions by result, stage times and input cache figures (issue 17)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from reapi_client import ReapiClient  # type: ignore[import-not-found]

from redbarn.runtime.redisserver import free_port

from .observe_cluster import observed, run


def worker_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_worker_metrics_count_actions_stages_and_cache(tmp_path: Path) -> None:
    port = free_port()
    with observed(tmp_path, worker=False) as obs:
        obs.cluster.add_worker(obs.target, "--metrics-listen", f"127.0.0.1:{port}")
        obs.wait_workers(1)

        async def two() -> None:
            client = ReapiClient(obs.target)
            try:
                for argv in (["/bin/echo", "ok"], ["/bin/sh", "-c", "exit 3"]):
                    await client.execute(await client.prepare(argv))
            finally:
                await client.close()

        run(asyncio.wait_for(two(), 60))
        url = f"http://127.0.0.1:{port}/metrics"
        samples = worker_samples(url)
        assert (
            samples[("redbarn_worker_actions_total", (("grpc_code", "OK"), ("result", "Success")))]
            == 1
        )
        assert (
            samples[
                ("redbarn_worker_actions_total", (("grpc_code", "OK"), ("result", "NonZeroExit")))
            ]
            == 1
        )
        assert samples[("redbarn_worker_stage_duration_seconds_total", (("stage", "run"),))] > 0
        assert ("redbarn_worker_input_cache_bytes", ()) in samples
        assert ("redbarn_worker_input_cache_evictions_total", ()) in samples
