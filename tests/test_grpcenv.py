"""redbarn.runtime.grpcenv: gRPC core defaults set before grpc is imported, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from redbarn.config import ConfigError
from redbarn.runtime import grpcenv

PROBE = """
import os, sys
{before}
from redbarn import cli
from redbarn.runtime import grpcenv
applied = grpcenv.apply()
print(applied, repr(os.environ.get(grpcenv.ENV)), "grpc" in sys.modules)
"""


def probe(before: str = "", env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k != grpcenv.ENV}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_sets_the_experiments_before_grpc_is_imported() -> None:
    # Importing the CLI module must not import grpc, or apply() would come too late.
    assert probe() == f"True {grpcenv.EXPERIMENTS!r} False"


def test_the_environment_wins_even_when_empty() -> None:
    assert probe(env={grpcenv.ENV: ""}) == "False '' False"
    assert probe(env={grpcenv.ENV: "-tcp_rcv_lowat"}) == "False '-tcp_rcv_lowat' False"


def test_does_nothing_once_grpc_is_imported() -> None:
    assert probe(before="import grpc") == "False None True"


def test_the_redbarn_command_runs_with_the_defaults() -> None:
    # `redbarn` applies them in main(), before any subcommand module imports grpc.
    code = (
        "import os, sys; from redbarn import cli; sys.argv = ['redbarn', '--version'];\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('GRPC_EXPERIMENTS'))"
    )
    base = {k: v for k, v in os.environ.items() if k != grpcenv.ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == grpcenv.EXPERIMENTS


def test_poller_policy_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(grpcenv.POLLER_ENV, raising=False)
    assert grpcenv.poller_policy() == "batch"
    monkeypatch.setenv(grpcenv.POLLER_ENV, " Normal ")
    assert grpcenv.poller_policy() == "normal"
    monkeypatch.setenv(grpcenv.POLLER_ENV, "fifo")
    with pytest.raises(ConfigError, match='REDBARN_GRPC_POLLER must be "batch" or "normal"'):
        grpcenv.poller_policy()


def test_a_bad_poller_policy_stops_the_frontend_before_it_serves() -> None:
    env = {**os.environ, grpcenv.POLLER_ENV: "fifo"}
    proc = subprocess.run(
        [sys.executable, "-m", "redbarn", "frontend", "--listen", "127.0.0.1:0"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'redbarn frontend: REDBARN_GRPC_POLLER must be "batch" or "normal", not "fifo"'
    ]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
async def test_the_poller_thread_gets_the_policy() -> None:
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()  # grpc.aio's poller thread runs from here on
    try:
        [poller] = grpcenv.poller_threads()
        assert poller.native_id is not None
        assert grpcenv.set_poller_policy("batch") == 1
        assert os.sched_getscheduler(poller.native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the event loop's thread: untouched
        assert grpcenv.set_poller_policy("normal") == 1
        assert os.sched_getscheduler(poller.native_id) == os.SCHED_OTHER
    finally:
        grpcenv.set_poller_policy(grpcenv.poller_policy())
        await server.stop(None)
