"""`redbarn state` against a real frontend and worker process (issue 17): its tables and
its JSON list the live worker and a queued operation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from frontend.observe_cluster import observed, run
from reapi_client import ReapiClient


def state(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redbarn", "state", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_state_lists_live_worker_and_queued_operation(tmp_path: Path) -> None:
    with observed(tmp_path) as obs:
        obs.drain({"proc": "w0"})  # the worker stays live but takes no work

        async def enqueue() -> str:
            client = ReapiClient(obs.target)
            digest = await client.prepare(["/bin/echo", "for redbarn state"])
            task = asyncio.ensure_future(client.execute(digest))
            await asyncio.sleep(1.0)
            task.cancel()
            await client.close()
            return f"{digest.hash}-{digest.size_bytes}"

        action = run(enqueue())
        out = state("--frontend", obs.target)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert "Platform queues:" in text and "Workers:" in text and "Drains:" in text
        assert '{"hostname": ' in text and '"proc": "w0"' in text
        op_line = next(line for line in text.splitlines() if action in line and "queued" in line)
        assert op_line.split()[1] == "queued"
        assert '{"proc": "w0"}' in text  # the drain

        out = state("--frontend", obs.target, "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert [w["id"]["proc"] for w in doc["workers"]] == ["w0"]
        assert doc["workers"][0]["drained"] is True
        queued = [op for op in doc["operations"] if "queued" in op]
        assert [
            f"{op['action_digest']['hash']}-{op['action_digest']['size_bytes']}" for op in queued
        ] == [action]
        assert doc["platform_queues"][0]["size_class_queues"][0]["workers_count"] == 1


def test_state_names_the_frontend_it_cannot_reach_and_bad_flags(tmp_path: Path) -> None:
    out = state("--frontend", "127.0.0.1:1", "--limit", "5")
    assert out.returncode == 1
    assert "redbarn state: 127.0.0.1:1: UNAVAILABLE" in out.stderr
    out = state("--frontend", "127.0.0.1:1", "--tls-cert", "x.pem")
    assert out.returncode == 2 and "--tls-cert and --tls-key must be given together" in out.stderr
    out = state("--limit", "0")
    assert out.returncode == 2 and 'invalid --limit "0"' in out.stderr
    missing = tmp_path / "none"
    out = state("--token-file", str(missing))
    assert out.returncode == 2 and f"cannot read --token-file {missing}" in out.stderr


def test_state_sends_the_token_file(tmp_path: Path) -> None:
    tokens = tmp_path / "admins"
    tokens.write_text("admin-secret\n")
    with observed(tmp_path, "--admin-tokens", str(tokens), worker=False) as obs:
        out = state("--frontend", obs.target)
        assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr
        mine = tmp_path / "token"
        mine.write_text("admin-secret\n")
        out = state("--frontend", obs.target, "--token-file", str(mine))
        assert out.returncode == 0, out.stderr
        assert "Platform queues: none" in out.stdout
