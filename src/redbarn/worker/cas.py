"""The worker's client for the CAS, ActionCache and ByteStream (REAPI storage).

Reads and writes pick the cheapest RPC per blob: BatchReadBlobs/BatchUpdateBlobs
for blobs up to `batch_blob_limit`, grouped so one request stays under
`batch_request_limit`; ByteStream Read/Write for the rest. Uploads ask
FindMissingBlobs first and send only what the CAS lacks; blobs kept in files are
read only when their request is about to be sent, and at most `UPLOAD_SLOTS`
requests are being filled at once, so an upload holds a few batches in memory
whatever the number and size of the outputs. Transient RPC failures
(UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, and the CANCELLED/INTERNAL a load
balancer reports for a dropped upstream) are retried with jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from redbarn import digests
from redbarn.errors import FailedPrecondition, Internal
from redbarn.proto import bytestream_pb2, bytestream_pb2_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

T = TypeVar("T")
M = TypeVar("M", bound=Message)
log = logging.getLogger(__name__)

# CANCELLED and INTERNAL are included because that is how a load balancer reports a
# call its upstream frontend dropped while stopping (nginx: "RST_STREAM"); a
# cancellation of our own raises asyncio.CancelledError instead, which is never retried.
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
}
CHUNK = 1 << 20
UPLOAD_SLOTS = 4


@dataclass(frozen=True)
class Scope:
    """Where a blob lives: the full instance name and the digest function."""

    instance_name: str
    digest_function: int

    def request(self, message: Callable[..., M], **fields: object) -> M:
        """A request `message` in this scope: `fields` plus instance name and digest function."""
        return message(
            instance_name=self.instance_name, digest_function=self.digest_function, **fields
        )

    def resource(self, digest: re_pb2.Digest, *, upload: bool = False) -> str:
        if upload:
            upload_id = str(uuid.uuid4())
            return digests.write_resource_name(
                self.instance_name, upload_id, digest, self.digest_function
            )
        return digests.read_resource_name(self.instance_name, digest, self.digest_function)


@dataclass
class Blob:
    """An output to upload: in memory (`data`) or in a file (`path`)."""

    digest: re_pb2.Digest
    data: bytes | None = None
    path: str | None = None


def _missing(scope: Scope, digest: re_pb2.Digest) -> FailedPrecondition:
    return FailedPrecondition(
        f"Blob {digests.key(digest)} not found",
        missing=[digests.blob_path(digest, scope.digest_function)],
    )


def _is_transient(err: BaseException) -> bool:
    return isinstance(err, grpc.aio.AioRpcError) and err.code() in _TRANSIENT


class CasClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        batch_blob_limit: int = 1 << 20,
        batch_request_limit: int = 3 << 20,
        concurrency: int = 16,
        retry_for: float = 30.0,
        rpc_timeout: float = 300.0,
    ) -> None:
        self._capabilities = re_grpc.CapabilitiesStub(channel)  # type: ignore[no-untyped-call]
        self._cas = re_grpc.ContentAddressableStorageStub(channel)  # type: ignore[no-untyped-call]
        self._ac = re_grpc.ActionCacheStub(channel)  # type: ignore[no-untyped-call]
        self._bs = bytestream_pb2_grpc.ByteStreamStub(channel)  # type: ignore[no-untyped-call]
        self.batch_blob_limit = batch_blob_limit
        self.batch_request_limit = batch_request_limit
        self._sem = asyncio.Semaphore(concurrency)
        self._upload_slots = asyncio.Semaphore(UPLOAD_SLOTS)
        self._retry_for = retry_for
        self._timeout = rpc_timeout

    async def fit_to_server(self, instance_name: str, timeout: float = 5.0) -> None:
        """Shrink the batch limits to the server's `max_batch_total_size_bytes`, if it
        advertises one. Best effort: the defaults stay when Capabilities fails."""
        try:
            caps = await self._capabilities.GetCapabilities(
                re_pb2.GetCapabilitiesRequest(instance_name=instance_name), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            log.info("GetCapabilities failed (%s); keeping default batch sizes", err.code().name)
            return
        limit = caps.cache_capabilities.max_batch_total_size_bytes
        if limit > 0:
            # Leave room for the request's framing and per-blob digests.
            self.batch_request_limit = min(self.batch_request_limit, limit * 3 // 4)
            self.batch_blob_limit = min(self.batch_blob_limit, self.batch_request_limit)

    async def _retry(self, fn: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            # By time, not count: a frontend or Redis restart takes seconds, and the
            # running action should resume, not fail and be run again.
            stop=stop_after_delay(self._retry_for),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        ):
            with attempt:
                async with self._sem:
                    return await fn()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: Message) -> T:
        """One unary call with the per-call timeout, retried as `_retry` says."""
        return await self._retry(lambda: rpc(request, timeout=self._timeout))

    # -- reads ---------------------------------------------------------------

    def _batches(self, items: Sequence[re_pb2.Digest]) -> Iterable[list[re_pb2.Digest]]:
        batch: list[re_pb2.Digest] = []
        total = 0
        for d in items:
            if batch and total + d.size_bytes > self.batch_request_limit:
                yield batch
                batch, total = [], 0
            batch.append(d)
            total += d.size_bytes + 100
        if batch:
            yield batch

    async def read_small(self, scope: Scope, items: Sequence[re_pb2.Digest]) -> dict[str, bytes]:
        """BatchReadBlobs for `items` (all at most `batch_blob_limit`), verified.

        Raises FailedPrecondition naming the first missing blob."""
        out: dict[str, bytes] = {}

        async def one(batch: list[re_pb2.Digest]) -> None:
            req = scope.request(re_pb2.BatchReadBlobsRequest, digests=batch)
            resp = await self._call(self._cas.BatchReadBlobs, req)
            for r in resp.responses:
                if r.status.code == code_pb2.NOT_FOUND:
                    raise _missing(scope, r.digest)
                if r.status.code != code_pb2.OK:
                    raise Internal(
                        f"Failed to read blob {digests.key(r.digest)}: {r.status.message}"
                    )
                self._verify(scope, r.digest, r.data)
                out[digests.key(r.digest)] = r.data
            for d in batch:
                if digests.key(d) not in out:
                    raise _missing(scope, d)

        unique = {digests.key(d): d for d in items if d.size_bytes > 0}
        for d in items:
            if d.size_bytes == 0:
                self._verify(scope, d, b"")
                out[digests.key(d)] = b""
        await asyncio.gather(*(one(b) for b in self._batches(list(unique.values()))))
        return out

    def _verify(self, scope: Scope, digest: re_pb2.Digest, data: bytes) -> None:
        got = digests.of_bytes(data, scope.digest_function)
        if got.hash != digest.hash or got.size_bytes != digest.size_bytes:
            raise Internal(
                f"Blob {digests.key(digest)} has contents with digest {digests.key(got)}"
            )

    async def _stream(self, scope: Scope, digest: re_pb2.Digest) -> AsyncIterator[bytes]:
        call = self._bs.Read(
            bytestream_pb2.ReadRequest(resource_name=scope.resource(digest)),
            timeout=self._timeout,
        )
        try:
            async for r in call:
                yield r.data
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise _missing(scope, digest) from err
            raise

    async def read_to_file(self, scope: Scope, digest: re_pb2.Digest, path: str) -> None:
        """ByteStream Read of `digest` into `path` (created), verified while writing."""

        async def attempt() -> None:
            h = digests.hasher(scope.digest_function)()
            size = 0
            with open(path, "wb") as f:  # noqa: ASYNC230 - local disk, written chunk by chunk
                async for chunk in self._stream(scope, digest):
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            if h.hexdigest() != digest.hash or size != digest.size_bytes:
                raise Internal(
                    f"Blob {digests.key(digest)} has contents with digest {h.hexdigest()}-{size}"
                )

        await self._retry(attempt)

    async def read_blob(self, scope: Scope, digest: re_pb2.Digest) -> bytes:
        """One blob into memory, by batch or by stream depending on its size."""
        if digest.size_bytes <= self.batch_blob_limit:
            return (await self.read_small(scope, [digest]))[digests.key(digest)]

        async def attempt() -> bytes:
            parts = [c async for c in self._stream(scope, digest)]
            data = b"".join(parts)
            self._verify(scope, digest, data)
            return data

        return await self._retry(attempt)

    # -- writes --------------------------------------------------------------

    async def find_missing(
        self, scope: Scope, items: Iterable[re_pb2.Digest]
    ) -> list[re_pb2.Digest]:
        unique = list({digests.key(d): d for d in items}.values())
        missing: list[re_pb2.Digest] = []
        for i in range(0, len(unique), 10000):
            req = scope.request(re_pb2.FindMissingBlobsRequest, blob_digests=unique[i : i + 10000])
            resp = await self._call(self._cas.FindMissingBlobs, req)
            missing.extend(resp.missing_blob_digests)
        return missing

    async def upload(self, scope: Scope, blobs: Iterable[Blob]) -> None:
        """Upload whichever of `blobs` the CAS is missing."""
        by_key = {digests.key(b.digest): b for b in blobs}
        if not by_key:
            return
        missing = await self.find_missing(scope, (b.digest for b in by_key.values()))
        small: list[Blob] = []
        jobs: list[Awaitable[None]] = []
        for d in missing:
            blob = by_key[digests.key(d)]
            if blob.digest.size_bytes <= self.batch_blob_limit:
                small.append(blob)
            else:
                jobs.append(self._write_stream(scope, blob))
        batch: list[Blob] = []
        total = 0
        for blob in small:
            if batch and total + blob.digest.size_bytes > self.batch_request_limit:
                jobs.append(self._write_batch(scope, batch))
                batch, total = [], 0
            batch.append(blob)
            total += blob.digest.size_bytes + 100
        if batch:
            jobs.append(self._write_batch(scope, batch))
        await asyncio.gather(*jobs)

    async def _write_batch(self, scope: Scope, blobs: list[Blob]) -> None:
        def read() -> list[re_pb2.BatchUpdateBlobsRequest.Request]:
            requests = []
            for b in blobs:
                data = b.data
                if data is None:
                    assert b.path is not None
                    with open(b.path, "rb") as f:  # at most batch_blob_limit
                        data = f.read()
                requests.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=b.digest, data=data))
            return requests

        async with self._upload_slots:
            requests = await asyncio.to_thread(read)
            req = scope.request(re_pb2.BatchUpdateBlobsRequest, requests=requests)
            resp = await self._call(self._cas.BatchUpdateBlobs, req)
            del requests, req
        for r in resp.responses:
            if r.status.code != code_pb2.OK:
                raise Internal(f"Failed to store blob {digests.key(r.digest)}: {r.status.message}")

    async def _write_stream(self, scope: Scope, blob: Blob) -> None:
        async def requests() -> AsyncIterator[bytestream_pb2.WriteRequest]:
            name = scope.resource(blob.digest, upload=True)
            offset = 0
            if blob.data is not None:
                view = memoryview(blob.data)
                while True:
                    chunk = bytes(view[offset : offset + CHUNK])
                    last = offset + len(chunk) >= len(blob.data)
                    yield bytestream_pb2.WriteRequest(
                        resource_name=name if offset == 0 else "",
                        write_offset=offset,
                        finish_write=last,
                        data=chunk,
                    )
                    offset += len(chunk)
                    if last:
                        return
            assert blob.path is not None
            with open(blob.path, "rb") as f:  # noqa: ASYNC230 - local disk, 1 MiB at a time
                chunk = f.read(CHUNK)
                while True:
                    following = f.read(CHUNK) if chunk else b""
                    yield bytestream_pb2.WriteRequest(
                        resource_name=name if offset == 0 else "",
                        write_offset=offset,
                        finish_write=not following,
                        data=chunk,
                    )
                    offset += len(chunk)
                    if not following:
                        return
                    chunk = following

        async def attempt() -> None:
            resp = await self._bs.Write(requests(), timeout=self._timeout)
            if resp.committed_size not in (blob.digest.size_bytes, -1):
                raise Internal(
                    f"Failed to store blob {digests.key(blob.digest)}: "
                    f"committed {resp.committed_size} bytes"
                )

        async with self._upload_slots:
            await self._retry(attempt)

    async def update_action_result(
        self, scope: Scope, action_digest: re_pb2.Digest, result: re_pb2.ActionResult
    ) -> None:
        req = scope.request(
            re_pb2.UpdateActionResultRequest, action_digest=action_digest, action_result=result
        )
        await self._call(self._ac.UpdateActionResult, req)
