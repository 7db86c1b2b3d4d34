"""`redbarn up`: one command, a working cluster; clean stops; clear failures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reapi_client import ReapiClient

from redbarn.runtime.redisserver import free_port

pytestmark = [pytest.mark.system]


def up(
    port: int, data: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redbarn",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--workers",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_banner(proc: subprocess.Popen[str], timeout: float = 40) -> str:
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Press Ctrl-C" in line:
            return "".join(lines)
    raise AssertionError(f"no banner: {''.join(lines)} {proc.stderr.read() if proc.stderr else ''}")


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.timeout(120)
def test_up_serves_prints_flags_and_stops_cleanly_keeping_data(tmp_path: Path) -> None:
    port = free_port()
    proc = up(port, tmp_path / "data", "--platform", "OSFamily=linux")
    try:
        banner = wait_banner(proc)
        assert f"--remote_executor=grpc://127.0.0.1:{port}" in banner
        assert "--remote_default_exec_properties=OSFamily=linux" in banner
        assert "redis-cli -p " in banner
        kids = children_of(proc.pid)
        assert len(kids) >= 3, kids  # redis-server, frontend, worker

        async def run_one() -> tuple[str, int]:
            client = ReapiClient(f"127.0.0.1:{port}")
            try:
                platform_props = [("OSFamily", "linux")]
                from redbarn.proto import remote_execution_pb2 as re_pb2

                platform = re_pb2.Platform(
                    properties=[
                        re_pb2.Platform.Property(name=k, value=v) for k, v in platform_props
                    ]
                )
                digest = await client.prepare(
                    ["/bin/sh", "-c", "echo hello from up"], platform=platform
                )
                outcome = await client.execute(digest, deadline=60)
                assert outcome.response.result.exit_code == 0
                return digest.hash, digest.size_bytes
            finally:
                await client.close()

        action_hash, action_size = asyncio.run(run_one())
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(40) == 0
    time.sleep(0.5)
    assert [k for k in kids if alive(k)] == [], "redbarn up left processes behind"

    # The AOF under --data-dir keeps the CAS (and queued work) across a restart.
    port = free_port()
    proc = up(port, tmp_path / "data")
    try:
        wait_banner(proc)

        async def still_there() -> bool:
            client = ReapiClient(f"127.0.0.1:{port}")
            try:
                from redbarn.proto import remote_execution_pb2 as re_pb2

                reply = await client.cas.FindMissingBlobs(
                    re_pb2.FindMissingBlobsRequest(
                        blob_digests=[re_pb2.Digest(hash=action_hash, size_bytes=action_size)]
                    )
                )
                return len(reply.missing_blob_digests) == 0
            finally:
                await client.close()

        assert asyncio.run(still_there()), "the Action blob did not survive the restart"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0


def test_up_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = up(port, tmp_path / "d")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert (
        err.strip()
        == f"redbarn up: port {port} on 127.0.0.1 is already in use (pick another with --port)"
    )


def test_up_missing_redis_binary_is_one_clear_line(tmp_path: Path) -> None:
    proc = up(
        free_port(), tmp_path / "d", env={"REDBARN_REDIS_SERVER": str(tmp_path / "no-such-redis")}
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.count("\n") == 1 and "no-such-redis is not an executable" in err


def test_worker_heartbeat_feeds_the_compose_health_check(tmp_path: Path) -> None:
    """compose.yaml's worker health check reads the file the worker touches."""
    from cluster import Cluster

    with Cluster(tmp_path, frontend_args=["--idle-sync-timeout", "1s"]) as c:
        c.add_frontend()
        c.add_worker(f"127.0.0.1:{c.frontend_ports[0]}")
        beat = tmp_path / "worker-0" / "build" / ".heartbeat"
        deadline = time.monotonic() + 20
        while not beat.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        check = [sys.executable, "-m", "redbarn.runtime.healthcheck", "--heartbeat", str(beat)]
        assert subprocess.run(check).returncode == 0
        stale = [*check, "--max-age", "0"]
        time.sleep(1.1)
        c.frontends[0].stop()
        assert subprocess.run(stale, capture_output=True).returncode == 1
        frontend = [
            sys.executable,
            "-m",
            "redbarn.runtime.healthcheck",
            f"127.0.0.1:{c.frontend_ports[0]}",
        ]
        assert subprocess.run(frontend, capture_output=True).returncode == 1
