"""`redbarn worker --metrics-listen`: a real worker process serves /metrics with its
actions by result, stage times and input cache figures (issue 17)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from reapi_client import ReapiClient, digest_of  # type: ignore[import-not-found]

from redbarn.proto import remote_execution_pb2 as re_pb2
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

        data = b"an input file of the two actions\n"
        root = re_pb2.Directory(files=[re_pb2.FileNode(name="in.txt", digest=digest_of(data))])

        async def two() -> None:
            client = ReapiClient(obs.target)
            try:
                for argv in (["/bin/cat", "in.txt"], ["/bin/sh", "-c", "exit 3"]):
                    d = await client.prepare(argv, input_root=root, extra_blobs=[data])
                    await client.execute(d)
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
        # Buildbarn's stage histogram, labelled by result, grpc_code and stage.
        for result in ("Success", "NonZeroExit"):
            for stage in ("FetchingInputs", "Running", "UploadingOutputs"):
                labels = (("grpc_code", "OK"), ("result", result), ("stage", stage))
                count = ("buildbarn_builder_build_executor_duration_seconds_count", labels)
                assert samples[count] == 1, (result, stage)
                inf = (
                    "buildbarn_builder_build_executor_duration_seconds_bucket",
                    tuple(sorted((*labels, ("le", "+Inf")))),
                )
                assert samples[inf] == 1
        # The first action fetched in.txt; the second found it in the cache.
        assert samples[("redbarn_worker_input_cache_misses_total", ())] == 1
        assert samples[("redbarn_worker_input_cache_hits_total", ())] == 1
        assert samples[("redbarn_worker_input_cache_fetched_bytes_total", ())] == len(data)
        assert ("redbarn_worker_input_cache_bytes", ()) in samples
        assert ("redbarn_worker_input_cache_evictions_total", ()) in samples
