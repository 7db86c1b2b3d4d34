"""Domain errors, one class per gRPC status code.

The scheduler core (`redbarn.queue`) and the storage layer raise these; they never
import grpc. Each class names its code once (`class NotFound(RedbarnError,
code="NOT_FOUND")`); `CLASSES` maps a code name back to its class, `to_status()` turns
an error into a `google.rpc.Status`, and the frontend aborts calls with the code
(`redbarn.frontend.errors`). Messages follow Buildbarn's wording where one exists, and
always name what was wrong: the digest, the field, the operation.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


class RedbarnError(Exception):
    """Base class. `code` is the gRPC status code name (e.g. "INVALID_ARGUMENT"),
    given once per subclass as a class keyword."""

    code = "UNKNOWN"

    def __init_subclass__(cls, code: str = "", **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> status_pb2.Status:
        """This error as a `google.rpc.Status`: its code and message."""
        return status_pb2.Status(code=code_pb2.Code.Value(self.code), message=self.message)


# The request is wrong: the same request fails again.
class InvalidArgument(RedbarnError, code="INVALID_ARGUMENT"): ...


class NotFound(RedbarnError, code="NOT_FOUND"): ...


class OutOfRange(RedbarnError, code="OUT_OF_RANGE"): ...


class Unimplemented(RedbarnError, code="UNIMPLEMENTED"): ...


class FailedPrecondition(RedbarnError, code="FAILED_PRECONDITION"):
    """`missing` lists blobs as "blobs/<hash>/<size>" subjects, which `to_status()`

    turns into a PreconditionFailure MISSING violation each (REAPI).
    """

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)

    def to_status(self) -> status_pb2.Status:
        status = super().to_status()
        if self.missing:
            violations = [
                error_details_pb2.PreconditionFailure.Violation(type="MISSING", subject=subject)
                for subject in self.missing
            ]
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.PreconditionFailure(violations=violations))
            status.details.append(detail)
        return status


# The service could not do it now.
class ResourceExhausted(RedbarnError, code="RESOURCE_EXHAUSTED"): ...


class DeadlineExceeded(RedbarnError, code="DEADLINE_EXCEEDED"): ...


class Internal(RedbarnError, code="INTERNAL"): ...


class Unavailable(RedbarnError, code="UNAVAILABLE"):
    """Redis or the upstream storage is unreachable, or this frontend is stopping: retry."""


class Aborted(RedbarnError, code="ABORTED"):
    """An upload was written by another stream, or expired: restart from QueryWriteStatus."""


# Never raised by redbarn, only passed on from the storage proxy's upstream.
class AlreadyExists(RedbarnError, code="ALREADY_EXISTS"): ...


class Canceled(RedbarnError, code="CANCELLED"): ...


class PermissionDenied(RedbarnError, code="PERMISSION_DENIED"): ...


class Unauthenticated(RedbarnError, code="UNAUTHENTICATED"): ...


# Code name -> class, for statuses received from another server.
CLASSES: dict[str, type[RedbarnError]] = {cls.code: cls for cls in RedbarnError.__subclasses__()}


def wrap(prefix: str, err: RedbarnError) -> RedbarnError:
    """Return an error of the same class whose message is `prefix: <message>`.

    Keeps `missing` for FailedPrecondition, as Buildbarn keeps the code when it wraps.
    """
    msg = f"{prefix}: {err.message}"
    if isinstance(err, FailedPrecondition):
        return FailedPrecondition(msg, err.missing)
    return type(err)(msg)
