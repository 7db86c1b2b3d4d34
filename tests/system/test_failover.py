"""Redis failover under load (issue 19, item 6): a Redis Cluster with replicas, and a
Sentinel setup, each losing the master that holds the platform queue mid-run.

Real processes: redis-server nodes (tests/failover_helpers.py), two `redbarn frontend`
processes given `redis+cluster://` or `redis+sentinel://` URLs, one worker on each, and
a client sending a few hundred short actions through both frontends the way Bazel
does (tests/reapi_client.py: reattach with WaitExecution, execute again on NOT_FOUND).
Every action must complete with exit code 0; some may run twice. The client-visible
outage (the longest stretch without a completed action around the kill) is printed for
the report, not asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cluster import Proc, redbarn, wait_serving
from failover_helpers import (
    RedisNodes,
    cluster_masters,
    platform_master,
    sentinel_master,
    start_cluster,
    start_sentinels,
)
from reapi_client import ReapiClient

from redbarn.runtime.redisserver import free_port

from .conftest import FAST

pytestmark = [pytest.mark.system, pytest.mark.slow]

ACTIONS = 240
IN_FLIGHT = 24
KILL_AFTER = 80  # completed actions before the master is killed


@dataclass
class Fleet:
    """Two frontends on one Redis URL, a worker on each."""

    tmp: Path
    url: str
    frontends: list[Proc] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)

    def start(self) -> Fleet:
        for i in range(2):
            port = free_port()
            target = f"127.0.0.1:{port}"
            p = Proc(
                f"frontend-{i}",
                redbarn("frontend", "--listen", target, "--redis", self.url, *FAST),
                self.tmp / f"frontend-{i}.log",
            ).start()
            self.frontends.append(p)
            self.targets.append(target)
            wait_serving(target, proc=p)
        for i, target in enumerate(self.targets):
            root = self.tmp / f"worker-{i}"
            self.workers.append(
                Proc(
                    f"worker-{i}",
                    redbarn(
                        "worker",
                        "--frontend",
                        target,
                        "--concurrency",
                        "4",
                        "--build-dir",
                        str(root / "build"),
                        "--cache-dir",
                        str(root / "cache"),
                        "--label",
                        f"proc=w{i}",
                    ),
                    self.tmp / f"worker-{i}.log",
                ).start()
            )
        return self

    def stop(self) -> None:
        for p in [*self.workers, *self.frontends]:
            p.stop(grace=5)

    def logs(self) -> str:
        return "\n".join(
            f"===== {p.name}\n{p.log()[-4000:]}" for p in [*self.frontends, *self.workers]
        )


FAILED_PRECONDITION = 9  # google.rpc.Code


@dataclass
class Run:
    done_at: list[float] = field(default_factory=list)
    reattaches: int = 0
    killed_at: float = 0.0
    # (seconds after the kill, details) of each Execute refused for a missing blob
    reuploads: list[tuple[float, str]] = field(default_factory=list)

    def outage(self) -> float:
        """The longest stretch without a completion that spans the kill."""
        before = [t for t in self.done_at if t <= self.killed_at]
        after = sorted(t for t in self.done_at if t > self.killed_at)
        if not after:
            return float("inf")
        start = max(before) if before else self.killed_at
        gaps = [after[0] - start] + [b - a for a, b in itertools.pairwise(after)]
        return max(gaps)


async def run_actions(fleet: Fleet, kill: object, tag: str) -> Run:
    """ACTIONS distinct actions, alternating frontends, IN_FLIGHT at a time; `kill()`
    runs once KILL_AFTER have completed."""
    clients = [ReapiClient(t) for t in fleet.targets]
    run = Run()
    gate = asyncio.Semaphore(IN_FLIGHT)
    killed = asyncio.Event()

    async def one(i: int) -> None:
        client = clients[i % 2]
        async with gate:
            for attempt in range(5):
                digest = await client.prepare(["/bin/true"], env={"ACTION": f"{tag}-{i}"})
                try:
                    outcome = await client.execute(digest, deadline=80)
                    if outcome.response.status.code == FAILED_PRECONDITION and attempt < 4:
                        # The same loss seen by the worker (the Command or an input
                        # vanished after the Execute checked it): Bazel re-uploads and
                        # retries on this status too.
                        run.reuploads.append(
                            (time.monotonic() - run.killed_at, outcome.response.status.message)
                        )
                        continue
                    break
                except grpc.aio.AioRpcError as err:
                    # A blob uploaded just before the kill and not yet replicated is
                    # gone: REAPI says upload the missing inputs and retry, as Bazel does.
                    if err.code() != grpc.StatusCode.FAILED_PRECONDITION or attempt == 4:
                        raise
                    run.reuploads.append((time.monotonic() - run.killed_at, err.details() or ""))
        assert outcome.response.status.code == 0, (i, outcome.response)
        assert outcome.response.result.exit_code == 0, (i, outcome.response)
        run.reattaches += outcome.reattaches
        run.done_at.append(time.monotonic())
        if len(run.done_at) >= KILL_AFTER and not killed.is_set():
            killed.set()
            run.killed_at = time.monotonic()
            await asyncio.to_thread(kill)  # type: ignore[arg-type]

    try:
        await asyncio.gather(*(one(i) for i in range(ACTIONS)))
    finally:
        for c in clients:
            await c.close()
    assert killed.is_set()
    return run


def executions(fleet: Fleet) -> int:
    """Actions the workers ran to exit 0 (a repeat after the failover counts twice)."""
    return sum(p.log().count(" exit 0 in ") for p in fleet.workers)


def outage_lines(fleet: Fleet) -> list[int]:
    """Per frontend: how many log lines opened a Redis outage."""
    return [
        sum("is unreachable (" in line for line in p.log().splitlines()) for p in fleet.frontends
    ]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[RedisNodes]:
    n = RedisNodes(tmp_path / "redis")
    try:
        yield n
    finally:
        n.stop()


async def test_cluster_master_of_the_platform_queue_killed_mid_run(
    tmp_path: Path, nodes: RedisNodes
) -> None:
    ports = start_cluster(nodes, masters=3, replicas=1)
    fleet = Fleet(tmp_path, f"redis+cluster://127.0.0.1:{ports[0]}").start()
    try:
        # Warm up: the workers register the platform queue.
        warm = ReapiClient(fleet.targets[0])
        digest = await warm.prepare(["/bin/true"], env={"ACTION": "warm-up"})
        assert (await warm.execute(digest, deadline=60)).response.result.exit_code == 0
        await warm.close()
        victim, domain = platform_master(ports)

        def kill() -> None:
            nodes.kill(victim)

        run = await run_actions(fleet, kill, "cluster")
        survivors = [p for p in ports if p != victim]
        masters = cluster_masters(survivors[0])
        assert victim not in masters, "the killed master still holds slots"
        assert len(masters) == 3, masters  # its replica took over
        lines = outage_lines(fleet)
        print(
            f"\ncluster failover: {ACTIONS} actions done, platform queue {domain} on "
            f":{victim} killed after {KILL_AFTER}; client-visible outage {run.outage():.2f} s; "
            f"{run.reattaches} reattaches; outage log lines per frontend {lines}; "
            f"re-uploads after a missing blob {run.reuploads}; "
            f"{executions(fleet) - ACTIONS - 1} ran twice"
        )
        assert all(n <= 1 for n in lines), fleet.logs()
    except BaseException:
        print(fleet.logs())
        print(nodes.logs())
        raise
    finally:
        fleet.stop()


async def test_sentinel_master_killed_mid_run(tmp_path: Path, nodes: RedisNodes) -> None:
    master, replica, sentinels = start_sentinels(nodes)
    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinels)
    fleet = Fleet(tmp_path, f"redis+sentinel://{hosts}/mymaster/0").start()
    try:

        def kill() -> None:
            nodes.kill(master)

        run = await run_actions(fleet, kill, "sentinel")
        assert sentinel_master(sentinels[0]) == replica
        lines = outage_lines(fleet)
        print(
            f"\nsentinel failover: {ACTIONS} actions done, master :{master} killed after "
            f"{KILL_AFTER}; client-visible outage {run.outage():.2f} s; {run.reattaches} "
            f"reattaches; outage log lines per frontend {lines}; re-uploads {run.reuploads}; "
            f"{executions(fleet) - ACTIONS} ran twice"
        )
        assert all(n <= 1 for n in lines), fleet.logs()
    except BaseException:
        print(fleet.logs())
        print(nodes.logs())
        raise
    finally:
        fleet.stop()
