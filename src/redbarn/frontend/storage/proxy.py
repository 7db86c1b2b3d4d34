"""`--storage grpc://host:port`: CAS, ByteStream and Action Cache of another REAPI server.

`GrpcBlobStore` and `GrpcActionCache` forward each call to an existing storage
(bb-storage, bazel-remote, NativeLink, another redbarn frontend) and turn its
statuses back into `redbarn.errors` (same code, same message). The client's
instance name is passed through unchanged; the digest function is SHA256.

Reads the frontend makes for itself (Actions, Commands, Trees for the completeness
check) go through `get_many`: BatchReadBlobs in batches under `max_batch_bytes`,
and ByteStream for blobs bigger than that.

`open_storage_channel(config)` builds the channel: plaintext for `grpc://`, TLS for
`grpcs://` (`--storage-tls-ca`, else the system roots; `--storage-tls-cert` and
`--storage-tls-key` for mTLS), and with `--storage-token-file` an
`authorization: Bearer <token>` header on every call (call credentials over TLS, a
client interceptor over plaintext, where grpc refuses call credentials). Unreadable or
empty files are a `ConfigError` naming the flag and the path. The token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc

from redbarn.config import ConfigError, read_file
from redbarn.digests import SHA256, Digest, read_resource_name, write_resource_name
from redbarn.errors import InvalidArgument, NotFound, RedbarnError, Unavailable
from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.errors import error_for, from_rpc_error
from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc

DEFAULT_MAX_BATCH_BYTES = 2 << 20
WRITE_PIECE = 1 << 20


log = logging.getLogger(__name__)


def open_channel(
    target: str,
    *,
    max_message_bytes: int,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A plaintext channel to `target`, or a TLS one with `credentials`."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def open_storage_channel(config: FrontendConfig) -> grpc.aio.Channel:
    """The channel to the `--storage` upstream that `config` describes (module docstring).

    Raises ConfigError for an unreadable or empty CA, certificate, key or token file.
    """
    token = read_token(config.storage_token_file) if config.storage_token_file else ""
    if not config.storage.startswith("grpcs://"):
        interceptors: list[grpc.aio.ClientInterceptor] = []
        if token:
            log.warning(
                "--storage %s is plaintext: the --storage-token-file token crosses the "
                "network unencrypted (use grpcs:// unless the link is private)",
                config.storage,
            )
            interceptors += bearer_token_interceptors(token)
        return open_channel(
            config.storage_target,
            max_message_bytes=config.max_message_size,
            interceptors=interceptors,
        )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(config.storage_tls_ca, "--storage-tls-ca", b"CERTIFICATE"),
        private_key=_read_pem(config.storage_tls_key, "--storage-tls-key", b"PRIVATE KEY"),
        certificate_chain=_read_pem(config.storage_tls_cert, "--storage-tls-cert", b"CERTIFICATE"),
    )
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return open_channel(
        config.storage_target, max_message_bytes=config.max_message_size, credentials=credentials
    )


def read_token(path: str) -> str:
    """The bearer token in `path` (`--storage-token-file`): one line, surrounding
    whitespace ignored. ConfigError, naming flag and path (never the token), if the file
    is unreadable, empty, or not one header-safe word."""
    raw = read_file(path, "--storage-token-file")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"--storage-token-file {path} is not ASCII text") from None
    if not token:
        raise ConfigError(f"--storage-token-file {path} is empty")
    if any(not ch.isprintable() or ch.isspace() for ch in token):
        raise ConfigError(
            f"--storage-token-file {path} must hold one token on one line, without spaces"
        )
    return token


def _read_pem(path: str, flag: str, label: bytes) -> bytes | None:
    """The PEM file a flag names (None when the flag is unset); ConfigError if it is
    unreadable or holds no `label` block."""
    if not path:
        return None
    data = read_file(path, flag)
    if b"-----BEGIN " not in data or label + b"-----" not in data:
        what = label.decode().lower()
        raise ConfigError(f"{flag} {path} holds no PEM {what}")
    return data


class _BearerToken:
    """Adds `authorization: Bearer <token>` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<token>)"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready,
        )  # fmt: skip


