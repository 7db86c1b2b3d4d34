"""Bearer-token authentication and per-method roles, as one server interceptor.

Three token files, one token per line (blank lines and `#` comments ignored):
clients (REAPI: Execute, CAS, AC, ByteStream, Capabilities; and BuildQueueState reads
only while no admin token is configured), workers (Synchronize plus the CAS,
ByteStream and AC calls a worker makes), and admins (everything: BuildQueueState
reads, which show every client's operations, invocation ids and workers, and its
writes, KillOperations, drains, TerminateWorkers). With no token file configured,
authentication is off.

A call without a valid token gets UNAUTHENTICATED; a valid token whose role may not
call the method gets PERMISSION_DENIED. Health and reflection stay open so load
balancers and grpcurl work. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import grpc

from redbarn.config import ConfigError
from redbarn.frontend.decoding import Continuation

REAPI = "/build.bazel.remote.execution.v2."
BYTESTREAM = "/google.bytestream.ByteStream/"
BQS = "/buildbarn.buildqueuestate.BuildQueueState/"
SYNCHRONIZE = "/buildbarn.remoteworker.OperationQueue/Synchronize"
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_WRITES = frozenset(
    BQS + m for m in ("KillOperations", "AddDrain", "RemoveDrain", "TerminateWorkers")
)
AC_WRITE = REAPI + "ActionCache/UpdateActionResult"


class Role(Enum):
    CLIENT = "client"
    WORKER = "worker"
    ADMIN = "admin"


def allowed(
    role: Role, method: str, *, client_ac_writes: bool = True, client_bqs_reads: bool = True
) -> bool:
    """May `role` call the full gRPC `method` name? `client_bqs_reads=False` keeps
    BuildQueueState reads for admins (the interceptor sets it when admin tokens exist)."""
    if role is Role.ADMIN:
        return True
    storage = (
        method.startswith(REAPI + "ContentAddressableStorage/")
        or method.startswith(BYTESTREAM)
        or method.startswith(REAPI + "ActionCache/")
        or method.startswith(REAPI + "Capabilities/")
    )
    if role is Role.WORKER:
        return method == SYNCHRONIZE or storage
    if method == AC_WRITE:
        return client_ac_writes
    if method.startswith(BQS):
        return client_bqs_reads and method not in ADMIN_WRITES
    return storage or method.startswith(REAPI + "Execution/")


def read_tokens(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read token file {path}: {err.strerror}") from err
    tokens = [t.strip() for t in lines if t.strip() and not t.strip().startswith("#")]
    if not tokens:
        raise ConfigError(f"token file {path} holds no tokens")
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenTable:
    """Token digests by role. Lookup compares every digest in constant time."""

    entries: tuple[tuple[bytes, Role], ...]

    @classmethod
    def from_files(
        cls, *, clients: str | None, workers: str | None, admins: str | None
    ) -> TokenTable | None:
        entries: list[tuple[bytes, Role]] = []
        for path, role in ((clients, Role.CLIENT), (workers, Role.WORKER), (admins, Role.ADMIN)):
            if path:
                entries += [(_digest(t), role) for t in read_tokens(path)]
        return cls(tuple(entries)) if entries else None

    @property
    def has_admins(self) -> bool:
        return any(role is Role.ADMIN for _, role in self.entries)

    def role_of(self, token: str) -> Role | None:
        d = _digest(token)
        found: Role | None = None
        for digest, role in self.entries:
            if hmac.compare_digest(digest, d) and (found is None or role is Role.ADMIN):
                found = role
        return found


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _deny(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that fails with `code`."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    deser, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, deser, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, deser, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, deser, ser)
    return grpc.unary_unary_rpc_method_handler(abort, deser, ser)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token and the method's role before any servicer runs.

    `tokens=None` turns authentication off; `client_ac_writes=False` still refuses
    UpdateActionResult to clients (and, without tokens, to every caller of this
    listener: use it on a client listener when workers have their own).
    `serve_synchronize=False` refuses Synchronize outright (a client listener when
    `--worker-listen` is set).
    """

    def __init__(
        self,
        tokens: TokenTable | None,
        *,
        client_ac_writes: bool = True,
        serve_synchronize: bool = True,
    ) -> None:
        self._tokens = tokens
        self._client_ac_writes = client_ac_writes
        self._serve_synchronize = serve_synchronize

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if method == SYNCHRONIZE and not self._serve_synchronize:
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                "Synchronize is served only on the worker listener",
            )
        if self._tokens is None:
            if method == AC_WRITE and not self._client_ac_writes:
                return _deny(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    "Action cache writes by clients are disabled (--allow-client-ac-writes=false)",
                )
            return handler
        token = bearer_token(details.invocation_metadata)
        if token is None:
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "Missing bearer token: send 'authorization: Bearer <token>'",
            )
        role = self._tokens.role_of(token)
        if role is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "Unknown bearer token")
        if not allowed(
            role,
            method,
            client_ac_writes=self._client_ac_writes,
            client_bqs_reads=not self._tokens.has_admins,
        ):
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"Role {role.value} may not call {method}",
            )
        return handler
