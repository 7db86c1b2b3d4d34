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
import dataclasses
import logging
from typing import Any

from redbarn import router
from redbarn.config import (
    ConfigError,
    add_flag,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from redbarn.frontend.config import MESSAGE_HEADROOM, FrontendConfig
from redbarn.queue.config import SchedulerConfig, parse_predeclared
from redbarn.runtime import eventloop, grpcenv

_D = FrontendConfig()
_S = SchedulerConfig()

# Duration fields set by a flag of the same name (`cas_ttl`: --cas-ttl), with its help.
_DURATIONS = {
    "cas_ttl": "CAS blob lifetime, refreshed on use",
    "ac_ttl": "Action Cache entry lifetime, refreshed on use",
    "upload_ttl": "how long an interrupted upload stays resumable",
    "grace_period": "time in-flight calls get to finish on SIGTERM",
    "grpc_keepalive_min_time": "clients pinging more often than this are disconnected",
    "grpc_keepalive_time": "the server pings a connection idle this long",
    "grpc_keepalive_timeout": "a connection whose ping goes unanswered this long is closed",
    "grpc_max_connection_idle": "a connection without calls this long is closed",
    "grpc_max_connection_age": "a connection this old is closed (0 = never)",
    "grpc_max_connection_age_grace": "time calls in flight get when a connection is aged out",
}
# --queue-shards' bound: an idle worker looks at every shard before it parks.
MAX_QUEUE_SHARDS = 64
# The same for SchedulerConfig, and its whole-number fields.
_SCHEDULER_DURATIONS = {
    "worker_timeout": "a worker is lost this long after its last Synchronize",
    "idle_sync_timeout": "longest hold of an idle Synchronize",
    "busy_sync_interval": "next_synchronization_at offset for busy workers",
    "operation_retention": "operation kept after its last waiter; also the no-waiter cancel delay",
    "execution_update_interval": "keep-alive period of Execute/WaitExecution streams",
    "platform_queue_timeout": (
        "a platform queue without workers is removed after this; also the start-up grace"
    ),
    "default_action_timeout": "action timeout when the Action sets none",
    "max_action_timeout": "largest action timeout accepted",
}
_SCHEDULER_COUNTS = {
    "max_attempts": "assignments of an action before a lost worker fails it",
    "max_queued_per_platform": "queued actions per platform queue before RESOURCE_EXHAUSTED",
    "park_holds": "idle holds per park in Redis: between them an idle worker costs Redis "
    "nothing (1 = park on every hold)",
    "queue_shards": "hash slots each --platform-queue is spread over, so one busy platform "
    "uses several Redis Cluster masters (1 = not sharded; the same on every frontend; at "
    f"most {MAX_QUEUE_SHARDS})",
}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _durations(args: argparse.Namespace, fields: dict[str, str]) -> dict[str, Any]:
    return {field: parse_duration(getattr(args, field)) for field in fields}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--listen", _D.listen, "address to serve gRPC on, HOST:PORT")
    add_flag(
        parser,
        "--worker-listen",
        _D.worker_listen,
        "second listener for workers (OperationQueue, CAS, AC, ByteStream); "
        "when set, --listen no longer serves Synchronize",
    )
    add_flag(
        parser,
        "--metrics-listen",
        _D.metrics_listen,
        'HTTP address for /metrics and the web page of the queue, HOST:PORT ("" = off)',
    )
    add_flag(parser, "--redis", _D.redis_url, "scheduler Redis URL")
    add_flag(
        parser,
        "--cas-redis",
        _D.cas_redis_url,
        "Redis URL for CAS and Action Cache (default: --redis)",
    )
    add_flag(
        parser,
        "--storage",
        _D.storage,
        'CAS/AC backend: "redis", or grpc://HOST:PORT (grpcs:// for TLS) of a REAPI '
        "storage to forward to",
    )
    add_flag(parser, "--storage-tls-ca", _D.storage_tls_ca, "grpcs:// storage: PEM CA bundle")
    add_flag(
        parser,
        "--storage-token-file",
        _D.storage_token_file,
        "file holding the bearer token sent to the --storage upstream",
    )
    add_flag(
        parser, "--storage-tls-cert", _D.storage_tls_cert, "grpcs:// storage: client certificate"
    )
    add_flag(parser, "--storage-tls-key", _D.storage_tls_key, "grpcs:// storage: client key")
    blob, batch = format_size(_D.max_blob_size), format_size(_D.max_batch_total_size)
    add_flag(parser, "--max-blob-size", blob, "largest blob accepted by ByteStream Write")
    add_flag(parser, "--max-batch-size", batch, "largest total of blob sizes in one batch call")
    add_flag(
        parser,
        "--max-action-size",
        format_size(_D.max_action_size),
        "largest Action or Command that Execute reads",
    )
    add_flag(
        parser,
        "--max-batch-digests",
        str(_D.max_batch_digests),
        "most digests in one FindMissingBlobs, BatchReadBlobs or BatchUpdateBlobs",
    )
    add_flag(
        parser,
        "--grpc-max-concurrent-streams",
        str(_D.grpc_max_concurrent_streams),
        "concurrent calls per client connection",
    )
    for field, meaning in _DURATIONS.items():
        add_flag(parser, _flag(field), format_duration(getattr(_D, field)), meaning)
    add_flag(parser, "--log-level", "info", "debug, info, warning or error")
    security = parser  # authentication and TLS
    add_flag(
        security, "--client-tokens", _D.client_tokens, "file of client bearer tokens, one per line"
    )
    add_flag(
        security, "--worker-tokens", _D.worker_tokens, "file of worker bearer tokens, one per line"
    )
    add_flag(
        security,
        "--admin-tokens",
        _D.admin_tokens,
        "file of admin bearer tokens (BuildQueueState writes)",
    )
    add_flag(
        security,
        "--allow-client-ac-writes",
        str(_D.allow_client_ac_writes).lower(),
        "may clients UpdateActionResult: true or false",
    )
    add_flag(security, "--tls-cert", _D.tls_cert, "PEM certificate chain: TLS on both listeners")
    add_flag(security, "--tls-key", _D.tls_key, "PEM private key of --tls-cert")
    add_flag(
        security,
        "--tls-client-ca",
        _D.tls_client_ca,
        "PEM CA bundle: the worker listener requires client certificates it signed (mTLS)",
    )
    add_flag(
        parser,
        "--action-router",
        None,
        "bb_scheduler's ActionRouterConfiguration in protobuf JSON (platform key extractor, "
        "invocation key extractors, execution timeouts, feedback-driven initial size "
        "classes: docs/size-classes.md); its timeouts replace --default-action-timeout and "
        "--max-action-timeout",
    )
    add_flag(
        parser,
        "--ignore-platform-property",
        None,
        "a platform property NAME routed on by no queue: left out of the platform queue "
        "key, still given to the worker in the Action (e.g. container-image, so one "
        "worker pool runs every image); workers leave it out of their platform",
        repeat=True,
    )
    sched = parser  # scheduling flags (redbarn.queue.config.SchedulerConfig)
    for field, meaning in _SCHEDULER_DURATIONS.items():
        add_flag(sched, _flag(field), format_duration(getattr(_S, field)), meaning)
    for field, meaning in _SCHEDULER_COUNTS.items():
        add_flag(sched, _flag(field), str(getattr(_S, field)), meaning)
    add_flag(
        sched,
        "--platform-queue",
        None,
        "a platform queue that always exists, never reaped: bb_scheduler's "
        "PredeclaredPlatformQueueConfiguration as protobuf JSON, e.g. "
        '\'{"instanceNamePrefix": "", "platform": {"properties": [{"name": "OSFamily", '
        '"value": "linux"}]}, "sizeClasses": [4, 8]}\'',
        repeat=True,
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


def router_from_args(args: argparse.Namespace) -> router.ActionRouter:
    return router.parse(args.action_router or router.DEFAULT_ACTION_ROUTER)


def scheduler_from_args(args: argparse.Namespace) -> SchedulerConfig:
    values = _durations(args, _SCHEDULER_DURATIONS)
    values.update(
        (field, _count(_flag(field), getattr(args, field))) for field in _SCHEDULER_COUNTS
    )
    routing = router_from_args(args)
    values["invocation_keys"] = routing.invocation_keys
    if args.action_router:  # its analyzer's timeouts win over the shorthand flags
        values["default_action_timeout"] = routing.default_timeout
        values["max_action_timeout"] = routing.max_timeout
    if values["default_action_timeout"] > values["max_action_timeout"]:
        raise ConfigError(
            f"--default-action-timeout {args.default_action_timeout} exceeds "
            f"--max-action-timeout {args.max_action_timeout}"
        )
    predeclared = tuple(parse_predeclared(text) for text in args.platform_queue or ())
    seen: set[str] = set()
    for q in predeclared:
        if q.domain in seen:
            raise ConfigError(
                f'--platform-queue declares instance name prefix "{q.instance_name_prefix}" '
                f"platform {q.platform_json} twice"
            )
        seen.add(q.domain)
    values["predeclared"] = predeclared
    if values["queue_shards"] > MAX_QUEUE_SHARDS:
        raise ConfigError(
            f'invalid --queue-shards "{args.queue_shards}": at most {MAX_QUEUE_SHARDS}'
        )
    return dataclasses.replace(_S, **values)


def config_from_args(args: argparse.Namespace) -> FrontendConfig:
    """Raises ConfigError (one clear line) for any invalid value."""
    batch = parse_size(args.max_batch_size)
    return FrontendConfig(
        listen=args.listen,
        worker_listen=args.worker_listen or "",
        metrics_listen=args.metrics_listen or "",
        redis_url=args.redis,
        cas_redis_url=args.cas_redis or "",
        storage=args.storage,
        storage_tls_ca=args.storage_tls_ca or "",
        storage_token_file=args.storage_token_file or "",
        storage_tls_cert=args.storage_tls_cert or "",
        storage_tls_key=args.storage_tls_key or "",
        max_blob_size=parse_size(args.max_blob_size),
        max_action_size=parse_size(args.max_action_size),
        max_batch_digests=_count("--max-batch-digests", args.max_batch_digests),
        grpc_max_concurrent_streams=_count(
            "--grpc-max-concurrent-streams", args.grpc_max_concurrent_streams
        ),
        max_batch_total_size=batch,
        max_message_size=batch + MESSAGE_HEADROOM,
        **_durations(args, _DURATIONS),
        scheduler=scheduler_from_args(args),
        router=router_from_args(args),
        ignored_platform_properties=tuple(args.ignore_platform_property or ()),
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
    from redbarn.frontend.metrics import Metrics
    from redbarn.frontend.scheduling import scheduling_hook
    from redbarn.frontend.server import Hook, serve
    from redbarn.frontend.web import web_hook

    scheduling = scheduling_hook(config.scheduler)
    hooks: list[Hook] = [scheduling]
    interceptors = []
    if config.metrics_listen:
        metrics = Metrics()
        hooks.append(web_hook(config.metrics_listen, metrics, scheduling))
        interceptors.append(metrics.interceptor())
    return eventloop.run(serve(config, hooks=hooks, interceptors=interceptors))
