"""Bazel 4.2.3 as a remote-cache client of a frontend, directly and through the proxy.

Local execution, `--remote_cache` only: the CAS, ByteStream, Action Cache and
Capabilities as a real client uses them. After `bazel clean` every remotable action
must be a remote cache hit. Slow (~40 s): runs only with REDBARN_BAZEL_CACHE_E2E=1
and a `bazel` on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from redbarn.runtime.redisserver import RedisServer, free_port

pytestmark = [
    pytest.mark.system,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("REDBARN_BAZEL_CACHE_E2E") != "1", reason="set REDBARN_BAZEL_CACHE_E2E=1"
    ),
]

E2E = Path(__file__).resolve().parent.parent / "e2e"
FRONTEND = (
    "import argparse, sys\nfrom redbarn.frontend import cli\n"
    "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
    "sys.exit(cli.run(p.parse_args(sys.argv[1:])))\n"
)


def start_frontend(*flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", FRONTEND, "--listen", f"127.0.0.1:{port}", *flags]
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
    return proc, port


@pytest.fixture
def redis_for_bazel() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.mark.parametrize("via_proxy", [False, True])
def test_bazel_remote_cache_hits_after_clean(redis_for_bazel: RedisServer, via_proxy: bool) -> None:
    sys.path.insert(0, str(E2E))
    from bazel import Bazel, find_bazel  # type: ignore[import-not-found]

    if find_bazel() is None:
        pytest.skip("no bazel on PATH")
    procs = []
    storage, port = start_frontend("--redis", redis_for_bazel.url)
    procs.append(storage)
    if via_proxy:
        proxy, port = start_frontend(
            "--redis", redis_for_bazel.url, "--storage", f"grpc://127.0.0.1:{port}"
        )
        procs.append(proxy)
    try:
        with Bazel() as bazel:
            flags = [f"--remote_cache=grpc://127.0.0.1:{port}", "--remote_timeout=60"]
            first = bazel.build(*flags).check()
            assert "remote cache hit" not in first.summary.kinds
            bazel.clean()
            second = bazel.build(*flags).check()
            assert second.summary.kinds.get("remote cache hit", 0) >= 15, second.output[-2000:]
            assert set(second.summary.kinds) <= {"remote cache hit", "internal"}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
