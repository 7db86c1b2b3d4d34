"""`redbarn`: the one console script. Each subcommand lives in its own module.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`; it is
listed in `SUBCOMMANDS` only once it exists, so `redbarn --help` never offers
something that is not there.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from redbarn import __version__
from redbarn.config import ConfigError
from redbarn.runtime import grpcenv

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "frontend": ("redbarn.frontend.cli", "serve REAPI to clients and Synchronize to workers"),
    "worker": ("redbarn.worker.cli", "run actions for the cluster"),
    "up": ("redbarn.up", "run a whole cluster on this machine: Redis, a frontend and a worker"),
    "state": (
        "redbarn.state",
        "print the build queue: platform queues, workers, operations, drains",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redbarn",
        allow_abbrev=False,
        description="A remote execution cluster for Bazel and every REAPI v2 client.",
    )
    parser.add_argument("--version", action="version", version=f"redbarn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    grpcenv.apply()  # before build_parser imports grpc
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args))
    except ConfigError as err:
        print(f"redbarn {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
