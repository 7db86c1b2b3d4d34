"""ContentAddressableStorage servicer: wire only, over a `BlobStore`.

Whole-request errors (bad instance name, malformed digest, unsupported
compressor, a batch over `max_batch_total_size_bytes`) are INVALID_ARGUMENT;
per-blob outcomes (hash mismatch, blob not found) go in each response's status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from redbarn.digests import Digest, parse_digests, parse_field, validate_instance_name
from redbarn.errors import InvalidArgument, NotFound, Unimplemented
from redbarn.frontend.errors import grpc_errors, status_of
from redbarn.frontend.storage import BlobStore
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

IDENTITY = re_pb2.Compressor.IDENTITY


def check_batch_size(digests: Iterable[Digest], limit: int) -> None:
    total = sum(d.size_bytes for d in digests)
    if total > limit:
        raise InvalidArgument(
            f"Batch of {total} bytes exceeds the limit of {limit} bytes (max_batch_total_size_bytes); "
            "use ByteStream for large blobs"
        )


def _instance_and_digests(
    request: re_pb2.FindMissingBlobsRequest
    | re_pb2.BatchUpdateBlobsRequest
    | re_pb2.BatchReadBlobsRequest,
    digests: Iterable[re_pb2.Digest],
) -> tuple[str, list[Digest]]:
    """The instance name of a batch request and its `digests`, validated."""
    instance = validate_instance_name(request.instance_name)
    return instance, parse_digests(digests, request.digest_function)


def _read_response(digest: Digest, data: bytes | None) -> re_pb2.BatchReadBlobsResponse.Response:
    Response = re_pb2.BatchReadBlobsResponse.Response
    if data is None:
        return Response(
            digest=digest.to_proto(), status=status_of(NotFound(f"Blob {digest} not found"))
        )
    return Response(digest=digest.to_proto(), data=data, status=status_of(None))


class ContentAddressableStorageServicer(re_grpc.ContentAddressableStorageServicer):
    def __init__(self, blobs: BlobStore, *, max_batch_total_size: int) -> None:
        self._blobs = blobs
        self._max_batch = max_batch_total_size

    @grpc_errors
    async def SplitBlob(self, request: Any, context: Any) -> Any:
        raise Unimplemented("SplitBlob is not supported: this server advertises no chunking")

    @grpc_errors
    async def SpliceBlob(self, request: Any, context: Any) -> Any:
        raise Unimplemented("SpliceBlob is not supported: this server advertises no chunking")

    @grpc_errors
    async def FindMissingBlobs(
        self, request: re_pb2.FindMissingBlobsRequest, context: Any
    ) -> re_pb2.FindMissingBlobsResponse:
        instance, digests = _instance_and_digests(request, request.blob_digests)
        missing = await self._blobs.find_missing(instance, digests)
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=[d.to_proto() for d in missing])

    @grpc_errors
    async def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: Any
    ) -> re_pb2.BatchUpdateBlobsResponse:
        instance, digests = _instance_and_digests(request, [r.digest for r in request.requests])
        if any(r.compressor != IDENTITY for r in request.requests):
            raise InvalidArgument(
                "Unsupported compressor: this server accepts uncompressed (identity) blobs only"
            )
        check_batch_size(digests, self._max_batch)
        results = await self._blobs.put_many(
            instance, [(d, r.data) for d, r in zip(digests, request.requests, strict=True)]
        )
        Response = re_pb2.BatchUpdateBlobsResponse.Response
        return re_pb2.BatchUpdateBlobsResponse(
            responses=[
                Response(digest=d.to_proto(), status=status_of(err))
                for d, err in zip(digests, results, strict=True)
            ]
        )

    @grpc_errors
    async def BatchReadBlobs(
        self, request: re_pb2.BatchReadBlobsRequest, context: Any
    ) -> re_pb2.BatchReadBlobsResponse:
        instance, digests = _instance_and_digests(request, request.digests)
        check_batch_size(digests, self._max_batch)
        datas = await self._blobs.get_many(instance, digests)
        return re_pb2.BatchReadBlobsResponse(
            responses=[_read_response(d, data) for d, data in zip(digests, datas, strict=True)]
        )

    @grpc_errors
    async def GetTree(
        self, request: re_pb2.GetTreeRequest, context: Any
    ) -> AsyncIterator[re_pb2.GetTreeResponse]:
        instance = validate_instance_name(request.instance_name)
        root = parse_field(request, "root_digest", request.digest_function)
        async for page, token in self._blobs.get_tree(
            instance, root, request.page_size, request.page_token
        ):
            yield re_pb2.GetTreeResponse(directories=page, next_page_token=token)
