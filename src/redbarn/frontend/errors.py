"""Domain errors -> gRPC statuses, in one decorator.

`@grpc_errors` wraps every servicer method (unary, server-streaming, and
stream-request such as ByteStream.Write):

- a `redbarn.errors.RedbarnError` aborts with its class's code and its
  message; `FailedPrecondition.missing` also becomes a `google.rpc.PreconditionFailure`
  with one MISSING violation per blob, sent as rich status
  (`grpc-status-details-bin` trailing metadata, a serialized `google.rpc.Status`);
- a Redis connection or timeout error aborts with UNAVAILABLE, its message without the
  server's address;
- a command Redis refused for its own state (out of memory, a read-only replica,
  loading, busy, cannot persist: `redbarn.runtime.redis_refusals`) aborts with
  RESOURCE_EXHAUSTED or UNAVAILABLE and a fixed message; Redis's own text, which names
  the script's SHA1 and line, stays in the frontend's log;
- anything else is logged with the method and request type and aborts with INTERNAL.

`status_of(err)` builds the `google.rpc.Status` used for per-blob results
(BatchUpdateBlobs, BatchReadBlobs).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
import redis.exceptions
from google.rpc import status_pb2

from redbarn import errors
from redbarn.runtime import redis_refusals

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Errors that mean "the backing Redis is not reachable right now": retry elsewhere/later.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    ConnectionError,
)


REFUSAL_LOG_INTERVAL = 30.0  # seconds between two log lines for the same Redis refusal
_refusals_logged: dict[str, float] = {}


# Where Redis is, in a client library's message: " to 10.0.0.5:6379", " at [::1]:6379",
# " from redis:6379", " at /run/redis.sock", "unix socket: /run/redis.sock", and
# asyncio's " ('10.0.0.5', 6379)".
_ADDRESS = re.compile(
    r" (?:to|at|from) (?:\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*|[\w.-]+):\d{1,5}\b"
    r"| \('[^']*', \d{1,5}(?:, \d+)*\)"
    r"| (?:to|at|from) /[^\s:]+"
    r"|(?<=unix socket): \S+?(?=\.?(?:\s|$))"
)


def without_address(message: str) -> str:
    """`message` without the host, port or socket path of the server it names: clients
    need not learn the cluster's internal addresses (the frontend's log keeps them)."""
    return _ADDRESS.sub("", message)


def redis_refusal(exc: BaseException) -> errors.RedbarnError | None:
    """The client's error for a command Redis refused because of its own state (out of
    memory, a read-only replica, loading: `redbarn.runtime.redis_refusals`), else None.
    Redis's own text, with the script's SHA1 and line, is logged instead, at most once
    per `REFUSAL_LOG_INTERVAL` per code."""
    err = redis_refusals.refusal(exc)
    if err is None:
        return None
    code = redis_refusals.redis_error_code(exc)
    now = time.monotonic()
    if now - _refusals_logged.get(code, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
        _refusals_logged[code] = now
        log.warning("Redis refused a command (%s): %s", code, " ".join(str(exc).split()))
    return err


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_for(code: grpc.StatusCode | int | None, message: str) -> errors.RedbarnError:
    """The domain error for a status received from another server (the storage proxy)."""
    status_code = (
        _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN) if isinstance(code, int) else code
    )
    if status_code is None:
        return errors.Unavailable(message)
    cls = errors.CLASSES.get(status_code.name, errors.Internal)
    return cls(message or str(status_code.name))


def from_rpc_error(err: grpc.aio.AioRpcError) -> errors.RedbarnError:
    return error_for(err.code(), err.details() or "")


def status_code_of(err: errors.RedbarnError) -> grpc.StatusCode:
    return grpc.StatusCode[err.code]


def status_of(err: errors.RedbarnError | None) -> status_pb2.Status:
    """The `google.rpc.Status` for `err` (OK for None), with PreconditionFailure details."""
    if err is None:
        return status_pb2.Status(code=grpc.StatusCode.OK.value[0])
    return err.to_status()


def translate(exc: BaseException, where: str) -> errors.RedbarnError:
    """Map any exception raised inside a servicer to a domain error (logging surprises)."""
    if isinstance(exc, errors.RedbarnError):
        return exc
    refusal = redis_refusal(exc)
    if refusal is not None:
        return refusal
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return errors.Unavailable(f"Storage unavailable: {without_address(str(exc))}")
    log.exception("internal error in %s", where)
    return errors.Internal(f"Internal error in {where}: {type(exc).__name__}: {exc}")


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: errors.RedbarnError) -> None:
    status = status_of(err)
    metadata: tuple[tuple[str, bytes], ...] = ()
    if status.details:
        metadata = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    await context.abort(status_code_of(err), err.message, trailing_metadata=metadata)


def _where(method: Callable[..., Any], request: object) -> str:
    kind = type(request).__name__
    if inspect.isasyncgen(request) or hasattr(request, "__aiter__"):
        kind = "request stream"
    return f"{method.__qualname__}({kind})"


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Decorate a servicer method so domain errors become gRPC statuses (module docstring)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: object, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, translate(exc, _where(method, request)))

        return cast(F, stream_wrapper)

    @functools.wraps(method)
    async def unary_wrapper(self: object, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, translate(exc, _where(method, request)))

    return cast(F, unary_wrapper)
