"""ContentAddressableStorage servicer: wire only, over a `BlobStore`.

Whole-request errors are INVALID_ARGUMENT, found before the store is asked anything:
a bad instance name, a malformed digest, more than `max_batch_digests` digests, a
digest over `max_blob_size` (named), an unsupported compressor, a batch whose
declared sizes add up to more than `max_batch_total_size_bytes`. Per-blob outcomes
(hash mismatch, bad zstd data, blob not found) go in each response's status.

zstd: BatchUpdateBlobs takes entries with `compressor: ZSTD` (decompressed into at
most the digest's size, then checked like any other blob); BatchReadBlobs answers
zstd, with `compressor` set, when the request lists ZSTD among its
`acceptable_compressors`. The batch limit holds for the uncompressed sizes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sized
from typing import Any

from redbarn.digests import Digest, parse_digests, parse_field, validate_instance_name
from redbarn.errors import InvalidArgument, NotFound, RedbarnError, Unimplemented
from redbarn.frontend.bytestream import check_blob_size
from redbarn.frontend.compression import compress_blob, decompress_blob
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.errors import grpc_errors, status_of
from redbarn.frontend.storage import BlobStore
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

IDENTITY = re_pb2.Compressor.IDENTITY
ZSTD = re_pb2.Compressor.ZSTD
BATCH_COMPRESSORS = (IDENTITY, ZSTD)


def compressor_name(value: int) -> str:
    """The enum name (`DEFLATE`), or the number for a value the enum does not know."""
    try:
        return str(re_pb2.Compressor.Value.Name(value))
    except ValueError:
        return str(value)


def check_batch_size(digests: Iterable[Digest], limit: int) -> None:
    total = sum(d.size_bytes for d in digests)
    if total > limit:
        raise InvalidArgument(
            f"Batch of {total} bytes exceeds the limit of {limit} bytes (max_batch_total_size_bytes); "
            "use ByteStream for large blobs"
        )


def check_digest_count(method: str, digests: Sized, limit: int) -> None:
    if len(digests) > limit:
        raise InvalidArgument(
            f"{method} request carries {len(digests)} digests, while this server accepts at "
            f"most {limit} per request (max_batch_digests)"
        )


def check_compressors(
    digests: Iterable[Digest], entries: Iterable[re_pb2.BatchUpdateBlobsRequest.Request]
) -> None:
    for digest, entry in zip(digests, entries, strict=True):
        if entry.compressor not in BATCH_COMPRESSORS:
            raise InvalidArgument(
                f"Unsupported compressor {compressor_name(entry.compressor)} for blob "
                f"{digest}: this server supports IDENTITY and ZSTD only"
            )


def _decompressed(
    digest: Digest, request: re_pb2.BatchUpdateBlobsRequest.Request
) -> bytes | RedbarnError:
    """The entry's uncompressed data, or the error that goes in its status."""
    if request.compressor == IDENTITY:
        return request.data
    try:
        return decompress_blob(digest, request.data)
    except InvalidArgument as err:
        return err


def _read_response(
    digest: Digest, data: bytes | None, zstd: bool
) -> re_pb2.BatchReadBlobsResponse.Response:
    Response = re_pb2.BatchReadBlobsResponse.Response
    if data is None:
        return Response(
            digest=digest.to_proto(), status=status_of(NotFound(f"Blob {digest} not found"))
        )
    if zstd:
        return Response(
            digest=digest.to_proto(), data=compress_blob(data), compressor=ZSTD,
            status=status_of(None),
        )  # fmt: skip
    return Response(digest=digest.to_proto(), data=data, status=status_of(None))


class ContentAddressableStorageServicer(re_grpc.ContentAddressableStorageServicer):
    def __init__(
        self,
        blobs: BlobStore,
        *,
        max_batch_total_size: int,
        max_blob_size: int = FrontendConfig.max_blob_size,
        max_batch_digests: int = FrontendConfig.max_batch_digests,
    ) -> None:
        self._blobs = blobs
        self._max_batch = max_batch_total_size
        self._max_blob_size = max_blob_size
        self._max_digests = max_batch_digests

    def _digests(
        self,
        method: str,
        request: re_pb2.FindMissingBlobsRequest
        | re_pb2.BatchUpdateBlobsRequest
        | re_pb2.BatchReadBlobsRequest,
        digests: Any,
    ) -> tuple[str, list[Digest]]:
        """The instance name of a batch request and its `digests`, validated and bounded:
        constant work per digest, before the store sees any of them."""
        instance = validate_instance_name(request.instance_name)
        check_digest_count(method, digests, self._max_digests)
        parsed = parse_digests(digests, request.digest_function)
        for digest in parsed:
            check_blob_size(digest, self._max_blob_size)
        return instance, parsed

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
        instance, digests = self._digests("FindMissingBlobs", request, request.blob_digests)
        missing = await self._blobs.find_missing(instance, digests)
        return re_pb2.FindMissingBlobsResponse(missing_blob_digests=[d.to_proto() for d in missing])

    @grpc_errors
    async def BatchUpdateBlobs(
        self, request: re_pb2.BatchUpdateBlobsRequest, context: Any
    ) -> re_pb2.BatchUpdateBlobsResponse:
        entries = request.requests
        instance, digests = self._digests("BatchUpdateBlobs", request, [r.digest for r in entries])
        check_compressors(digests, entries)
        check_batch_size(digests, self._max_batch)
        datas = [_decompressed(d, entry) for d, entry in zip(digests, entries, strict=True)]
        valid = [(d, b) for d, b in zip(digests, datas, strict=True) if isinstance(b, bytes)]
        stored = iter(await self._blobs.put_many(instance, valid))
        results = [next(stored) if isinstance(b, bytes) else b for b in datas]
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
        instance, digests = self._digests("BatchReadBlobs", request, request.digests)
        check_batch_size(digests, self._max_batch)
        zstd = ZSTD in request.acceptable_compressors
        datas = await self._blobs.get_many(instance, digests)
        return re_pb2.BatchReadBlobsResponse(
            responses=[
                _read_response(d, data, zstd) for d, data in zip(digests, datas, strict=True)
            ]
        )

    @grpc_errors
    async def GetTree(
        self, request: re_pb2.GetTreeRequest, context: Any
    ) -> AsyncIterator[re_pb2.GetTreeResponse]:
        instance = validate_instance_name(request.instance_name)
        root = parse_field(request, "root_digest", request.digest_function)
        check_blob_size(root, self._max_blob_size)
        async for page, token in self._blobs.get_tree(
            instance, root, request.page_size, request.page_token
        ):
            yield re_pb2.GetTreeResponse(directories=page, next_page_token=token)
