"""Listeners, bearer tokens and client AC writes on a real frontend, over real channels.

Every control is tried with the right credentials and the wrong ones: the worker
listener against the client listener, each role's token against each method, and
`allow_client_ac_writes=False` against clients and workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from redbarn.config import ConfigError
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.queue.config import SchedulerConfig

from .conftest import digest_of

SCHED = SchedulerConfig(idle_sync_timeout=0.5, platform_queue_timeout=60.0)
PLATFORM = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="OSFamily", value="linux")])
SERVING = health_pb2.HealthCheckResponse.SERVING
ACTION = digest_of(b"some action")


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    caps: Any
    cas: Any
    ac: Any
    execution: Any
    queue: Any
    health: Any

    @classmethod
    def of(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(
            channel,
            re_grpc.CapabilitiesStub(channel),
            re_grpc.ContentAddressableStorageStub(channel),
            re_grpc.ActionCacheStub(channel),
            re_grpc.ExecutionStub(channel),
            rw_grpc.OperationQueueStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )


@dataclass
class Running:
    server: FrontendServer
    client: Stubs
    worker: Stubs | None


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[Any]:
    """`await start(**config_changes)` -> a running frontend with Execution, and stubs."""
    running: list[Running] = []

    async def _start(**changes: Any) -> Running:
        config = dataclasses.replace(
            FrontendConfig(
                listen="127.0.0.1:0", redis_url=redis_url, health_interval=0.2, grace_period=0.2
            ),
            **changes,
        )
        server, port = await create_server(config, hooks=[scheduling_hook(SCHED)])
        await server.start()
        client = Stubs.of(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        worker = None
        if server.worker_port is not None:
            worker = Stubs.of(grpc.aio.insecure_channel(f"127.0.0.1:{server.worker_port}"))
        running.append(Running(server, client, worker))
        return running[-1]

    try:
        yield _start
    finally:
        for r in running:
            for stubs in (r.client, r.worker):
                if stubs is not None:
                    await stubs.channel.close()
            await r.server.stop(0)


def _md(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


async def _status(call: Any) -> tuple[str, str]:
    """(code name, details) of a unary call or of a whole server stream."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


def _idle_sync() -> rw_pb2.SynchronizeRequest:
    return rw_pb2.SynchronizeRequest(
        worker_id={"hostname": "sec", "thread": "0"},
        platform=PLATFORM,
        current_state=rw_pb2.CurrentState(idle={}),
        prefer_being_idle=True,
    )


def _ac_update() -> re_pb2.UpdateActionResultRequest:
    return re_pb2.UpdateActionResultRequest(
        action_digest=ACTION, action_result=re_pb2.ActionResult(exit_code=0)
    )


async def _services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for reply in stub.ServerReflectionInfo(ask()):
        names |= {s.name for s in reply.list_services_response.service}
    return names


# ------------------------------------------------------------------------------ listeners


async def test_worker_listener_serves_workers_and_client_listener_not_synchronize(
    start: Any,
) -> None:
    fe = await start(worker_listen="127.0.0.1:0")
    client, worker = fe.client, fe.worker
    assert worker is not None and fe.server.worker_port not in (None, 0)
    # Wrong listener: a client cannot report as a worker.
    assert await _status(client.queue.Synchronize(_idle_sync())) == (
        "UNIMPLEMENTED",
        "Method not found!",
    )
    # Right listener.
    reply = await worker.queue.Synchronize(_idle_sync())
    assert reply.desired_state.WhichOneof("worker_state") == "idle"
    # What workers need is on the worker listener; Execution is not.
    blob = digest_of(b"x")
    for stubs in (client, worker):
        missing = await stubs.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[blob])
        )
        assert list(missing.missing_blob_digests) == [blob]
        await stubs.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest())
        assert (await stubs.health.Check(health_pb2.HealthCheckRequest())).status == SERVING
    assert (await _status(worker.ac.UpdateActionResult(_ac_update())))[0] == "OK"
    assert (await _status(worker.execution.Execute(re_pb2.ExecuteRequest())))[0] == "UNIMPLEMENTED"
    wait = client.execution.WaitExecution(re_pb2.WaitExecutionRequest(name="nope"))
    assert (await _status(wait))[0] == "NOT_FOUND"  # served (and the name is unknown)
    rw, re = "buildbarn.remoteworker.", "build.bazel.remote.execution.v2."
    assert f"{rw}OperationQueue" in await _services(worker.channel)
    assert f"{re}Execution" not in await _services(worker.channel)
    assert f"{rw}OperationQueue" not in await _services(client.channel)
    assert f"{re}Execution" in await _services(client.channel)


