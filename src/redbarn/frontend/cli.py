"""`redbarn frontend`: flags and `REDBARN_*` variables -> `FrontendConfig` -> `serve()`.

Exposes `add_arguments(parser)` and `run(args) -> int` for `redbarn.cli`. Sizes
accept `4MiB`, `1G`; durations `500ms`, `2s`, `5m`, `7d` is written `168h`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from redbarn.config import add_flag, parse_duration, parse_size
from redbarn.frontend.config import FrontendConfig

_D = FrontendConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--listen", _D.listen, "address to serve gRPC on, HOST:PORT")
    add_flag(parser, "--redis", _D.redis_url, "scheduler Redis URL")
    add_flag(parser, "--cas-redis", "", "Redis URL for CAS and Action Cache (default: --redis)")
    add_flag(
        parser,
        "--storage",
        _D.storage,
        'CAS/AC backend: "redis", or grpc://HOST:PORT of a REAPI storage to forward to',
    )
    add_flag(parser, "--max-blob-size", "1GiB", "largest blob accepted by ByteStream Write")
    add_flag(parser, "--max-batch-size", "4MiB", "largest total of blob sizes in one batch call")
    add_flag(parser, "--cas-ttl", "168h", "CAS blob lifetime, refreshed on use")
    add_flag(parser, "--ac-ttl", "168h", "Action Cache entry lifetime, refreshed on use")
    add_flag(parser, "--upload-ttl", "1h", "how long an interrupted upload stays resumable")
    add_flag(parser, "--grace-period", "10s", "time in-flight calls get to finish on SIGTERM")
    add_flag(parser, "--log-level", "info", "debug, info, warning or error")


def config_from_args(args: argparse.Namespace) -> FrontendConfig:
    """Raises ConfigError (one clear line) for any invalid value."""
    batch = parse_size(args.max_batch_size)
    return FrontendConfig(
        listen=args.listen,
        redis_url=args.redis,
        cas_redis_url=args.cas_redis or "",
        storage=args.storage,
        max_blob_size=parse_size(args.max_blob_size),
        max_batch_total_size=batch,
        max_message_size=batch + (1 << 20),
        cas_ttl=parse_duration(args.cas_ttl),
        ac_ttl=parse_duration(args.ac_ttl),
        upload_ttl=parse_duration(args.upload_ttl),
        grace_period=parse_duration(args.grace_period),
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from redbarn.frontend.server import serve

    return asyncio.run(serve(config))
