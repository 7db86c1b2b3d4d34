"""Bearer-token client side: every call of the worker carries `authorization: Bearer`.

The frontend's worker token file (`redbarn.frontend.auth`) holds the accepted tokens;
the worker reads its own from `--token-file` (first non-empty, non-comment line).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from redbarn.config import ConfigError


def read_token(path: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read token file {path}: {err.strerror}") from err
    for line in lines:
        token = line.strip()
        if token and not token.startswith("#"):
            return token
    raise ConfigError(f"token file {path} holds no token")


def _with_token(details: grpc.aio.ClientCallDetails, header: tuple[str, str]) -> Any:
    metadata = list(details.metadata or ())
    metadata.append(header)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, grpc.aio.Metadata(*metadata),
        details.credentials, details.wait_for_ready,
    )  # fmt: skip


class _Bearer:
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), request)

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        return await continuation(_with_token(details, self._header), requests)


class _UnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    pass


class _UnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    pass


class _StreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    pass


def interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors adding the bearer token to every call (none without one)."""
    if not token:
        return []
    return [_UnaryUnary(token), _UnaryStream(token), _StreamUnary(token)]