async def test_without_worker_listener_one_listener_serves_everything(start: Any) -> None:
    fe = await start()
    assert fe.worker is None and fe.server.worker_port is None
    reply = await fe.client.queue.Synchronize(_idle_sync())
    assert reply.desired_state.WhichOneof("worker_state") == "idle"


# ---------------------------------------------------------------------------- bearer tokens


@pytest.fixture
def token_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for role in ("client", "worker", "admin"):
        path = tmp_path / f"{role}-tokens"
        path.write_text(f"# {role}s\n{role}-secret\n")
        files[f"{role}_tokens"] = str(path)
    return files


# Per token: Capabilities, FindMissingBlobs, WaitExecution("nope"), Synchronize, AC write.
ROLE_CASES = [
    (None, ["UNAUTHENTICATED"] * 5),
    ("forged", ["UNAUTHENTICATED"] * 5),
    ("client-secret", ["OK", "OK", "NOT_FOUND", "PERMISSION_DENIED", "OK"]),
    ("worker-secret", ["OK", "OK", "PERMISSION_DENIED", "OK", "OK"]),
    ("admin-secret", ["OK", "OK", "NOT_FOUND", "OK", "OK"]),
]


@pytest.mark.parametrize(("token", "expected"), ROLE_CASES)
async def test_roles_on_one_listener(
    start: Any, token_files: dict[str, str], token: str | None, expected: list[str]
) -> None:
    fe = await start(**token_files)
    s, md = fe.client, _md(token)
    got = [
        await _status(s.caps.GetCapabilities(re_pb2.GetCapabilitiesRequest(), metadata=md)),
        await _status(s.cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(), metadata=md)),
        await _status(
            s.execution.WaitExecution(re_pb2.WaitExecutionRequest(name="nope"), metadata=md)
        ),
        await _status(s.queue.Synchronize(_idle_sync(), metadata=md)),
        await _status(s.ac.UpdateActionResult(_ac_update(), metadata=md)),
    ]
    assert [code for code, _ in got] == expected
    if token is None:
        assert got[0][1] == "Missing bearer token: send 'authorization: Bearer <token>'"
    elif token == "forged":
        assert got[0][1] == "Unknown bearer token"
    elif token == "client-secret":
        assert (
            got[3][1]
            == "Role client may not call /buildbarn.remoteworker.OperationQueue/Synchronize"
        )
    # Health stays open for load balancers, token or not.
    reply = await s.health.Check(health_pb2.HealthCheckRequest(), metadata=md)
    assert reply.status == SERVING


async def test_tokens_apply_on_the_worker_listener_too(
    start: Any, token_files: dict[str, str]
) -> None:
    fe = await start(worker_listen="127.0.0.1:0", **token_files)
    w = fe.worker
    assert w is not None
    assert (await _status(w.queue.Synchronize(_idle_sync())))[0] == "UNAUTHENTICATED"
    code, details = await _status(w.queue.Synchronize(_idle_sync(), metadata=_md("client-secret")))
    assert (code, details) == (
        "PERMISSION_DENIED",
        "Role client may not call /buildbarn.remoteworker.OperationQueue/Synchronize",
    )
    assert (await _status(w.queue.Synchronize(_idle_sync(), metadata=_md("worker-secret"))))[
        0
    ] == "OK"
    # Even an admin token does not make the client listener serve Synchronize.
    sync = fe.client.queue.Synchronize(_idle_sync(), metadata=_md("admin-secret"))
    assert (await _status(sync))[0] == "UNIMPLEMENTED"


async def test_unreadable_or_empty_token_file_is_a_config_error(
    redis_url: str, tmp_path: Path
) -> None:
    config = FrontendConfig(
        listen="127.0.0.1:0", redis_url=redis_url, client_tokens=str(tmp_path / "absent")
    )
    with pytest.raises(ConfigError, match=r"^cannot read token file .*absent: No such file"):
        await create_server(config)
    (tmp_path / "empty").write_text("# nothing\n\n")
    config = dataclasses.replace(config, client_tokens=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"^token file .*empty holds no tokens$"):
        await create_server(config)


