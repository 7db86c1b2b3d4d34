"""redbarn.grpcenv: gRPC core defaults set before grpc is imported, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys

from redbarn import grpcenv

PROBE = """
import os, sys
{before}
from redbarn import cli, grpcenv
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
