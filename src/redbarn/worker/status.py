"""Turning failures into `google.rpc.Status`, for executors that never raise.

`attach_error` implements Buildbarn's `attachErrorToExecuteResponse`: the first error
wins, later ones are only logged by the caller.
"""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, status_pb2

from redbarn.errors import RedbarnError, wrap
from redbarn.proto import remote_execution_pb2 as re_pb2


def status_from_error(err: BaseException, prefix: str = "") -> status_pb2.Status:
    """A Status for `err`: RedbarnError keeps its code (and FailedPrecondition its
    PreconditionFailure details, as REAPI asks), a gRPC error keeps its code,
    anything else is INTERNAL."""
    lead = f"{prefix}: " if prefix else ""
    if isinstance(err, RedbarnError):
        return (wrap(prefix, err) if prefix else err).to_status()
    if isinstance(err, grpc.aio.AioRpcError):
        code = err.code().value[0]
        return status_pb2.Status(code=code, message=lead + (err.details() or err.code().name))
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"{lead}{type(err).__name__}: {err}")


def attach_error(response: re_pb2.ExecuteResponse, err: BaseException, prefix: str = "") -> bool:
    """Set `response.status` from `err` unless an error is already there. True if set."""
    if response.status.code != code_pb2.OK:
        return False
    response.status.CopyFrom(status_from_error(err, prefix))
    return True


def succeeded(response: re_pb2.ExecuteResponse) -> bool:
    """The action ran and exited 0: status OK and `exit_code` 0."""
    return response.status.code == code_pb2.OK and response.result.exit_code == 0