# ------------------------------------------------------------------------ client AC writes

DENIED_AC = "Action cache writes by clients are disabled (--allow-client-ac-writes=false)"


async def test_client_ac_writes_off_with_a_worker_listener(start: Any) -> None:
    fe = await start(worker_listen="127.0.0.1:0", allow_client_ac_writes=False)
    assert fe.worker is not None
    assert await _status(fe.client.ac.UpdateActionResult(_ac_update())) == (
        "PERMISSION_DENIED",
        DENIED_AC,
    )
    assert await _status(fe.worker.ac.UpdateActionResult(_ac_update())) == ("OK", "")
    # Reads stay open to clients: the worker's result is served.
    got = await fe.client.ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=ACTION))
    assert got == re_pb2.ActionResult(exit_code=0)


async def test_client_ac_writes_off_with_tokens(start: Any, token_files: dict[str, str]) -> None:
    fe = await start(allow_client_ac_writes=False, **token_files)
    update = fe.client.ac.UpdateActionResult
    assert await _status(update(_ac_update(), metadata=_md("client-secret"))) == (
        "PERMISSION_DENIED",
        "Role client may not call /build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
    )
    assert await _status(update(_ac_update(), metadata=_md("worker-secret"))) == ("OK", "")
    assert await _status(update(_ac_update(), metadata=_md("admin-secret"))) == ("OK", "")


async def test_client_ac_writes_on_by_default(start: Any) -> None:
    fe = await start(worker_listen="127.0.0.1:0")
    assert await _status(fe.client.ac.UpdateActionResult(_ac_update())) == ("OK", "")


# ----------------------------------------------------------------------------- config/CLI


def _parse(*argv: str) -> FrontendConfig:
    import argparse

    from redbarn.frontend import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.config_from_args(parser.parse_args(list(argv)))


def test_cli_security_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDBARN_ADMIN_TOKENS", "/etc/redbarn/admins")
    config = _parse(
        "--worker-listen", "0.0.0.0:8982", "--client-tokens", "/c", "--worker-tokens", "/w",
        "--allow-client-ac-writes", "false", "--tls-cert", "/s.pem", "--tls-key", "/s.key",
        "--tls-client-ca", "/ca.pem",
    )  # fmt: skip
    assert config == FrontendConfig(
        worker_listen="0.0.0.0:8982",
        client_tokens="/c",
        worker_tokens="/w",
        admin_tokens="/etc/redbarn/admins",
        allow_client_ac_writes=False,
        tls_cert="/s.pem",
        tls_key="/s.key",
        tls_client_ca="/ca.pem",
    )
    assert _parse().allow_client_ac_writes is True
    assert _parse("--allow-client-ac-writes", "TRUE").allow_client_ac_writes is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--allow-client-ac-writes", "maybe"], 'invalid --allow-client-ac-writes "maybe": expected true or false'),
        (["--allow-client-ac-writes", "false"], "--allow-client-ac-writes=false needs --worker-listen or --worker-tokens"),
        (["--worker-listen", "nowhere"], 'invalid --worker-listen "nowhere": expected HOST:PORT'),
        (["--tls-cert", "/s.pem"], "--tls-cert and --tls-key must be given together"),
        (["--tls-client-ca", "/ca.pem"], "--tls-client-ca needs --tls-cert, --tls-key and --worker-listen"),
        (["--tls-cert", "/s", "--tls-key", "/k", "--tls-client-ca", "/ca"], "--tls-client-ca needs --tls-cert, --tls-key and --worker-listen"),
        (["--redis", "http://u:hunter2@r:1"], 'invalid --redis "http://u:***@r:1": expected redis://host:port/db'),
    ],
)  # fmt: skip
def test_cli_rejects_bad_security_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(*argv)
    assert str(info.value) == message


async def test_garbage_bytes_are_authenticated_before_they_are_decoded(
    start: Any, token_files: dict[str, str]
) -> None:
    fe = await start(**token_files)
    call = fe.client.channel.unary_unary(
        "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"
    )
    assert (await _status(call(b"\xff\xff")))[0] == "UNAUTHENTICATED"
    code, details = await _status(call(b"\xff\xff", metadata=_md("client-secret")))
    assert code == "INVALID_ARGUMENT"
    assert details.startswith(
        "Undecodable request: Error parsing message with type "
        "'build.bazel.remote.execution.v2.FindMissingBlobsRequest'"
    )
