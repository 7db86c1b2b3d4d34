"""Domain errors, one class per gRPC status code.

The scheduler core (`redbarn.queue`) and the storage layer raise these; they never
import grpc. The frontend maps them to gRPC statuses through one table
(`redbarn.frontend.errors`). Messages follow Buildbarn's wording where one exists,
and always name what was wrong: the digest, the field, the operation.
"""

from __future__ import annotations

from collections.abc import Sequence


class RedbarnError(Exception):
    """Base class. `code` is the gRPC status code name (e.g. "INVALID_ARGUMENT")."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(RedbarnError):
    code = "INVALID_ARGUMENT"


class NotFound(RedbarnError):
    code = "NOT_FOUND"


class AlreadyExists(RedbarnError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(RedbarnError):
    """FAILED_PRECONDITION. `missing` lists blobs as "blobs/<hash>/<size>" subjects,

    which the frontend turns into a PreconditionFailure MISSING violation each (REAPI).
    """

    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class ResourceExhausted(RedbarnError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(RedbarnError):
    code = "UNAVAILABLE"


class Internal(RedbarnError):
    code = "INTERNAL"


class Canceled(RedbarnError):
    code = "CANCELLED"


class DeadlineExceeded(RedbarnError):
    code = "DEADLINE_EXCEEDED"


class OutOfRange(RedbarnError):
    code = "OUT_OF_RANGE"


class PermissionDenied(RedbarnError):
    code = "PERMISSION_DENIED"


class Unauthenticated(RedbarnError):
    code = "UNAUTHENTICATED"


class Unimplemented(RedbarnError):
    code = "UNIMPLEMENTED"


class Aborted(RedbarnError):
    code = "ABORTED"


def wrap(prefix: str, err: RedbarnError) -> RedbarnError:
    """Return an error of the same class whose message is `prefix: <message>`.

    Keeps `missing` for FailedPrecondition, as Buildbarn keeps the code when it wraps.
    """
    msg = f"{prefix}: {err.message}"
    if isinstance(err, FailedPrecondition):
        return FailedPrecondition(msg, err.missing)
    return type(err)(msg)
