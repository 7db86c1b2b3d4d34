"""`redbarn frontend`: flags and `REDBARN_*` variables -> `FrontendConfig` -> `serve()`.

Security flags: `--worker-listen` (a listener of its own for workers),
`--client-tokens`/`--worker-tokens`/`--admin-tokens` (bearer-token files),
`--allow-client-ac-writes=false`, and `--tls-cert`/`--tls-key`/`--tls-client-ca`.

Exposes `add_arguments(parser)` and `run(args) -> int` for `redbarn.cli`. Sizes
accept `4MiB`, `1G`; durations `500ms`, `2s`, `5m`, `1h` (a week is `168h`). The
frontend serves storage (CAS, ByteStream, AC, Capabilities) and, through
`scheduling_hook`, Execution and OperationQueue over the Redis scheduler.
"""

from __future__ import annotations

import argparse
import logging

from redbarn.config import ConfigError, add_flag, parse_duration, parse_size
from redbarn.frontend.config import FrontendConfig
from redbarn.queue.config import SchedulerConfig
from redbarn.runtime import eventloop, grpcenv

_D = FrontendConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--listen", _D.listen, "address to serve gRPC on, HOST:PORT")
    add_flag(
        parser,
        "--worker-listen",
        "",
        "second listener for workers (OperationQueue, CAS, AC, ByteStream); "
        "when set, --listen no longer serves Synchronize",
    )
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
    security = parser  # authentication and TLS
    add_flag(security, "--client-tokens", "", "file of client bearer tokens, one per line")
    add_flag(security, "--worker-tokens", "", "file of worker bearer tokens, one per line")
    add_flag(security, "--admin-tokens", "", "file of admin bearer tokens (BuildQueueState writes)")
    add_flag(
        security,
        "--allow-client-ac-writes",
        "true",
        "may clients UpdateActionResult: true or false",
    )
    add_flag(security, "--tls-cert", "", "PEM certificate chain: TLS on both listeners")
    add_flag(security, "--tls-key", "", "PEM private key of --tls-cert")
    add_flag(
        security,
        "--tls-client-ca",
        "",
        "PEM CA bundle: the worker listener requires client certificates it signed (mTLS)",
    )
    sched = parser  # scheduling flags (redbarn.queue.config.SchedulerConfig)
    add_flag(
        sched, "--worker-timeout", "60s", "a worker is lost this long after its last Synchronize"
    )
    add_flag(sched, "--idle-sync-timeout", "60s", "longest hold of an idle Synchronize")
    add_flag(
        sched, "--busy-sync-interval", "10s", "next_synchronization_at offset for busy workers"
    )
    add_flag(
        sched,
        "--operation-retention",
        "60s",
        "operation kept after its last waiter; also the no-waiter cancel delay",
    )
    add_flag(
        sched,
        "--execution-update-interval",
        "60s",
        "keep-alive period of Execute/WaitExecution streams",
    )
    add_flag(
        sched,
        "--platform-queue-timeout",
        "15m",
        "a platform queue without workers is removed after this; also the start-up grace",
    )
    add_flag(sched, "--default-action-timeout", "30m", "action timeout when the Action sets none")
    add_flag(sched, "--max-action-timeout", "2h", "largest action timeout accepted")
    add_flag(sched, "--max-attempts", "3", "assignments of an action before a lost worker fails it")
    add_flag(
        sched,
        "--max-queued-per-platform",
        "1000000",
        "queued actions per platform queue before RESOURCE_EXHAUSTED",
    )


def _bool(flag: str, text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f'invalid {flag} "{text}": expected true or false')


def _count(flag: str, text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f'invalid {flag} "{text}": expected a whole number of at least 1')
    return int(text)


def scheduler_from_args(args: argparse.Namespace) -> SchedulerConfig:
    default_timeout = parse_duration(args.default_action_timeout)
    max_timeout = parse_duration(args.max_action_timeout)
    if default_timeout > max_timeout:
        raise ConfigError(
            f"--default-action-timeout {args.default_action_timeout} exceeds "
            f"--max-action-timeout {args.max_action_timeout}"
        )
    return SchedulerConfig(
        worker_timeout=parse_duration(args.worker_timeout),
        idle_sync_timeout=parse_duration(args.idle_sync_timeout),
        busy_sync_interval=parse_duration(args.busy_sync_interval),
        operation_retention=parse_duration(args.operation_retention),
        execution_update_interval=parse_duration(args.execution_update_interval),
        platform_queue_timeout=parse_duration(args.platform_queue_timeout),
        default_action_timeout=default_timeout,
        max_action_timeout=max_timeout,
        max_attempts=_count("--max-attempts", args.max_attempts),
        max_queued_per_platform=_count("--max-queued-per-platform", args.max_queued_per_platform),
    )


def config_from_args(args: argparse.Namespace) -> FrontendConfig:
    """Raises ConfigError (one clear line) for any invalid value."""
    batch = parse_size(args.max_batch_size)
    return FrontendConfig(
        listen=args.listen,
        worker_listen=args.worker_listen or "",
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
        scheduler=scheduler_from_args(args),
        client_tokens=args.client_tokens or "",
        worker_tokens=args.worker_tokens or "",
        admin_tokens=args.admin_tokens or "",
        allow_client_ac_writes=_bool("--allow-client-ac-writes", args.allow_client_ac_writes),
        tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "",
        tls_client_ca=args.tls_client_ca or "",
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    grpcenv.poller_policy()  # a bad $REDBARN_GRPC_POLLER fails here, before serving
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from redbarn.frontend.scheduling import scheduling_hook
    from redbarn.frontend.server import serve

    return eventloop.run(serve(config, hooks=[scheduling_hook(config.scheduler)]))
