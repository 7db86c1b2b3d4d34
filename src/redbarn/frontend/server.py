"""Server wiring: build the storage and servicers from a `FrontendConfig`.

`create_server(config)` returns a not-yet-started `FrontendServer` and the bound
port (tests listen on 127.0.0.1:0 and talk over a real channel); `serve(config)`
runs one until SIGTERM/SIGINT. More servicers (Execution, OperationQueue,
BuildQueueState) come in through hooks, each called (and awaited, if async) with the
`Frontend` before the server starts; `redbarn.frontend.scheduling.scheduling_hook`
is the real one:

    async def add_execution(frontend: Frontend) -> None:
        frontend.add_service(re_grpc.add_ExecutionServicer_to_server, servicer, EXECUTION)
        frontend.exec_enabled = True       # Capabilities reports it
        frontend.add_background(reaper)    # started with the server, cancelled on stop
        frontend.on_shutdown(wake_parked)  # SIGTERM, before the grace period

    server, port = await create_server(config, hooks=[add_execution])

`add_service` registers the servicer, lists it for reflection and gives it a
health status.

Listeners. `config.listen` is the client listener. With `config.worker_listen` set, a
second grpc.aio server (sharing the same servicer objects) serves what workers need:
OperationQueue, CAS, ByteStream, ActionCache, Capabilities and health; and the client
listener then does not serve OperationQueue at all, so no client can pose as a worker
and report results. Each service's listeners come from `DEFAULT_LISTENERS` unless
`add_service(..., listeners=...)` says otherwise; without a worker listener everything
lands on the client listener.

Security. Token files (`client_tokens`, `worker_tokens`, `admin_tokens`) put an
`AuthInterceptor` on both listeners; `allow_client_ac_writes=False` refuses
UpdateActionResult to clients. `tls_cert`/`tls_key` serve TLS on both listeners, and
`tls_client_ca` makes the worker listener require a client certificate it signed.
Requests whose bytes do not parse get INVALID_ARGUMENT (`decoding`), not UNKNOWN.
Both listeners apply the gRPC server limits (`server_options`: concurrent streams,
keepalive enforcement, connection idle time and age). A CAS kept in the scheduler's
Redis is warned about at start (`shared_redis_warning`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from redbarn.config import read_file
from redbarn.frontend.action_cache import ActionCacheServicer
from redbarn.frontend.auth import AuthInterceptor, TokenTable
from redbarn.frontend.bytestream import ByteStreamServicer
from redbarn.frontend.capabilities import CapabilitiesServicer, server_capabilities
from redbarn.frontend.cas import ContentAddressableStorageServicer
from redbarn.frontend.config import FrontendConfig, redact_url
from redbarn.frontend.decoding import DecodeErrorInterceptor
from redbarn.frontend.health import Check, HealthReporter
from redbarn.frontend.storage import ActionCacheStore, BlobStore
from redbarn.frontend.storage.completeness import CompletenessCheckingActionCache
from redbarn.frontend.storage.proxy import (
    DEFAULT_MAX_BATCH_BYTES,
    GrpcActionCache,
    GrpcBlobStore,
    open_storage_channel,
)
from redbarn.frontend.storage.redis import RedisActionCache, RedisBlobStore
from redbarn.proto import bytestream_pb2, remote_execution_pb2, remoteworker_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.runtime import grpcenv, redisurl
from redbarn.runtime.fastredis import FastRedis
from redbarn.runtime.outage import OutageLog
from redbarn.runtime.redisurl import AnyRedis

log = logging.getLogger(__name__)

_RE = remote_execution_pb2.DESCRIPTOR.services_by_name
CAPABILITIES = _RE["Capabilities"].full_name
CAS = _RE["ContentAddressableStorage"].full_name
ACTION_CACHE = _RE["ActionCache"].full_name
EXECUTION = _RE["Execution"].full_name
BYTESTREAM = bytestream_pb2.DESCRIPTOR.services_by_name["ByteStream"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OPERATION_QUEUE = remoteworker_pb2.DESCRIPTOR.services_by_name["OperationQueue"].full_name

CLIENT, WORKER = "client", "worker"
# Which listeners serve a service, unless add_service is told otherwise. Services not
# listed (Execution, BuildQueueState, test services) are client-only.
DEFAULT_LISTENERS: dict[str, tuple[str, ...]] = {
    OPERATION_QUEUE: (WORKER,),
    CAS: (CLIENT, WORKER),
    BYTESTREAM: (CLIENT, WORKER),
    ACTION_CACHE: (CLIENT, WORKER),
    CAPABILITIES: (CLIENT, WORKER),
}

Hook = Callable[["Frontend"], "Awaitable[None] | None"]


@dataclass
class Frontend:
    """What a hook gets: the config, the clients, the stores, and ways to add to the server."""

    config: FrontendConfig
    server: grpc.aio.Server  # the client listener's server
    redis: AnyRedis  # the scheduler's Redis (one server, a Cluster or a Sentinel master)
    blobs: BlobStore  # CAS (Redis or proxy)
    action_cache: ActionCacheStore  # completeness-checking
    health: HealthReporter
    exec_enabled: bool = False
    service_names: list[str] = field(default_factory=list)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    worker_server: grpc.aio.Server | None = None  # the worker listener's, if configured
    worker_service_names: list[str] = field(default_factory=list)
    fast_redis: FastRedis | None = None  # pipelined client of `redis`, for hot script calls
    # Where every loop reports trouble reaching `redis`, so an outage is logged once.
    redis_outage: OutageLog = field(default_factory=lambda: OutageLog("Redis"))

    def servers_for(self, listeners: Sequence[str]) -> list[grpc.aio.Server]:
        """The distinct servers behind `listeners` (worker = client without a worker listener)."""
        servers: list[grpc.aio.Server] = []
        for listener in listeners:
            server = self.worker_server if listener == WORKER else self.server
            server = server or self.server
            if server not in servers:
                servers.append(server)
        return servers

    def add_service(
        self,
        adder: Callable[[Any, grpc.aio.Server], None],
        servicer: object,
        name: str,
        listeners: Sequence[str] | None = None,
    ) -> None:
        """Register `servicer` on the listeners it belongs to (`DEFAULT_LISTENERS`)."""
        for server in self.servers_for(listeners or DEFAULT_LISTENERS.get(name, (CLIENT,))):
            adder(servicer, server)
            names = self.service_names if server is self.server else self.worker_service_names
            names.append(name)
        self.health.services.append(name)

    def add_background(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run `task()` while the server runs; it is cancelled on stop."""
        self.background.append(task)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await `hook()` when stopping, before in-flight calls get their grace period."""
        self.shutdown_hooks.append(hook)


class FrontendServer:
    """A grpc.aio server plus the frontend's background tasks and clients."""

    def __init__(
        self, frontend: Frontend, health_servicer: HealthServicer, worker_port: int | None = None
    ) -> None:
        self.frontend = frontend
        self.server = frontend.server
        self.worker_port = worker_port  # bound port of the worker listener, if any
        self._servers = [s for s in (frontend.server, frontend.worker_server) if s is not None]
        self._health_servicer = health_servicer
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.frontend.health.check_once()
        for server in self._servers:
            await server.start()
        # grpc.aio's poller thread exists now (redbarn.runtime.grpcenv says why this helps).
        grpcenv.set_poller_policy(grpcenv.poller_policy())
        runners = [self.frontend.health.run, *self.frontend.background]
        self._tasks = [asyncio.create_task(_as_coro(run)) for run in runners]

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, run shutdown hooks, let in-flight calls finish within `grace`."""
        grace = self.frontend.config.grace_period if grace is None else grace
        await self._health_servicer.enter_graceful_shutdown()
        for hook in self.frontend.shutdown_hooks:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=1.0)
            for task in pending:
                log.warning("background task %r ignored cancellation", task.get_coro())
        for close in self.frontend.closers:
            with contextlib.suppress(Exception):
                await close()

    async def wait_for_termination(self) -> None:
        await asyncio.gather(*(server.wait_for_termination() for server in self._servers))


async def _as_coro(run: Callable[[], Awaitable[None]]) -> None:
    await run()


def build_storage(
    config: FrontendConfig, scheduler_redis: AnyRedis, fast: FastRedis | None = None
) -> tuple[BlobStore, ActionCacheStore, list[Callable[[], Awaitable[None]]]]:
    """The CAS and (completeness-checking) Action Cache `config` asks for, and their closers.
    `fast` (a pipelined client of the scheduler's Redis) serves small CAS reads when the
    CAS is that same Redis."""
    closers: list[Callable[[], Awaitable[None]]] = []
    blobs: BlobStore
    base_ac: ActionCacheStore
    if config.proxied:
        channel = open_storage_channel(config)
        closers.append(channel.close)
        batch = min(config.max_batch_total_size, DEFAULT_MAX_BATCH_BYTES)
        blobs = GrpcBlobStore(channel, max_batch_bytes=batch)
        base_ac = GrpcActionCache(channel)
    else:
        client = scheduler_redis
        if config.cas_redis_url and config.cas_redis_url != config.redis_url:
            client = redis_client(config.cas_redis_url, "--cas-redis")
            closers.append(client.aclose)
            fast = None
        # The stores take a RedisCluster as well (they use pipelines, not multi-key
        # scripts, on one); their annotations still say Redis.
        store_client = cast(aioredis.Redis, client)
        blobs = RedisBlobStore(
            store_client, ttl=config.cas_ttl, upload_ttl=config.upload_ttl, chunk_size=config.chunk_size,
            fast=fast,
        )  # fmt: skip
        base_ac = RedisActionCache(store_client, ttl=config.ac_ttl)
    ac = CompletenessCheckingActionCache(
        base_ac,
        blobs,
        max_tree_bytes=config.max_tree_check_size,
        max_blob_size=config.max_blob_size,
    )
    return blobs, ac, closers


def storage_outage(config: FrontendConfig, redis_outage: OutageLog) -> OutageLog:
    """The outage log of the CAS and AC: the scheduler Redis's own when they live there."""
    if config.proxied:
        return OutageLog(f"Storage at {config.storage}")
    if config.cas_redis_url and config.cas_redis_url != config.redis_url:
        return redis_outage_log(config.cas_redis_url, "CAS Redis")
    return redis_outage


# A failover leaves a cluster or a Sentinel setup partly up for a few seconds; one
# outage line covers it (`OutageLog`'s settle).
FAILOVER_SETTLE = 5.0


def redis_outage_log(url: str, what: str = "Redis") -> OutageLog:
    """The outage log of the Redis at `url` (password masked)."""
    several = redisurl.parse_redis_url(url).kind != "single"
    return OutageLog(f"{what} at {redact_url(url)}", settle=FAILOVER_SETTLE if several else 0.0)


def redis_client(url: str, flag: str = "--redis") -> AnyRedis:
    """The redis.asyncio client for a --redis or --cas-redis URL: one server (a pool that
    waits for a free connection), a Redis Cluster or a Sentinel master
    (`redbarn.runtime.redisurl`)."""
    return redisurl.redis_client(url, flag)


def server_credentials(config: FrontendConfig, *, listener: str) -> grpc.ServerCredentials | None:
    """TLS credentials for `listener` (None = plaintext); mTLS on the worker listener."""
    if not config.tls_cert:
        return None
    pair = [(read_file(config.tls_key, "--tls-key"), read_file(config.tls_cert, "--tls-cert"))]
    if listener == WORKER and config.tls_client_ca:
        ca = read_file(config.tls_client_ca, "--tls-client-ca")
        return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def auth_interceptors(
    config: FrontendConfig, tokens: TokenTable | None, *, listener: str
) -> list[AuthInterceptor]:
    """The `AuthInterceptor` for `listener`, or none when no control is configured."""
    if tokens is None and (config.allow_client_ac_writes or listener == WORKER):
        return []
    # Without tokens the worker listener's callers are workers (they may write the AC);
    # with tokens, the role decides on either listener.
    client_ac_writes = config.allow_client_ac_writes or (tokens is None and listener == WORKER)
    return [AuthInterceptor(tokens, client_ac_writes=client_ac_writes)]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(config: FrontendConfig) -> list[tuple[str, int]]:
    """The channel arguments of both listeners: message limits and the gRPC server limits.

    Keepalive: the server pings a connection quiet for `grpc_keepalive_time` (with or
    without calls, and however long a call sends no data: an idle Synchronize or a long
    Execute stream) and drops it after `grpc_keepalive_timeout` without an answer. A
    client may ping every `grpc_keepalive_min_time`, with or without calls; more often
    earns a strike, and the third strike closes the connection with GOAWAY
    "too_many_pings" (gRPC's default of 2 strikes allowed). `grpc_max_connection_idle`
    counts time without any call in flight, so a worker parked in Synchronize is never
    idle. `grpc_max_connection_age` = 0 leaves connections ageless (gRPC's own default).
    """
    options = [
        ("grpc.max_receive_message_length", config.max_message_size),
        ("grpc.max_send_message_length", config.max_message_size),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", config.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", _ms(config.grpc_keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(config.grpc_keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(config.grpc_keepalive_min_time)),
        ("grpc.max_connection_idle_ms", _ms(config.grpc_max_connection_idle)),
    ]
    if config.grpc_max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", _ms(config.grpc_max_connection_age)),
            ("grpc.max_connection_age_grace_ms", _ms(config.grpc_max_connection_age_grace)),
        ]
    return options


def shared_redis_warning(config: FrontendConfig) -> str | None:
    """The start-up warning for a CAS kept in the scheduler's Redis, or None."""
    if config.storage != "redis" or config.cas_redis_url not in ("", config.redis_url):
        return None
    return (
        "the CAS and Action Cache share the scheduler's Redis: blobs can fill it, and a "
        "full scheduler Redis (noeviction) refuses every Synchronize and Execute; give "
        "them their own Redis with --cas-redis (with maxmemory and allkeys-lru)"
    )


def _bind(server: grpc.aio.Server, config: FrontendConfig, address: str, listener: str) -> int:
    credentials = server_credentials(config, listener=listener)
    port: int
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


async def create_server(
    config: FrontendConfig,
    *,
    hooks: Sequence[Hook] = (),
    redis: AnyRedis | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[FrontendServer, int]:
    """Build (not start) a frontend serving Capabilities, CAS, ByteStream, AC, health, reflection.

    Returns the server and the client listener's port; `server.worker_port` is the
    worker listener's (None without `config.worker_listen`). Raises ConfigError for
    unreadable token or certificate files.
    """
    options = server_options(config)
    tokens = TokenTable.from_files(
        clients=config.client_tokens, workers=config.worker_tokens, admins=config.admin_tokens
    )

    def new_server(listener: str) -> grpc.aio.Server:
        # Innermost last: undecodable bytes are refused before any servicer runs.
        chain = [
            *auth_interceptors(config, tokens, listener=listener),
            *interceptors,
            DecodeErrorInterceptor(),
        ]
        return grpc.aio.server(options=options, interceptors=chain)

    server = new_server(CLIENT)
    worker_server = new_server(WORKER) if config.worker_listen else None
    closers: list[Callable[[], Awaitable[None]]] = []
    fast: FastRedis | None = None
    redis_outage = OutageLog("Redis")
    if redis is None:
        redis_outage = redis_outage_log(config.redis_url)
        redis = redis_client(config.redis_url)
        closers.append(redis.aclose)
        # The hot path's script calls pipeline over one more connection (fastredis).
        fast = redisurl.fast_client(config.redis_url)
        if fast is not None:
            closers.append(fast.aclose)
    blobs, ac, storage_closers = build_storage(config, redis, fast)
    warning = shared_redis_warning(config)
    if warning:
        log.warning("%s", warning)
    health_servicer = HealthServicer()
    checks: list[tuple[str, Check, OutageLog]] = [
        ("redis", redis.ping, redis_outage),
        ("storage", blobs.ping, storage_outage(config, redis_outage)),
    ]
    frontend = Frontend(
        config=config, server=server, redis=redis, blobs=blobs, action_cache=ac,
        health=HealthReporter(health_servicer, checks, interval=config.health_interval),
        closers=[*storage_closers, *closers], worker_server=worker_server, fast_redis=fast,
        redis_outage=redis_outage,
    )  # fmt: skip
    frontend.add_service(
        re_grpc.add_ContentAddressableStorageServicer_to_server,
        ContentAddressableStorageServicer(
            blobs,
            max_batch_total_size=config.max_batch_total_size,
            max_blob_size=config.max_blob_size,
            max_batch_digests=config.max_batch_digests,
        ),
        CAS,
    )
    frontend.add_service(
        bs_grpc.add_ByteStreamServicer_to_server,
        ByteStreamServicer(blobs, max_blob_size=config.max_blob_size),
        BYTESTREAM,
    )
    frontend.add_service(re_grpc.add_ActionCacheServicer_to_server,
                         ActionCacheServicer(ac, blobs, inline_budget=config.max_inline_size), ACTION_CACHE)  # fmt: skip
    for hook in hooks:
        result = hook(frontend)
        if inspect.isawaitable(result):
            await result
    capabilities = server_capabilities(
        max_batch_total_size=config.max_batch_total_size, max_blob_size=config.max_blob_size,
        exec_enabled=frontend.exec_enabled,
    )  # fmt: skip
    frontend.add_service(
        re_grpc.add_CapabilitiesServicer_to_server, CapabilitiesServicer(capabilities), CAPABILITIES
    )
    for each, names in ((server, frontend.service_names),
                        (worker_server, frontend.worker_service_names)):  # fmt: skip
        if each is not None:
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, each)
            reflection.enable_server_reflection([*names, HEALTH, reflection.SERVICE_NAME], each)
    port = _bind(server, config, config.listen, CLIENT)
    worker_port = None
    if worker_server is not None:
        worker_port = _bind(worker_server, config, config.worker_listen, WORKER)
    return FrontendServer(frontend, health_servicer, worker_port), port


def startup_line(config: FrontendConfig, port: int, worker_port: int | None = None) -> str:
    """The start-up log line: listeners, the Redis used (password masked), storage, security.
    A Redis URL left at its default says so: with no --redis, the frontend writes into
    whatever Redis listens on 127.0.0.1:6379."""
    redis = redact_url(config.redis_url)
    if config.redis_url == FrontendConfig().redis_url:
        redis += " (the default; --redis or REDBARN_REDIS to change)"
    storage = config.storage
    if config.storage == "redis" and config.cas_redis_url:
        storage += f" {redact_url(config.cas_redis_url)}"
    workers = f", workers on {config.worker_listen} (port {worker_port})"
    tls = ", TLS" + (" (mTLS for workers)" if config.tls_client_ca else "")
    return "redbarn frontend listening on {} (port {}){}{}, redis {}, storage {}{}".format(
        config.listen,
        port,
        workers if config.worker_listen else "",
        tls if config.tls_cert else "",
        redis,
        storage,
        ", bearer tokens required" if config.authenticated else "",
    )


async def serve(
    config: FrontendConfig,
    *,
    hooks: Sequence[Hook] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> int:
    """Run a frontend until SIGTERM or SIGINT, then stop gracefully. Returns the exit code."""
    server, port = await create_server(config, hooks=hooks, interceptors=interceptors)
    await server.start()
    log.info("%s", startup_line(config, port, server.worker_port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: grace period %.1fs", config.grace_period)
    await server.stop()
    return 0
