"""compose.yaml's topology with local processes: one Redis, three frontends, nginx
running the repository's LB config, two workers pointed at the LB. One frontend is
stopped while actions are in flight; every action completes, and runs exactly once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from cluster import Cluster
from reapi_client import ReapiClient, digest_of

from .conftest import FAST

pytestmark = [pytest.mark.system, pytest.mark.slow]

ACTIONS = 40


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx not installed",
)
async def test_actions_through_nginx_survive_a_frontend_stop(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with Cluster(tmp_path, frontend_args=FAST) as c:
        for _ in range(3):
            c.add_frontend()
        c.add_nginx()
        lb = f"127.0.0.1:{c.lb_port}"
        for _ in range(2):
            c.add_worker(lb, concurrency=2)
        clients = [ReapiClient(lb, invocation=f"build-{i}") for i in range(4)]
        try:
            digests = []
            for i in range(ACTIONS):
                marker = runs / f"a{i}"
                argv = ["/bin/sh", "-c", f"echo run >> {marker}; sleep 0.3; echo out-{i}"]
                digests.append(await clients[i % 4].prepare(argv))
            tasks = [
                asyncio.create_task(clients[i % 4].execute(d, deadline=90))
                for i, d in enumerate(digests)
            ]
            await asyncio.sleep(1.5)
            c.frontends[1].stop(grace=2)  # SIGTERM: streams end UNAVAILABLE, clients reattach
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        except BaseException:
            print(c.logs())
            raise
        finally:
            for cl in clients:
                await cl.close()
    for i, o in enumerate(outcomes):
        assert o.response.status.code == 0, o.response.status
        assert o.response.result.exit_code == 0
        expected = f"out-{i}\n".encode()
        result = o.response.result
        assert result.stdout_raw == expected or result.stdout_digest == digest_of(expected)
        assert (runs / f"a{i}").read_text() == "run\n", f"action {i} ran more than once"
    assert sum(o.reattaches for o in outcomes) > 0, "the stop should have forced some reattaches"
