"""`redbarn worker`: flags, and the composition root that builds and runs the worker.

`add_arguments(parser)` and `run(args) -> int` are the subcommand interface of
`redbarn.cli`; `serve(config)` runs until SIGTERM/SIGINT and is what tests call.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Any

import grpc

from redbarn import digests
from redbarn.config import (
    ConfigError,
    add_flag,
    format_duration,
    format_size,
    parse_duration,
    parse_pair,
    parse_size,
    read_file,
)
from redbarn.errors import RedbarnError
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.worker import auth, builddir, inputs, outputs, runas, sweep
from redbarn.worker.auth import read_token
from redbarn.worker.cache import LocalCache
from redbarn.worker.cas import CasClient
from redbarn.worker.client import WorkerThread, thread_worker_ids
from redbarn.worker.config import WorkerConfig
from redbarn.worker.executors.base import BuildExecutor, compose
from redbarn.worker.executors.caching import CachingBuildExecutor
from redbarn.worker.executors.container import ContainerBuildExecutor
from redbarn.worker.executors.local import LocalBuildExecutor
from redbarn.worker.executors.logging import LoggingBuildExecutor
from redbarn.worker.executors.metrics import MetricsBuildExecutor, WorkerMetrics
from redbarn.worker.executors.resource_usage import ResourceUsageBuildExecutor
from redbarn.worker.executors.timestamped import TimestampedBuildExecutor

log = logging.getLogger("redbarn.worker")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # dns:/// targets with several addresses spread the worker threads over them.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.enable_retries", 0),
]


# Whole-number and size limits set by a flag named after their field, with their help.
_COUNTS = {
    "--max-input-files": "most files (and symlinks) in an action's input root",
    "--max-input-directories": "most directories in an action's input root",
    "--max-input-depth": "deepest directory nesting of an action's input root",
    "--max-output-files": "most output files and symlinks an action may leave",
}
_SIZES = {
    "--max-input-bytes": "largest total size of an action's input files",
    "--max-output-bytes": "largest total size of an action's output files",
    "--max-stdio-bytes": "largest stdout, and largest stderr, of an action",
}


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = WorkerConfig()
    add_flag(
        parser,
        "--frontend",
        d.frontend,
        "gRPC target of the scheduler (any gRPC target, e.g. dns:///host:8981)",
    )
    add_flag(parser, "--cas", d.cas, "gRPC target for CAS/AC/ByteStream (default: the frontend)")
    add_flag(
        parser, "--concurrency", str(d.concurrency), "worker threads, each its own worker identity"
    )
    add_flag(
        parser,
        "--platform",
        None,
        "platform property KEY=VALUE announced to the scheduler",
        repeat=True,
    )
    add_flag(parser, "--label", None, "extra worker_id label KEY=VALUE", repeat=True)
    add_flag(
        parser,
        "--env",
        None,
        "environment variable KEY=VALUE for every action (the Command's win)",
        repeat=True,
    )
    add_flag(
        parser,
        "--instance-name-prefix",
        d.instance_name_prefix,
        "instance name prefix of this worker's queue",
    )
    add_flag(parser, "--size-class", str(d.size_class), "size class of this worker's queue")
    add_flag(
        parser,
        "--build-dir",
        d.build_dir,
        "per-action build directories (same file system as --cache-dir)",
    )
    add_flag(parser, "--cache-dir", d.cache_dir, "local content-addressed input cache")
    add_flag(
        parser,
        "--metrics-listen",
        d.metrics_listen,
        'HTTP address serving Prometheus /metrics, HOST:PORT ("" = off)',
    )
    add_flag(
        parser,
        "--cache-size",
        format_size(d.cache_size),
        "largest size of the input cache (LRU eviction)",
    )
    add_flag(
        parser, "--hostname", d.hostname, "hostname label of worker_id (default: this host's name)"
    )
    add_flag(
        parser,
        "--token-file",
        None,
        "file holding this worker's bearer token (frontend worker role)",
    )
    add_flag(parser, "--tls-ca", d.tls_ca, "PEM CA bundle of the frontend's certificate: use TLS")
    add_flag(parser, "--tls-cert", d.tls_cert, "PEM client certificate chain, for mutual TLS")
    add_flag(parser, "--tls-key", d.tls_key, "PEM private key of --tls-cert")
    add_flag(
        parser,
        "--sync-timeout",
        format_duration(d.sync_timeout),
        "deadline of one Synchronize call",
    )
    for flag, meaning in _COUNTS.items():
        add_flag(parser, flag, str(getattr(d, _field(flag))), meaning)
    for flag, meaning in _SIZES.items():
        add_flag(parser, flag, format_size(getattr(d, _field(flag))), meaning)
    add_flag(
        parser,
        "--input-fetch-timeout",
        format_duration(d.input_fetch_timeout),
        "deadline of fetching and materialising an action's inputs",
    )
    add_flag(
        parser,
        "--run-as",
        d.run_as,
        "run actions as USER[:GROUP], a user dedicated to actions (needs root)",
    )
    add_flag(
        parser,
        "--container-runtime",
        d.container_runtime,
        "podman or docker: run actions with a container-image platform property in it",
    )
    add_flag(parser, "--log-level", "INFO", "DEBUG, INFO, WARNING or ERROR")


def _int(text: str, flag: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f'invalid {flag} "{text}": expected an integer') from None
    if value < minimum:
        raise ConfigError(f"invalid {flag} {value}: must be at least {minimum}")
    return value


def _tls_paths(args: argparse.Namespace) -> tuple[str, str, str]:
    ca, cert, key = args.tls_ca or "", args.tls_cert or "", args.tls_key or ""
    if bool(cert) != bool(key):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    if cert and not ca:
        raise ConfigError("--tls-cert needs --tls-ca (the CA of the frontend's certificate)")
    for flag, path in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"cannot read {flag} {path}: no such file")
    return ca, cert, key


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    platform = tuple(sorted(parse_pair(p, "--platform") for p in args.platform))
    if len(set(platform)) != len(platform):
        raise ConfigError("duplicate --platform property")
    try:  # the scheduler would refuse every Synchronize; say so once, at start
        digests.validate_instance_name(args.instance_name_prefix)
    except RedbarnError as err:
        raise ConfigError(f"--instance-name-prefix: {err.message}") from None
    tls_ca, tls_cert, tls_key = _tls_paths(args)
    return WorkerConfig(
        frontend=args.frontend,
        cas=args.cas or None,
        concurrency=_int(args.concurrency, "--concurrency", 1),
        platform=platform,
        labels=tuple(parse_pair(p, "--label") for p in args.label),
        environment=tuple(parse_pair(p, "--env") for p in args.env),
        instance_name_prefix=args.instance_name_prefix,
        size_class=_int(args.size_class, "--size-class", 0),
        build_dir=os.path.abspath(args.build_dir),
        cache_dir=os.path.abspath(args.cache_dir),
        metrics_listen=args.metrics_listen or "",
        cache_size=parse_size(args.cache_size),
        hostname=args.hostname or None,
        sync_timeout=parse_duration(args.sync_timeout),
        token=read_token(args.token_file) if args.token_file else None,
        token_file=os.path.abspath(args.token_file) if args.token_file else "",
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        **{_field(f): _int(getattr(args, _field(f)), f, 1) for f in _COUNTS},
        **{_field(f): parse_size(getattr(args, _field(f))) for f in _SIZES},
        input_fetch_timeout=parse_duration(args.input_fetch_timeout),
        run_as=args.run_as or "",
        container_runtime=args.container_runtime or "",
    )


def open_channel(
    target: str, config: WorkerConfig, interceptors: list[grpc.aio.ClientInterceptor]
) -> grpc.aio.Channel:
    """A channel to `target`: TLS when `config.tls_ca` is set (mTLS with a client cert)."""
    if not config.tls_ca:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_file(config.tls_ca, "--tls-ca"),
        private_key=read_file(config.tls_key, "--tls-key") if config.tls_key else None,
        certificate_chain=read_file(config.tls_cert, "--tls-cert") if config.tls_cert else None,
    )
    return grpc.aio.secure_channel(
        target, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors
    )


def build_executor(
    cas: CasClient,
    cache: LocalCache,
    config: WorkerConfig,
    metrics: WorkerMetrics,
    user: runas.ActionUser | None = None,
) -> BuildExecutor:
    """The executor chain, innermost first (Buildbarn WORKER_MAIN:463-535)."""
    local = LocalBuildExecutor(
        cas,
        cache,
        config.build_dir,
        dict(config.environment),
        user=user,
        input_limits=inputs.InputLimits.of(config),
        output_limits=outputs.OutputLimits.of(config),
    )
    return compose(
        local,
        functools.partial(ContainerBuildExecutor, runtime=config.container_runtime),
        TimestampedBuildExecutor,
        ResourceUsageBuildExecutor,
        functools.partial(CachingBuildExecutor, cas=cas),
        functools.partial(MetricsBuildExecutor, metrics=metrics),
        LoggingBuildExecutor,
    )


HEARTBEAT_FILE = ".heartbeat"


class Heartbeat:
    """Touches a file after successful Synchronize calls, at most once a second, so a
    container health check (`python -m redbarn.runtime.healthcheck --heartbeat FILE`) can tell
    a worker that reaches its scheduler from one that does not."""

    def __init__(self, path: str, every: float = 1.0) -> None:
        self.path = path
        self._every = every
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        try:
            with open(self.path, "a"):
                os.utime(self.path)
        except OSError as err:
            log.warning("cannot touch heartbeat file %s: %s", self.path, err)


async def serve(config: WorkerConfig, shutdown: asyncio.Event | None = None) -> WorkerMetrics:
    """Run every worker thread until `shutdown` is set (SIGTERM/SIGINT set it too)."""
    shutdown = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max(8, 2 * config.concurrency), "redbarn-worker")
    )
    user = _action_user(config)
    try:
        # Hardlinked inputs only where the action user cannot chmod the worker's files.
        cache = LocalCache(config.cache_dir, config.cache_size, link_inputs=user is not None)
        lock_fd = builddir.lock(config.build_dir)
    except RedbarnError as err:
        raise ConfigError(err.message) from None
    try:
        if user is not None:
            await asyncio.to_thread(_isolate, config, user)
        killed = await asyncio.to_thread(builddir.kill_leftovers, config.build_dir)
        if user is not None:
            killed += await asyncio.to_thread(sweep.kill, user.uid)
    except BaseException:
        cache.close()
        os.close(lock_fd)
        raise
    if killed:
        log.warning("killed %d processes left running by a previous worker", killed)
    await asyncio.to_thread(builddir.clean, config.build_dir)

    signals = 0
    threads: list[WorkerThread] = []
    tasks: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        busy = sum(t.busy for t in threads)
        if signals == 1:
            if busy:
                log.info(
                    "shutting down: waiting for %d running action(s) to finish"
                    " (signal again to abort)",
                    busy,
                )
            else:
                log.info("shutting down: no actions running")
            shutdown.set()
        else:
            log.warning("second signal: aborting %d running action(s)", busy)
            for t in tasks:
                t.cancel()

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)

    intercept = auth.interceptors(config.token)
    channel = open_channel(config.frontend, config, intercept)
    cas_channel = (
        open_channel(config.cas, config, intercept)
        if config.cas and config.cas != config.frontend
        else channel
    )
    metrics = WorkerMetrics()
    cas = CasClient(cas_channel)
    await _unless(shutdown, cas.fit_to_server(config.instance_name_prefix))
    executor = build_executor(cas, cache, config, metrics, user)
    stub = rw_grpc.OperationQueueStub(channel)  # type: ignore[no-untyped-call]
    heartbeat = Heartbeat(os.path.join(config.build_dir, HEARTBEAT_FILE))
    platform = re_pb2.Platform(
        properties=[re_pb2.Platform.Property(name=k, value=v) for k, v in sorted(config.platform)]
    )
    hostname = config.hostname or socket.gethostname()
    threads.extend(
        WorkerThread(
            stub=stub,
            executor=executor,
            worker_id=wid,
            instance_name_prefix=config.instance_name_prefix,
            platform=platform,
            size_class=config.size_class,
            shutdown=shutdown,
            sync_timeout=config.sync_timeout,
            backoff_max=config.backoff_max,
            heartbeat=heartbeat,
        )
        for wid in thread_worker_ids(config.concurrency, dict(config.labels), hostname)
    )
    log.info(
        "worker: %d threads, frontend %s, cas %s, cache %s (%d files)",
        len(threads),
        config.frontend,
        config.cas or config.frontend,
        config.cache_dir,
        len(cache),
    )
    if user is not None:
        log.info("actions run as %s", user)
        if config.concurrency > 1:
            log.warning(
                "%d actions at a time share %s: they can reach each other's build"
                " directories (one worker process per user with --concurrency 1 cannot)",
                config.concurrency,
                user.name,
            )
    else:
        log.info(
            "actions run as the worker's own user (uid %d): no isolation from the worker"
            " or each other (see --run-as)",
            os.getuid(),
        )
    tasks.extend(asyncio.create_task(t.run(), name=t.name) for t in threads)
    reporter = asyncio.create_task(_report_metrics(metrics, config.metrics_interval))
    metrics_server = None
    if config.metrics_listen:
        from prometheus_client import CollectorRegistry

        from redbarn.worker.prometheus import WorkerCollector, serve_metrics

        registry = CollectorRegistry()
        registry.register(WorkerCollector(metrics, cache))
        metrics_server = await serve_metrics(config.metrics_listen, registry)
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        reporter.cancel()
        if metrics_server is not None:
            metrics_server.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await channel.close()
        if cas_channel is not channel:
            await cas_channel.close()
        cache.close()
        os.close(lock_fd)
        log.info("worker stopped; %s", metrics.summary())
    return metrics


def _action_user(config: WorkerConfig) -> runas.ActionUser | None:
    """The --run-as user, after the checks that need no directories; and the runtime."""
    if config.container_runtime and not shutil.which(config.container_runtime):
        raise ConfigError(f"--container-runtime {config.container_runtime}: not found")
    if not config.run_as:
        return None
    user = runas.resolve(config.run_as)
    runas.check_privileges()
    return user


def _isolate(config: WorkerConfig, user: runas.ActionUser) -> None:
    """Close the input cache to the action user, let it pass the build directory, then
    refuse to start unless a probe as that user agrees (runas.check_isolation)."""
    try:
        os.chmod(config.cache_dir, 0o700)
        os.chmod(config.build_dir, 0o711)
    except OSError as err:
        raise ConfigError(f"--run-as: {err}") from None
    runas.check_isolation(
        user,
        build_dir=config.build_dir,
        cache_dir=config.cache_dir,
        secrets=[("--token-file", config.token_file), ("--tls-key", config.tls_key)],
    )


async def _unless(shutdown: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run `work`, cancelling it if `shutdown` is set first."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _report_metrics(metrics: WorkerMetrics, interval: float) -> None:
    """Log the counters every `interval` seconds while they change."""
    last = ""
    while interval > 0:
        await asyncio.sleep(interval)
        summary = metrics.summary()
        if summary != last:
            log.info("%s", summary)
            last = summary


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise ConfigError(f'invalid --log-level "{args.log_level}"')
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    else:
        logging.getLogger().setLevel(level)
    asyncio.run(serve(config))
    return 0
