"""ByteStream servicer: blob reads and resumable uploads, over a `BlobStore`.

- Read: `{instance}/blobs/{hash}/{size}` with read_offset/read_limit, streamed in
  chunks of at most 1 MiB; an offset outside the blob is OUT_OF_RANGE.
- Write: `{instance}/uploads/{uuid}/blobs/{hash}/{size}{/metadata}`. Each request's
  write_offset must equal the bytes received so far (a skip or a rewind is
  INVALID_ARGUMENT naming both offsets). Data is staged by the store as it arrives
  and checked against the digest before commit. A stream that breaks leaves its
  data staged: QueryWriteStatus reports committed_size, and a new stream resumes
  there. A blob already present ends the stream at once with committed_size = size.
- Blobs over the configured maximum are INVALID_ARGUMENT before any data is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redbarn.digests import Digest, parse_read_resource, parse_write_resource
from redbarn.errors import InvalidArgument
from redbarn.frontend.errors import grpc_errors
from redbarn.frontend.storage import BlobStore, WriteSession
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc


def check_blob_size(digest: Digest, max_blob_size: int) -> None:
    if max_blob_size and digest.size_bytes > max_blob_size:
        raise InvalidArgument(
            f"Blob {digest} is {digest.size_bytes} bytes in size, while this server accepts "
            f"blobs of at most {max_blob_size} bytes"
        )


async def consume_writes(
    session: WriteSession, first: bs_pb2.WriteRequest, rest: AsyncIterator[bs_pb2.WriteRequest]
) -> int:
    """Feed a Write stream into `session`; return the committed size for the reply."""
    request: bs_pb2.WriteRequest | None = first
    try:
        while request is not None and not session.complete:
            if request.resource_name and request.resource_name != first.resource_name:
                raise InvalidArgument(
                    f'Resource name changed within a write stream from "{first.resource_name}" '
                    f'to "{request.resource_name}"'
                )
            await session.write(request.write_offset, request.data)
            if request.finish_write:
                return await session.finish()
            request = await anext(rest, None)
        if session.complete:
            return session.committed_size
        raise InvalidArgument(
            f'Write stream for "{first.resource_name}" ended at offset {session.committed_size} '
            "without finish_write"
        )
    finally:
        if not session.complete:
            with contextlib.suppress(Exception):  # the original error matters more
                await session.close()  # keep what arrived, for a resuming stream


class ByteStreamServicer(bs_grpc.ByteStreamServicer):
    def __init__(self, blobs: BlobStore, *, max_blob_size: int) -> None:
        self._blobs = blobs
        self._max_blob_size = max_blob_size

    @grpc_errors
    async def Read(
        self, request: bs_pb2.ReadRequest, context: Any
    ) -> AsyncIterator[bs_pb2.ReadResponse]:
        name = parse_read_resource(request.resource_name)
        async for piece in self._blobs.read(
            name.instance_name, name.digest, request.read_offset, request.read_limit
        ):
            yield bs_pb2.ReadResponse(data=piece)

    @grpc_errors
    async def Write(
        self, request_iterator: AsyncIterator[bs_pb2.WriteRequest], context: Any
    ) -> bs_pb2.WriteResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidArgument("Write stream carried no requests")
        name = parse_write_resource(first.resource_name)
        check_blob_size(name.digest, self._max_blob_size)
        session = await self._blobs.open_write(name.instance_name, name.digest, name.upload_id)
        committed = await consume_writes(session, first, aiter(request_iterator))
        return bs_pb2.WriteResponse(committed_size=committed)

    @grpc_errors
    async def QueryWriteStatus(
        self, request: bs_pb2.QueryWriteStatusRequest, context: Any
    ) -> bs_pb2.QueryWriteStatusResponse:
        name = parse_write_resource(request.resource_name)
        committed, complete = await self._blobs.write_status(
            name.instance_name, name.digest, name.upload_id
        )
        return bs_pb2.QueryWriteStatusResponse(committed_size=committed, complete=complete)
