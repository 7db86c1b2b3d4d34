"""Bearer tokens and roles, through a real channel: right and wrong credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from redbarn.frontend.auth import AuthInterceptor, Role, TokenTable, allowed
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import create_server
from redbarn.proto import (
    buildqueuestate_pb2,
    buildqueuestate_pb2_grpc,
    remote_execution_pb2,
    remote_execution_pb2_grpc,
    remoteworker_pb2,
    remoteworker_pb2_grpc,
)
from redbarn.queue.config import SchedulerConfig


class _Ok(remote_execution_pb2_grpc.CapabilitiesServicer):  # type: ignore[misc]
    async def GetCapabilities(self, request: object, context: object) -> object:
        return remote_execution_pb2.ServerCapabilities()


class _Sync(remoteworker_pb2_grpc.OperationQueueServicer):  # type: ignore[misc]
    async def Synchronize(self, request: object, context: object) -> object:
        return remoteworker_pb2.SynchronizeResponse()


class _Bqs(buildqueuestate_pb2_grpc.BuildQueueStateServicer):  # type: ignore[misc]
    pass


async def _server(interceptor: AuthInterceptor) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=[interceptor])
    remote_execution_pb2_grpc.add_CapabilitiesServicer_to_server(_Ok(), server)
    remoteworker_pb2_grpc.add_OperationQueueServicer_to_server(_Sync(), server)
    buildqueuestate_pb2_grpc.add_BuildQueueStateServicer_to_server(_Bqs(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
def tokens(tmp_path: Path) -> TokenTable:
    (tmp_path / "c").write_text("# clients\nclient-secret\n")
    (tmp_path / "w").write_text("worker-secret\n")
    (tmp_path / "a").write_text("admin-secret\n")
    table = TokenTable.from_files(
        clients=str(tmp_path / "c"), workers=str(tmp_path / "w"), admins=str(tmp_path / "a")
    )
    assert table is not None
    return table


@pytest.fixture
async def channel(tokens: TokenTable) -> AsyncIterator[grpc.aio.Channel]:
    server, port = await _server(AuthInterceptor(tokens))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


def _md(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("token", "capabilities", "synchronize", "kill"),
    [
        (None, "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"),
        ("wrong", "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"),
        ("client-secret", "OK", "PERMISSION_DENIED", "PERMISSION_DENIED"),
        ("worker-secret", "OK", "OK", "PERMISSION_DENIED"),
        ("admin-secret", "OK", "OK", "UNIMPLEMENTED"),
    ],
)
async def test_roles(
    channel: grpc.aio.Channel, token: str | None, capabilities: str, synchronize: str, kill: str
) -> None:
    caps = remote_execution_pb2_grpc.CapabilitiesStub(channel)
    sync = remoteworker_pb2_grpc.OperationQueueStub(channel)
    bqs = buildqueuestate_pb2_grpc.BuildQueueStateStub(channel)
    md = _md(token)
    got = (
        await _code(
            caps.GetCapabilities(remote_execution_pb2.GetCapabilitiesRequest(), metadata=md)
        ),
        await _code(sync.Synchronize(remoteworker_pb2.SynchronizeRequest(), metadata=md)),
        await _code(bqs.KillOperations(buildqueuestate_pb2.KillOperationsRequest(), metadata=md)),
    )
    assert [c.name for c in got] == [capabilities, synchronize, kill]


async def test_client_listener_refuses_synchronize_and_ac_writes() -> None:
    server, port = await _server(
        AuthInterceptor(None, serve_synchronize=False, client_ac_writes=False)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            sync = remoteworker_pb2_grpc.OperationQueueStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await sync.Synchronize(remoteworker_pb2.SynchronizeRequest())
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "worker listener" in (err.value.details() or "")
            caps = remote_execution_pb2_grpc.CapabilitiesStub(ch)
            await caps.GetCapabilities(remote_execution_pb2.GetCapabilitiesRequest())
    finally:
        await server.stop(None)


def test_role_table() -> None:
    ac_write = "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult"
    assert allowed(Role.CLIENT, ac_write)
    assert not allowed(Role.CLIENT, ac_write, client_ac_writes=False)
    assert allowed(Role.WORKER, ac_write, client_ac_writes=False)
    assert not allowed(Role.WORKER, "/build.bazel.remote.execution.v2.Execution/Execute")
    assert allowed(Role.CLIENT, "/buildbarn.buildqueuestate.BuildQueueState/ListWorkers")
    assert not allowed(Role.CLIENT, "/buildbarn.buildqueuestate.BuildQueueState/AddDrain")
    # With admin tokens configured, the reads are theirs alone.
    assert not allowed(
        Role.CLIENT,
        "/buildbarn.buildqueuestate.BuildQueueState/ListWorkers",
        client_bqs_reads=False,
    )
    assert allowed(
        Role.ADMIN, "/buildbarn.buildqueuestate.BuildQueueState/ListWorkers", client_bqs_reads=False
    )


BQS_READS = ("ListPlatformQueues", "ListOperations", "GetOperation")


async def _bqs_reads(bqs: Any, token: str) -> list[str]:
    """The status of each BuildQueueState read with `token`, as a name."""
    md = _md(token)
    calls = (
        bqs.ListPlatformQueues(empty_pb2.Empty(), metadata=md),
        bqs.ListOperations(buildqueuestate_pb2.ListOperationsRequest(page_size=10), metadata=md),
        bqs.GetOperation(
            buildqueuestate_pb2.GetOperationRequest(operation_name="no-such-operation"),
            metadata=md,
        ),
    )
    return [(await _code(call)).name for call in calls]


@pytest.mark.parametrize("with_admins", [True, False])
async def test_buildqueuestate_reads_are_admin_only_when_admins_exist(
    tmp_path: Path, redis_url: str, with_admins: bool
) -> None:
    """A real frontend with the scheduler: with admin tokens configured, a client token
    gets PERMISSION_DENIED on every BuildQueueState read and an admin token gets the
    answer; without admin tokens, clients keep reading as before."""
    (tmp_path / "c").write_text("client-secret\n")
    (tmp_path / "a").write_text("admin-secret\n")
    config = FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        client_tokens=str(tmp_path / "c"),
        admin_tokens=str(tmp_path / "a") if with_admins else "",
        health_interval=0.2,
    )
    server, port = await create_server(config, hooks=[scheduling_hook(SchedulerConfig())])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            bqs = buildqueuestate_pb2_grpc.BuildQueueStateStub(ch)
            as_client = await _bqs_reads(bqs, "client-secret")
            as_admin = await _bqs_reads(bqs, "admin-secret")
            denied = None
            if with_admins:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await bqs.ListPlatformQueues(empty_pb2.Empty(), metadata=_md("client-secret"))
                denied = err.value.details()
    finally:
        await server.stop(0)
    answered = ["OK", "OK", "NOT_FOUND"]  # GetOperation of an unknown name
    if with_admins:
        assert as_client == ["PERMISSION_DENIED"] * len(BQS_READS)
        assert as_admin == answered
        assert "ListPlatformQueues" in (denied or "")  # names the method refused
    else:
        assert as_client == answered
        assert as_admin == ["UNAUTHENTICATED"] * len(BQS_READS)  # no such token configured
