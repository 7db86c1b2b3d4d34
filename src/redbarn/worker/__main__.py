"""`python -m redbarn.worker`: the worker without the `redbarn` console script."""

from __future__ import annotations

import argparse
import sys

from redbarn.config import ConfigError
from redbarn.worker import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="redbarn worker", description="Run a redbarn worker.", allow_abbrev=False
    )
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cli.run(args)
    except ConfigError as err:
        print(f"redbarn worker: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
