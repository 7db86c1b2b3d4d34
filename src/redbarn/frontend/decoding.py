"""Undecodable requests become INVALID_ARGUMENT, as one server interceptor.

grpc.aio answers a request whose bytes do not parse as the method's message with
UNKNOWN ("Unexpected DecodeError") and logs a traceback per call, so garbage from
one client fills the log and looks like a server bug. `DecodeErrorInterceptor` wraps
every handler's request deserializer: a message that does not parse becomes an
`Undecodable` marker, and the handler aborts with INVALID_ARGUMENT naming the
message type (`Undecodable request: Error parsing message with type
'build.bazel.remote.execution.v2.GetActionResultRequest': ...`) before any
servicer code runs. For request streams the check happens as each message is read.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# What a server interceptor's `intercept_service` calls to get the method's handler.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class Undecodable:
    """What the wrapped deserializer returns for bytes that do not parse."""

    def __init__(self, message: str) -> None:
        self.message = message


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    inner = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return inner(data)
        except Exception as err:  # DecodeError and whatever else a parser raises
            return Undecodable(f"Undecodable request: {err}")

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], request: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        yield request


def _guard_unary_request(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        return await behavior(request, context)

    return unary


def _guard_request_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            async for item in behavior(_checked(requests, context), context):
                yield item

        return stream

    async def unary(requests: Any, context: Any) -> Any:
        return await behavior(_checked(requests, context), context)

    return unary


def guard(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with a deserializer that never raises and a check before the servicer."""
    deser = _safe(handler.request_deserializer)
    ser = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        behavior = _guard_request_stream(handler.stream_stream)
        return grpc.stream_stream_rpc_method_handler(behavior, deser, ser)
    if handler.request_streaming:
        behavior = _guard_request_stream(handler.stream_unary)
        return grpc.stream_unary_rpc_method_handler(behavior, deser, ser)
    if handler.response_streaming:
        behavior = _guard_unary_request(handler.unary_stream)
        return grpc.unary_stream_rpc_method_handler(behavior, deser, ser)
    behavior = _guard_unary_request(handler.unary_unary)
    return grpc.unary_unary_rpc_method_handler(behavior, deser, ser)


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """Answers undecodable requests with INVALID_ARGUMENT instead of grpc's UNKNOWN."""

    def __init__(self) -> None:
        # Servicers hand back the same handler object for a method on every call, so
        # each is wrapped once: id(handler) -> (handler, its guarded copy).
        self._guarded: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        entry = self._guarded.get(id(handler))
        if entry is not None and entry[0] is handler:
            return entry[1]
        guarded = guard(handler)
        if len(self._guarded) < _GUARDED_MAX:  # a handler built per call is not kept
            self._guarded[id(handler)] = (handler, guarded)
        return guarded


_GUARDED_MAX = 1000
