"""ByteStream servicer: blob reads and resumable uploads, over a `BlobStore`.

- Read: `{instance}/blobs/{hash}/{size}` with read_offset/read_limit, streamed in
  chunks of at most 1 MiB; an offset outside the blob is OUT_OF_RANGE.
- Write: `{instance}/uploads/{uuid}/blobs/{hash}/{size}{/metadata}`. Each request's
  write_offset must equal the bytes received so far (a skip or a rewind is
  INVALID_ARGUMENT naming both offsets). Data is staged by the store as it arrives
  and checked against the digest before commit. A stream that breaks leaves its
  data staged: QueryWriteStatus reports committed_size, and a new stream resumes
  there. A blob already present ends the stream at once with committed_size = size.
- zstd (`compressed-blobs/zstd/...`, REAPI's rules for compressed resources):
  a Read streams one zstd frame of the blob from the *uncompressed* read_offset;
  a non-zero read_limit is INVALID_ARGUMENT. A Write's first write_offset is an
  uncompressed offset, at most the bytes already staged for the upload (staged bytes
  the new stream repeats are skipped, not rewritten); each later one is that offset
  plus the compressed bytes received. The data is decompressed as it arrives
  (`compression`), never past the digest's size, into the same staged upload; the
  reply's committed_size is the first offset plus the compressed bytes, or -1 when
  the blob was already present. QueryWriteStatus of an unfinished compressed upload
  answers committed_size 0, so every client restarts its stream from the start:
  Bazel's chunker has resumed compressed uploads in different ways across releases
  (one sent uncompressed offsets for every request), and a restart is the one form
  they all send alike. The staged bytes are not lost: the restarted stream skips them.
- Every digest over the configured maximum blob size is INVALID_ARGUMENT before the
  store is asked anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redbarn.digests import Digest, ResourceName, parse_read_resource, parse_write_resource
from redbarn.errors import InvalidArgument
from redbarn.frontend.compression import ZstdDecoder, ZstdReader
from redbarn.frontend.errors import grpc_errors
from redbarn.frontend.storage import BlobStore, WriteSession
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2

ZSTD = re_pb2.Compressor.ZSTD
# committed_size of a compressed upload whose blob was already present (REAPI).
ALREADY_PRESENT = -1


def check_blob_size(digest: Digest, max_blob_size: int) -> None:
    if max_blob_size and digest.size_bytes > max_blob_size:
        raise InvalidArgument(
            f"Blob {digest} is {digest.size_bytes} bytes in size, while this server accepts "
            f"blobs of at most {max_blob_size} bytes"
        )


def _check_same_name(first: bs_pb2.WriteRequest, request: bs_pb2.WriteRequest) -> None:
    if request.resource_name and request.resource_name != first.resource_name:
        raise InvalidArgument(
            f'Resource name changed within a write stream from "{first.resource_name}" '
            f'to "{request.resource_name}"'
        )


async def consume_writes(
    session: WriteSession, first: bs_pb2.WriteRequest, rest: AsyncIterator[bs_pb2.WriteRequest]
) -> int:
    """Feed a Write stream into `session`; return the committed size for the reply."""
    request: bs_pb2.WriteRequest | None = first
    try:
        while request is not None and not session.complete:
            _check_same_name(first, request)
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


async def consume_compressed_writes(
    session: WriteSession,
    name: ResourceName,
    first: bs_pb2.WriteRequest,
    rest: AsyncIterator[bs_pb2.WriteRequest],
) -> int:
    """Feed a zstd Write stream, decompressed, into `session`; return the committed size
    for the reply (REAPI: the first offset plus the compressed bytes, -1 if present)."""
    if session.complete:
        return ALREADY_PRESENT
    digest, start, staged = name.digest, first.write_offset, session.committed_size
    if not 0 <= start <= staged:
        raise InvalidArgument(
            f"Invalid write offset {start} for compressed upload {name.upload_id} of blob "
            f"{digest}: {staged} uncompressed bytes are staged, so it must be at most {staged}"
        )
    decoder = ZstdDecoder(digest, digest.size_bytes - start)
    skip, position, received = staged - start, staged, 0
    request: bs_pb2.WriteRequest | None = first
    try:
        while request is not None:
            _check_same_name(first, request)
            if request.write_offset != start + received:
                raise InvalidArgument(
                    f"Invalid write offset {request.write_offset} for compressed upload "
                    f"{name.upload_id} of blob {digest}: expected offset {start + received} "
                    f"(the first offset {start} plus the {received} compressed bytes received)"
                )
            received += len(request.data)
            for piece in decoder.feed(request.data):
                if skip:  # bytes a previous stream already staged
                    dropped = min(skip, len(piece))
                    piece, skip = piece[dropped:], skip - dropped
                if piece:
                    await session.write(position, piece)
                    position += len(piece)
            if request.finish_write:
                decoder.finish()
                await session.finish()
                return start + received
            request = await anext(rest, None)
        raise InvalidArgument(
            f'Write stream for "{first.resource_name}" ended after {received} compressed bytes '
            "without finish_write"
        )
    finally:
        if not session.complete:
            with contextlib.suppress(Exception):  # the original error matters more
                await session.close()  # keep what arrived, for a resuming stream


async def compressed_read(
    blobs: BlobStore, name: ResourceName, offset: int, limit: int
) -> AsyncIterator[bytes]:
    """One zstd frame of the blob from the uncompressed `offset` on."""
    if limit != 0:
        raise InvalidArgument(
            f"Invalid read limit {limit} for compressed blob {name.digest}: compressed "
            "reads must have read_limit 0"
        )
    frame = ZstdReader(max(0, name.digest.size_bytes - offset))
    # The store raises NOT_FOUND or OUT_OF_RANGE before its first piece.
    async for piece in blobs.read(name.instance_name, name.digest, offset, 0):
        if out := frame.compress(piece):
            yield out
    yield frame.flush()


class ByteStreamServicer(bs_grpc.ByteStreamServicer):
    def __init__(self, blobs: BlobStore, *, max_blob_size: int) -> None:
        self._blobs = blobs
        self._max_blob_size = max_blob_size

    @grpc_errors
    async def Read(
        self, request: bs_pb2.ReadRequest, context: Any
    ) -> AsyncIterator[bs_pb2.ReadResponse]:
        name = parse_read_resource(request.resource_name)
        check_blob_size(name.digest, self._max_blob_size)
        offset, limit = request.read_offset, request.read_limit
        if name.compressor == ZSTD:
            pieces = compressed_read(self._blobs, name, offset, limit)
        else:
            pieces = self._blobs.read(name.instance_name, name.digest, offset, limit)
        async for piece in pieces:
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
        rest = aiter(request_iterator)
        if name.compressor == ZSTD:
            committed = await consume_compressed_writes(session, name, first, rest)
        else:
            committed = await consume_writes(session, first, rest)
        return bs_pb2.WriteResponse(committed_size=committed)

    @grpc_errors
    async def QueryWriteStatus(
        self, request: bs_pb2.QueryWriteStatusRequest, context: Any
    ) -> bs_pb2.QueryWriteStatusResponse:
        name = parse_write_resource(request.resource_name)
        check_blob_size(name.digest, self._max_blob_size)
        committed, complete = await self._blobs.write_status(
            name.instance_name, name.digest, name.upload_id
        )
        if name.compressor == ZSTD and not complete:
            committed = 0  # restart compressed streams from the start (module docstring)
        return bs_pb2.QueryWriteStatusResponse(committed_size=committed, complete=complete)
