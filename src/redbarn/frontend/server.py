"""Server wiring: build the storage and servicers from a `FrontendConfig`.

`create_server(config)` returns a not-yet-started `FrontendServer` and the bound
port (tests listen on 127.0.0.1:0 and talk over a real channel); `serve(config)`
runs one until SIGTERM/SIGINT. More servicers (Execution, OperationQueue,
BuildQueueState) come in through hooks, each called with the `Frontend` before
the server starts:

    def add_execution(frontend: Frontend) -> None:
        servicer = ExecutionServicer(scheduler, frontend.blobs, frontend.action_cache)
        frontend.add_service(re_grpc.add_ExecutionServicer_to_server, servicer, EXECUTION)
        frontend.exec_enabled = True                # Capabilities reports it
        frontend.add_background(reaper.run)         # started with the server, cancelled on stop
        frontend.on_shutdown(servicer.release_parked)  # SIGTERM, before the grace period

    server, port = await create_server(config, hooks=[add_execution])

`add_service` registers the servicer, lists it for reflection and gives it a
health status.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from redbarn.frontend.action_cache import ActionCacheServicer
from redbarn.frontend.bytestream import ByteStreamServicer
from redbarn.frontend.capabilities import CapabilitiesServicer, server_capabilities
from redbarn.frontend.cas import ContentAddressableStorageServicer
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.health import Check, HealthReporter
from redbarn.frontend.storage import ActionCacheStore, BlobStore
from redbarn.frontend.storage.completeness import CompletenessCheckingActionCache
from redbarn.frontend.storage.proxy import GrpcActionCache, GrpcBlobStore, open_channel
from redbarn.frontend.storage.redis import RedisActionCache, RedisBlobStore
from redbarn.proto import bytestream_pb2, remote_execution_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

log = logging.getLogger(__name__)

_RE = remote_execution_pb2.DESCRIPTOR.services_by_name
CAPABILITIES = _RE["Capabilities"].full_name
CAS = _RE["ContentAddressableStorage"].full_name
ACTION_CACHE = _RE["ActionCache"].full_name
EXECUTION = _RE["Execution"].full_name
BYTESTREAM = bytestream_pb2.DESCRIPTOR.services_by_name["ByteStream"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

Hook = Callable[["Frontend"], "Awaitable[None] | None"]


@dataclass
class Frontend:
    """What a hook gets: the config, the clients, the stores, and ways to add to the server."""

    config: FrontendConfig
    server: grpc.aio.Server
    redis: aioredis.Redis  # the scheduler's Redis
    blobs: BlobStore  # CAS (Redis or proxy)
    action_cache: ActionCacheStore  # completeness-checking
    health: HealthReporter
    exec_enabled: bool = False
    service_names: list[str] = field(default_factory=list)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def add_service(
        self, adder: Callable[[Any, grpc.aio.Server], None], servicer: object, name: str
    ) -> None:
        adder(servicer, self.server)
        self.service_names.append(name)
        self.health.services.append(name)

    def add_background(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run `task()` while the server runs; it is cancelled on stop."""
        self.background.append(task)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await `hook()` when stopping, before in-flight calls get their grace period."""
        self.shutdown_hooks.append(hook)


class FrontendServer:
    """A grpc.aio server plus the frontend's background tasks and clients."""

    def __init__(self, frontend: Frontend, health_servicer: HealthServicer) -> None:
        self.frontend = frontend
        self.server = frontend.server
        self._health_servicer = health_servicer
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.frontend.health.check_once()
        await self.server.start()
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
        await self.server.stop(grace)
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
        await self.server.wait_for_termination()


async def _as_coro(run: Callable[[], Awaitable[None]]) -> None:
    await run()


def build_storage(
    config: FrontendConfig, scheduler_redis: aioredis.Redis
) -> tuple[BlobStore, ActionCacheStore, list[Callable[[], Awaitable[None]]]]:
    """The CAS and (completeness-checking) Action Cache `config` asks for, and their closers."""
    closers: list[Callable[[], Awaitable[None]]] = []
    blobs: BlobStore
    base_ac: ActionCacheStore
    if config.storage.startswith("grpc://"):
        channel = open_channel(config.storage_target, max_message_bytes=config.max_message_size)
        closers.append(channel.close)
        blobs = GrpcBlobStore(channel, max_batch_bytes=min(config.max_batch_total_size, 2 << 20))
        base_ac = GrpcActionCache(channel)
    else:
        client = scheduler_redis
        if config.cas_redis_url and config.cas_redis_url != config.redis_url:
            client = redis_client(config.cas_redis_url)
            closers.append(client.aclose)
        blobs = RedisBlobStore(
            client, ttl=config.cas_ttl, upload_ttl=config.upload_ttl, chunk_size=config.chunk_size
        )
        base_ac = RedisActionCache(client, ttl=config.ac_ttl)
    ac = CompletenessCheckingActionCache(base_ac, blobs, max_tree_bytes=config.max_tree_check_size)
    return blobs, ac, closers


def redis_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=2.0)


async def create_server(
    config: FrontendConfig,
    *,
    hooks: Sequence[Hook] = (),
    redis: aioredis.Redis | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[FrontendServer, int]:
    """Build (not start) a frontend serving Capabilities, CAS, ByteStream, AC, health, reflection."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_size),
        ("grpc.max_send_message_length", config.max_message_size),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options, interceptors=list(interceptors))
    closers: list[Callable[[], Awaitable[None]]] = []
    if redis is None:
        redis = redis_client(config.redis_url)
        closers.append(redis.aclose)
    blobs, ac, storage_closers = build_storage(config, redis)
    health_servicer = HealthServicer()
    checks: list[tuple[str, Check]] = [("redis", redis.ping), ("storage", blobs.ping)]
    frontend = Frontend(
        config=config, server=server, redis=redis, blobs=blobs, action_cache=ac,
        health=HealthReporter(health_servicer, checks, interval=config.health_interval),
        closers=[*storage_closers, *closers],
    )  # fmt: skip
    frontend.add_service(
        re_grpc.add_ContentAddressableStorageServicer_to_server,
        ContentAddressableStorageServicer(blobs, max_batch_total_size=config.max_batch_total_size),
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
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*frontend.service_names, HEALTH, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    return FrontendServer(frontend, health_servicer), port


async def serve(
    config: FrontendConfig,
    *,
    hooks: Sequence[Hook] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> int:
    """Run a frontend until SIGTERM or SIGINT, then stop gracefully. Returns the exit code."""
    server, port = await create_server(config, hooks=hooks, interceptors=interceptors)
    await server.start()
    log.info(
        "redbarn frontend listening on %s (port %d), storage %s",
        config.listen,
        port,
        config.storage,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: grace period %.1fs", config.grace_period)
    await server.stop()
    return 0
