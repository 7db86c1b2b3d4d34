"""`redbarn up`: one command, a working cluster; clean stops; clear failures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
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
        assert f"redis-cli -s {tmp_path / 'data' / 'redis.sock'}" in banner
        kids = children_of(proc.pid)
        assert len(kids) >= 4, kids  # two redis-servers, frontend, worker

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
        # Blobs live in a Redis of their own, bounded and evicting; the scheduler's
        # never evicts. (Issue 15: the CAS can never stop the scheduler.)
        sched = redis.Redis(unix_socket_path=str(tmp_path / "data" / "redis.sock"))
        cas = redis.Redis(unix_socket_path=str(tmp_path / "data" / "cas.sock"))
        try:
            assert sched.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert sched.config_get("appendonly")["appendonly"] == "yes"
            assert cas.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
            assert int(cas.config_get("maxmemory")["maxmemory"]) == 2 << 30
            assert any(cas.scan_iter(match="redbarn:*cas:*", count=1000))
            assert not any(sched.scan_iter(match="redbarn:*cas:*", count=1000))
        finally:
            sched.close()
            cas.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(40) == 0
    assert proc.stderr is not None
    said = proc.stderr.read()
    assert "redbarn up: stopping; running actions finish first" in said
    assert said.rstrip().endswith("redbarn up: stopped")
    time.sleep(0.5)
    assert [k for k in kids if alive(k)] == [], "redbarn up left processes behind"

    # The CAS Redis's snapshot under --data-dir keeps the CAS across a restart (and the
    # scheduler's AOF keeps queued work).
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


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path holds at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive_children(kids: list[int]) -> list[int]:
    return [k for k in kids if alive(k)]


@pytest.mark.timeout(120)
def test_second_up_on_one_data_dir_is_refused_without_touching_the_first(
    short_dir: Path,
) -> None:
    data = short_dir
    first_port = free_port()
    first = up(first_port, data)
    try:
        wait_banner(first)
        kids = children_of(first.pid)
        lock_before = (data / "up.lock").read_text()
        sock_before = (data / "redis.sock").stat().st_ino
        second = up(free_port(), data)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert err.count("\n") == 1, err
        assert err.startswith(
            f"redbarn up: the data directory {data} is in use by another redbarn up "
            f"(pid {first.pid}, frontend 127.0.0.1:{first_port}, since "
        ), err
        assert err.rstrip().endswith("stop it, or pass another --data-dir")
        # The first one's files and processes are as they were.
        assert (data / "up.lock").read_text() == lock_before
        assert (data / "redis.sock").stat().st_ino == sock_before
        assert _alive_children(kids) == kids
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(40) == 0


@pytest.mark.timeout(120)
def test_sigkill_of_up_takes_its_processes_and_a_restart_comes_back(
    short_dir: Path,
) -> None:
    data = short_dir
    proc = up(free_port(), data)
    wait_banner(proc)
    kids = children_of(proc.pid)
    assert len(kids) == 4, kids  # two redis-servers, frontend, worker
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 2
    while _alive_children(kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_children(kids) == [], "processes outlived a SIGKILLed redbarn up"

    # The next up on the same directory is ready again: its worker is not locked
    # out by the park the killed frontend held (R38 only while the holder lives).
    again = up(free_port(), data)
    try:
        assert "Press Ctrl-C" in wait_banner(again, timeout=30)
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(40) == 0


@pytest.mark.timeout(120)
def test_up_stops_processes_an_earlier_up_left_running(
    short_dir: Path,
) -> None:
    """Where PR_SET_PDEATHSIG did not act (another OS; a child that ignored SIGTERM),
    the lock file's record of the children lets the next `up` stop them."""
    data = short_dir
    stale = subprocess.Popen(["sleep", "600"], start_new_session=True)
    stat = Path(f"/proc/{stale.pid}/stat").read_text()
    start = int(stat[stat.rindex(")") + 2 :].split()[19])
    (data / "up.lock").write_text(
        json.dumps(
            {
                "pid": 1,
                "children": [{"name": "redis-server", "pid": stale.pid, "start": start}],
            }
        )
    )
    proc = up(free_port(), data)
    try:
        wait_banner(proc)
        assert stale.wait(10) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
    assert proc.stderr is not None
    assert (
        f"redbarn up: stopping a redis-server (pid {stale.pid}) left running by an "
        "earlier redbarn up"
    ) in proc.stderr.read()


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_pasted_redis_cli_recipes_read_ups_redis(
    short_dir: Path,
) -> None:
    """docs/operations.md's recipe block, pasted into bash as it stands, reads the Redis
    of an `up` run with the default data directory, and the banner names the socket."""
    home = short_dir
    env = {k: v for k, v in os.environ.items() if k != "XDG_DATA_HOME"}
    env["HOME"] = str(home)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "redbarn", "up", "--port", str(port), "--workers", "1",
         "--platform", "OSFamily=linux"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        banner = wait_banner(proc)
        sock = home / ".local" / "share" / "redbarn" / "redis.sock"
        assert f"inspect: redis-cli -s {sock}" in banner
        doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
        section = doc[doc.index("## Inspecting with redis-cli") :]
        block = section[section.index("```sh\n") + 6 :]
        block = block[: block.index("```")]
        # PSUBSCRIBE streams until interrupted: the rest runs as pasted.
        script = "\n".join(line for line in block.splitlines() if "PSUBSCRIBE" not in line)
        out = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script + '\necho "P=$P"'],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert '{"OSFamily": "linux"}' in out.stdout or "OSFamily" in out.stdout
        chosen = out.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"P=[0-9a-f]{16}", chosen), chosen
        # The worker is registered, as the banner promised: its lease is listed.
        assert '{"hostname"' in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0


@pytest.mark.timeout(120)
def test_up_passes_flags_and_log_level_to_its_children(
    short_dir: Path,
) -> None:
    data = short_dir
    proc = up(
        free_port(), data, "--log-level", "debug",
        "--frontend-arg=--max-blob-size=64MiB", "--worker-arg=--cache-size=123MiB",
    )  # fmt: skip
    try:
        wait_banner(proc)
        argv = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for pid in children_of(proc.pid)
        }
        frontend = next(a for a in argv.values() if b"frontend" in a)
        worker = next(a for a in argv.values() if b"worker" in a)
        assert b"--max-blob-size=64MiB" in frontend and b"debug" in frontend
        assert b"--cache-size=123MiB" in worker and b"debug" in worker
        assert " DEBUG " in (data / "redbarn-up.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["frontend", "--platform-queue-time", "1s"],  # --platform-queue-timeout
        ["worker", "--front", "127.0.0.1:1"],  # --frontend
        ["up", "--work", "2"],  # --workers
    ],
)
def test_abbreviated_flags_are_refused(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "redbarn", *argv], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert f"unrecognized arguments: {argv[1]}" in out.stderr
