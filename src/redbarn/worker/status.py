"""Turning failures into `google.rpc.Status`, for executors that never raise.

`attach_error` implements Buildbarn's `attachErrorToExecuteResponse`: the first error
wins, later ones are only logged by the caller.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from redbarn.errors import FailedPrecondition, RedbarnError
from redbarn.proto import remote_execution_pb2 as re_pb2


def status_from_error(err: BaseException, prefix: str = "") -> status_pb2.Status:
    """A Status for `err`: RedbarnError keeps its code, a gRPC error keeps its code,
    anything else is INTERNAL. FailedPrecondition carries PreconditionFailure details
    listing the missing blobs, as REAPI asks."""
    lead = f"{prefix}: " if prefix else ""
    if isinstance(err, RedbarnError):
        status = status_pb2.Status(code=code_pb2.Code.Value(err.code), message=lead + err.message)
        if isinstance(err, FailedPrecondition) and err.missing:
            failure = error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(type="MISSING", subject=s)
                    for s in err.missing
                ]
            )
            detail = any_pb2.Any()
            detail.Pack(failure)
            status.details.append(detail)
        return status
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


def code_name(response: re_pb2.ExecuteResponse) -> str:
    return str(code_pb2.Code.Name(response.status.code))