class _UnaryUnaryToken(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamToken(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnaryToken(_BearerToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: AsyncIterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamToken(_BearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: AsyncIterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def bearer_token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors adding the token to calls of every shape: grpc.aio files each
    interceptor under the first call shape it implements, so one class per shape."""
    return [
        cls(token)
        for cls in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    ]


_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# gRPC's name for the address it tried, in a connection failure's details:
# "ipv4:10.0.0.5:8980: ", "ipv6:[::1]:8980: ", "unix:/run/storage.sock: ".
_GRPC_ADDRESS = re.compile(r"\b(?:ipv4|ipv6|unix|unix-abstract|dns):\S+: ")


def upstream_error(err: grpc.aio.AioRpcError) -> RedbarnError:
    """The domain error for a failed upstream call: the same code and message, except
    that a refused token or certificate and an unreachable upstream (no connection, a
    failed TLS handshake) say it was the `--storage` upstream, not the client's call."""
    code, details = err.code(), err.details() or ""
    if code in _REFUSED:
        return error_for(
            code, f"The --storage upstream refused this frontend's credentials: {details}"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        # The frontend's log (the storage health check) names the upstream; clients need not.
        return Unavailable(
            f"The --storage upstream is unavailable: {_GRPC_ADDRESS.sub('', details)}"
        )
    return from_rpc_error(err)


@contextlib.contextmanager
def _upstream() -> Iterator[None]:
    """Turn a status from the upstream server into a domain error (`upstream_error`)."""
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise upstream_error(err) from None


class GrpcBlobStore:
    """`BlobStore` forwarding to a remote ContentAddressableStorage + ByteStream."""

    def __init__(
        self, channel: grpc.aio.Channel, *, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    ) -> None:
        self.channel = channel
        self._cas = re_grpc.ContentAddressableStorageStub(channel)  # type: ignore[no-untyped-call]
        self._bs = bs_grpc.ByteStreamStub(channel)  # type: ignore[no-untyped-call]
        self._caps = re_grpc.CapabilitiesStub(channel)  # type: ignore[no-untyped-call]
        self._max_batch = max_batch_bytes

    def enqueue_check(self, redis: object, digests: Sequence[Digest]) -> None:
        """Never: the blobs live behind another server, not in the scheduler's Redis."""
        return None

    async def find_missing(self, instance_name: str, digests: Sequence[Digest]) -> list[Digest]:
        request = re_pb2.FindMissingBlobsRequest(
            instance_name=instance_name,
            blob_digests=[d.to_proto() for d in dict.fromkeys(digests)],
            digest_function=SHA256,
        )
        with _upstream():
            reply = await self._cas.FindMissingBlobs(request)
        return [Digest(d.hash, d.size_bytes) for d in reply.missing_blob_digests]

    async def put_many(
        self, instance_name: str, blobs: Sequence[tuple[Digest, bytes]]
    ) -> list[RedbarnError | None]:
        Request = re_pb2.BatchUpdateBlobsRequest.Request
        request = re_pb2.BatchUpdateBlobsRequest(
            instance_name=instance_name, digest_function=SHA256,
            requests=[Request(digest=d.to_proto(), data=data) for d, data in blobs],
        )  # fmt: skip
        with _upstream():
            reply = await self._cas.BatchUpdateBlobs(request)
        by_digest = {Digest(r.digest.hash, r.digest.size_bytes): r.status for r in reply.responses}
        results: list[RedbarnError | None] = []
        for digest, _ in blobs:
            status = by_digest.get(digest)
            if status is None or status.code == 0:
                results.append(None)
            else:
                results.append(error_for(status.code, status.message))
        return results

    async def get_many(self, instance_name: str, digests: Sequence[Digest]) -> list[bytes | None]:
        found: dict[Digest, bytes | None] = {}
        batch: list[Digest] = []
        batch_bytes = 0
        for d in dict.fromkeys(digests):
            if d.size_bytes > self._max_batch:
                found[d] = await self._read_whole(instance_name, d)
                continue
            if batch_bytes + d.size_bytes > self._max_batch:
                found.update(await self._batch_read(instance_name, batch))
                batch, batch_bytes = [], 0
            batch.append(d)
            batch_bytes += d.size_bytes
        if batch:
            found.update(await self._batch_read(instance_name, batch))
        return [found[d] for d in digests]

    async def _batch_read(
        self, instance_name: str, digests: list[Digest]
    ) -> dict[Digest, bytes | None]:
        request = re_pb2.BatchReadBlobsRequest(
            instance_name=instance_name,
            digests=[d.to_proto() for d in digests],
            digest_function=SHA256,
        )
        with _upstream():
            reply = await self._cas.BatchReadBlobs(request)
        out: dict[Digest, bytes | None] = dict.fromkeys(digests)
        for r in reply.responses:
            digest = Digest(r.digest.hash, r.digest.size_bytes)
            if r.status.code == 0:
                out[digest] = r.data
            elif r.status.code != grpc.StatusCode.NOT_FOUND.value[0]:
                raise error_for(r.status.code, r.status.message)
        return out

    async def _read_whole(self, instance_name: str, digest: Digest) -> bytes | None:
        try:
            return b"".join([piece async for piece in self.read(instance_name, digest)])
        except NotFound:
            return None

    async def get(self, instance_name: str, digest: Digest) -> bytes:
        (data,) = await self.get_many(instance_name, [digest])
        if data is None:
            raise NotFound(f"Blob {digest} not found")
        return data

    async def read(
        self, instance_name: str, digest: Digest, offset: int = 0, limit: int = 0
    ) -> AsyncIterator[bytes]:
        request = bs_pb2.ReadRequest(
            resource_name=read_resource_name(instance_name, digest),
            read_offset=offset,
            read_limit=limit,
        )
        with _upstream():
            async for reply in self._bs.Read(request):
                yield reply.data

    async def open_write(
        self, instance_name: str, digest: Digest, upload_id: str
    ) -> GrpcWriteSession:
        session = GrpcWriteSession(
            self._bs,
            write_resource_name(instance_name, upload_id or str(uuid.uuid4()), digest),
            digest,
        )
        await session.open()
        return session

    async def write_status(
        self, instance_name: str, digest: Digest, upload_id: str
    ) -> tuple[int, bool]:
        request = bs_pb2.QueryWriteStatusRequest(
            resource_name=write_resource_name(instance_name, upload_id, digest)
        )
        with _upstream():
            reply = await self._bs.QueryWriteStatus(request)
        return reply.committed_size, reply.complete

    async def get_tree(
        self, instance_name: str, root: Digest, page_size: int, page_token: str
    ) -> AsyncIterator[tuple[list[re_pb2.Directory], str]]:
        request = re_pb2.GetTreeRequest(
            instance_name=instance_name, root_digest=root.to_proto(),
            page_size=page_size, page_token=page_token, digest_function=SHA256,
        )  # fmt: skip
        with _upstream():
            async for reply in self._cas.GetTree(request):
                yield list(reply.directories), reply.next_page_token

    async def ping(self) -> None:
        with _upstream():
            await self._caps.GetCapabilities(re_pb2.GetCapabilitiesRequest(), timeout=2.0)


_END = object()


class GrpcWriteSession:
    """`WriteSession` streaming to an upstream ByteStream.Write as data arrives.

    The upstream call starts with the first write; requests go through a small
    bounded queue, so at most a few pieces are in memory. The upstream checks the
    hash; its answer (or early completion) is the session's outcome.
    """

    def __init__(self, stub: bs_grpc.ByteStreamStub, resource_name: str, digest: Digest) -> None:
        self._stub = stub
        self._resource_name = resource_name
        self._digest = digest
        self._received = 0
        self._complete = False
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=4)
        self._call: asyncio.Future[bs_pb2.WriteResponse] | None = None
        self._first = True

    @property
    def committed_size(self) -> int:
        return self._digest.size_bytes if self._complete else self._received

    @property
    def complete(self) -> bool:
        return self._complete

    async def open(self) -> None:
        try:
            status = await self._stub.QueryWriteStatus(
                bs_pb2.QueryWriteStatusRequest(resource_name=self._resource_name)
            )
        except grpc.aio.AioRpcError:
            return  # an unknown upload: start at 0
        self._received = status.committed_size
        self._complete = status.complete

    async def _requests(self) -> AsyncIterator[bs_pb2.WriteRequest]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            assert isinstance(item, bs_pb2.WriteRequest)
            yield item

    async def _send(self, request: bs_pb2.WriteRequest) -> None:
        if self._first:
            request.resource_name = self._resource_name
            self._first = False
        if self._call is None:
            self._call = asyncio.ensure_future(self._run_call())
        await self._enqueue(request)

    async def _run_call(self) -> bs_pb2.WriteResponse:
        reply: bs_pb2.WriteResponse = await self._stub.Write(self._requests())
        return reply

    async def _enqueue(self, item: object) -> None:
        """Queue `item` for the upstream call, unless that call ends first (early or failed)."""
        assert self._call is not None
        put: asyncio.Future[object] = asyncio.ensure_future(self._queue.put(item))
        call: asyncio.Future[object] = self._call  # type: ignore[assignment]
        done, _ = await asyncio.wait({put, call}, return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            await self._result()

    async def _result(self) -> int:
        assert self._call is not None
        with _upstream():
            reply = await self._call
        if reply.committed_size == self._digest.size_bytes:
            self._complete = True
        return int(reply.committed_size)

    async def write(self, offset: int, data: bytes) -> None:
        if self._complete:
            return
        if offset != self._received:
            raise InvalidArgument(
                f"Invalid write offset {offset} for {self._resource_name}: expected offset {self._received}"
            )
        for start in range(0, len(data), WRITE_PIECE):
            piece = data[start : start + WRITE_PIECE]
            await self._send(bs_pb2.WriteRequest(write_offset=self._received, data=piece))
            self._received += len(piece)
            if self._complete:
                return

    async def finish(self) -> int:
        if self._complete:
            return self._digest.size_bytes
        await self._send(bs_pb2.WriteRequest(write_offset=self._received, finish_write=True))
        if self._call is not None and not self._call.done():
            await self._enqueue(_END)
        return await self._result()

    async def close(self) -> None:
        """Half-close the upstream stream so it keeps what it got (for a resuming client)."""
        if self._call is None or self._call.done():
            return
        with contextlib.suppress(RedbarnError):
            await self._enqueue(_END)
            await self._result()


class GrpcActionCache:
    """`ActionCacheStore` forwarding to a remote ActionCache."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._ac = re_grpc.ActionCacheStub(channel)  # type: ignore[no-untyped-call]

    async def get(self, instance_name: str, action_digest: Digest) -> re_pb2.ActionResult:
        request = re_pb2.GetActionResultRequest(
            instance_name=instance_name,
            action_digest=action_digest.to_proto(),
            digest_function=SHA256,
        )
        with _upstream():
            result: re_pb2.ActionResult = await self._ac.GetActionResult(request)
        return result

    async def put(
        self, instance_name: str, action_digest: Digest, result: re_pb2.ActionResult
    ) -> None:
        request = re_pb2.UpdateActionResultRequest(
            instance_name=instance_name, action_digest=action_digest.to_proto(),
            action_result=result, digest_function=SHA256,
        )  # fmt: skip
        with _upstream():
            await self._ac.UpdateActionResult(request)
