"""gRPC server limits over real connections: concurrent streams per connection, idle
connections, keepalive enforcement; and the warning for a CAS in the scheduler's Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.server import Frontend, FrontendServer, create_server, server_options

HOLD = "/redbarn.test.Hold/Wait"


class Holder:
    """A test service whose calls wait until released, counting how many run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.entered = asyncio.Condition()
        self.release = asyncio.Event()

    async def wait(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        async with self.entered:
            self.running += 1
            self.most = max(self.most, self.running)
            self.entered.notify_all()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return request

    def hook(self, frontend: Frontend) -> None:
        handler = grpc.method_handlers_generic_handler(
            "redbarn.test.Hold", {"Wait": grpc.unary_unary_rpc_method_handler(self.wait)}
        )
        frontend.server.add_generic_rpc_handlers((handler,))

    async def until_running(self, n: int) -> None:
        async with self.entered:
            await self.entered.wait_for(lambda: self.running >= n)


Started = Callable[..., Awaitable[tuple[FrontendServer, int]]]


@pytest.fixture
async def started(frontend_config: FrontendConfig) -> AsyncIterator[Started]:
    servers: list[FrontendServer] = []

    async def start(
        hooks: tuple[object, ...] = (), **changes: object
    ) -> tuple[FrontendServer, int]:
        config = dataclasses.replace(frontend_config, **changes)  # type: ignore[arg-type]
        server, port = await create_server(config, hooks=hooks)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        await server.stop(0)


async def test_streams_beyond_the_limit_are_refused_or_wait(started: Started) -> None:
    """Six calls on one connection with a limit of two: never more than two run; each of
    the others waits for a slot or is refused with RST_STREAM REFUSED_STREAM (UNAVAILABLE),
    as gRPC core decides."""
    holder = Holder()
    _, port = await started(hooks=(holder.hook,), grpc_max_concurrent_streams=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        wait = channel.unary_unary(HOLD)
        calls = [wait(f"call {i}".encode(), timeout=30) for i in range(6)]
        await asyncio.wait_for(holder.until_running(2), 10)
        await asyncio.sleep(0.5)  # room for the other four to arrive, were they allowed
        assert holder.running == 2
        holder.release.set()
        replies = await asyncio.gather(*calls, return_exceptions=True)
    assert holder.most == 2
    done = [r for r in replies if isinstance(r, bytes)]
    refused = [r for r in replies if isinstance(r, grpc.aio.AioRpcError)]
    assert len(done) >= 2 and len(done) + len(refused) == 6, replies
    for err in refused:
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err
        assert "REFUSED_STREAM" in (err.details() or "") or "error code 7" in (err.details() or "")


async def test_without_a_low_limit_the_same_calls_run_together(started: Started) -> None:
    """The control for the test above: the default limit (1000) lets all six run at once."""
    holder = Holder()
    _, port = await started(hooks=(holder.hook,))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        wait = channel.unary_unary(HOLD)
        calls = [wait(b"x", timeout=30) for _ in range(6)]
        await asyncio.wait_for(holder.until_running(6), 10)
        holder.release.set()
        await asyncio.gather(*calls)
    assert holder.most == 6


async def test_a_connection_without_calls_is_closed_after_max_idle(started: Started) -> None:
    _, port = await started(grpc_max_connection_idle=0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        # The server's GOAWAY takes the connection away; the channel goes IDLE.
        await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 10)
        assert channel.get_state() is not grpc.ChannelConnectivity.READY


async def test_a_call_in_flight_keeps_the_connection_past_max_idle(started: Started) -> None:
    """A worker parked in Synchronize is a call in flight: idle time never cuts it."""
    holder = Holder()
    _, port = await started(hooks=(holder.hook,), grpc_max_connection_idle=0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(HOLD)(b"held", timeout=30)
        await asyncio.wait_for(holder.until_running(1), 10)
        await asyncio.sleep(1.5)  # five idle periods
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        holder.release.set()
        assert await call == b"held"


async def test_a_client_pinging_too_often_is_disconnected(started: Started) -> None:
    """Pings every 100 ms against a 10 s minimum: strikes, then GOAWAY too_many_pings,
    and the held call fails with UNAVAILABLE."""
    holder = Holder()
    _, port = await started(hooks=(holder.hook,), grpc_keepalive_min_time=10.0)
    options = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(HOLD)(b"held", timeout=30)
        await asyncio.wait_for(holder.until_running(1), 10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call, 20)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value


def test_server_options_follow_the_config() -> None:
    config = FrontendConfig(
        grpc_max_concurrent_streams=7, grpc_keepalive_min_time=2.5, grpc_keepalive_time=30,
        grpc_keepalive_timeout=4, grpc_max_connection_idle=60, grpc_max_connection_age=600,
        grpc_max_connection_age_grace=9,
    )  # fmt: skip
    options = dict(server_options(config))
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 2500
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 4_000
    assert options["grpc.max_connection_idle_ms"] == 60_000
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 9_000
    # Age 0 means ageless: the option is left out (gRPC's default is no limit).
    ageless = dict(server_options(FrontendConfig()))
    assert "grpc.max_connection_age_ms" not in ageless
    assert "grpc.max_connection_age_grace_ms" not in ageless


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "redbarn.frontend.server"
    ]


@pytest.mark.parametrize("cas_redis", ["", "same"])
async def test_one_redis_for_scheduler_and_cas_is_warned_about(
    started: Started, caplog: pytest.LogCaptureFixture, redis_url: str, cas_redis: str
) -> None:
    caplog.set_level(logging.INFO)
    await started(cas_redis_url=redis_url if cas_redis == "same" else "")
    [warning] = _warnings(caplog)
    assert "share the scheduler's Redis" in warning
    assert "--cas-redis" in warning


async def test_a_separate_cas_redis_is_not_warned_about(
    started: Started, caplog: pytest.LogCaptureFixture, redis_url: str
) -> None:
    caplog.set_level(logging.INFO)
    # Another database of the same server counts as its own Redis URL, as build_storage
    # treats it; the warning is about configuration, not about which process serves it.
    await started(cas_redis_url=redis_url.rsplit("/", 1)[0] + "/1")
    assert _warnings(caplog) == []
