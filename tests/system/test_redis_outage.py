"""A frontend whose Redis goes away logs the outage once, not every loop every tick
(issue 14, item 7), and names its Redis at start (item 8a).

Real processes (tests/cluster.py): a private redis-server, one `redbarn frontend`, one
worker synchronizing, and a client calling FindMissingBlobs and Execute through the
outage. The frontend's log is counted while Redis is down and after it is back.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from cluster import Cluster
from reapi_client import ReapiClient, digest_of

from redbarn.proto import remote_execution_pb2 as re_pb2

from .conftest import FAST

pytestmark = [pytest.mark.system, pytest.mark.slow]

OUTAGE = 4.0  # seconds Redis stays down


def log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


async def call_codes(client: ReapiClient) -> list[tuple[grpc.StatusCode, str]]:
    """One FindMissingBlobs and one Execute: (code, details) of each failure."""
    failures: list[tuple[grpc.StatusCode, str]] = []
    try:
        await client.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b"x")]), timeout=5
        )
    except grpc.aio.AioRpcError as err:
        failures.append((err.code(), err.details() or ""))
    try:
        request = re_pb2.ExecuteRequest(action_digest=digest_of(b"no such action"))
        async for _ in client.execution.Execute(request, timeout=5):
            pass
    except grpc.aio.AioRpcError as err:
        failures.append((err.code(), err.details() or ""))
    return failures


async def test_redis_outage_logged_once_then_recovery(tmp_path: Path) -> None:
    with Cluster(tmp_path, frontend_args=FAST) as c:
        c.add_frontend()
        target = f"127.0.0.1:{c.frontend_ports[0]}"
        c.add_worker(target)
        log = c.frontends[0].log_path
        client = ReapiClient(target)
        try:
            await asyncio.sleep(1.0)  # the worker synchronizes, the reaper ticks
            start_up = log_lines(log)
            assert any(f"redis {c.redis_url}" in line for line in start_up), start_up
            before = len(start_up)
            address = c.redis_url.removeprefix("redis://").removesuffix("/0")

            c.stop_redis(kill=True)
            failures: list[tuple[grpc.StatusCode, str]] = []
            end = time.monotonic() + OUTAGE
            while time.monotonic() < end:
                failures += await call_codes(client)
                await asyncio.sleep(0.2)
            outage = log_lines(log)[before:]

            # Callers still get UNAVAILABLE with a message that says why.
            assert failures, "calls failed during the outage"
            for code, details in failures:
                assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
                assert "unavailable" in details.lower(), details
            # The log: the outage once, naming Redis and the error, no traceback.
            assert len(outage) <= 2, "\n".join(outage)
            assert not any("Traceback" in line for line in outage), "\n".join(outage)
            down = [line for line in outage if "unreachable" in line]
            assert len(down) == 1, "\n".join(outage)
            assert c.redis_url in down[0] or address in down[0], down[0]

            c.start_redis()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                back = [line for line in log_lines(log)[before:] if "reachable again" in line]
                if back:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # nothing else follows the recovery line
            after = log_lines(log)[before:]
            back = [line for line in after if "reachable again" in line]
            assert len(back) == 1, "\n".join(after)
            assert c.redis_url in back[0], back[0]
            assert len(after) <= len(outage) + 1, "\n".join(after)
            missing = await client.cas.FindMissingBlobs(
                re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(b"x")]), timeout=5
            )
            assert list(missing.missing_blob_digests) == [digest_of(b"x")]
        except BaseException:
            print(c.logs())
            raise
        finally:
            await client.close()
