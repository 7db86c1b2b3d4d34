"""The storage roles behind CAS, ByteStream and the Action Cache.

Implementations:

- `redis.py`: `RedisBlobStore`, `RedisActionCache` (the default; keys in `cas_keys.py`);
- `proxy.py`: `GrpcBlobStore`, `GrpcActionCache` forwarding to another REAPI server;
- `completeness.py`: `CompletenessCheckingActionCache`, a decorator that hides
  results whose blobs are gone from the CAS;
- `tree.py`: GetTree over any `BlobStore.get_many`.

All digests are validated SHA256 `Digest`s (`redbarn.digests`); the
servicers validate before calling. Errors are `redbarn.errors` classes, never grpc.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from redbarn.digests import Digest
from redbarn.errors import RedbarnError
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue.scripts import RequiredBlobs


class WriteSession(Protocol):
    """One ByteStream upload of one blob, possibly resuming an earlier stream.

    `committed_size` is what QueryWriteStatus would answer. `complete` is true once
    the blob is in the CAS (it may already be there when the session opens: the
    client then stops early with committed_size = size).
    """

    @property
    def committed_size(self) -> int: ...

    @property
    def complete(self) -> bool: ...

    async def write(self, offset: int, data: bytes) -> None:
        """Append `data` at `offset`, which must equal the bytes received so far.

        Raises InvalidArgument naming both offsets when they differ, and when the
        data would run past the digest's size. Data is staged outside the process
        in bounded pieces; the session never holds the whole blob.
        """

    async def finish(self) -> int:
        """Check size and hash, then make the blob visible. Returns its size.

        Raises InvalidArgument (Buildbarn's "Buffer has checksum …" wording) on
        mismatch and drops the staged data.
        """

    async def close(self) -> None:
        """Persist what was received without committing (the client may resume)."""


class BlobStore(Protocol):
    """Content-addressed blobs, keyed by digest. TTLs are refreshed on every use.

    The empty blob is always present. Reading a missing blob raises NotFound with
    "Blob <hash>-<size> not found".
    """

    async def find_missing(self, instance_name: str, digests: Sequence[Digest]) -> list[Digest]:
        """The subset of `digests` not stored (order kept, duplicates once)."""

    async def put_many(
        self, instance_name: str, blobs: Sequence[tuple[Digest, bytes]]
    ) -> list[RedbarnError | None]:
        """Store each blob after checking it against its digest; one result per blob."""

    def enqueue_check(self, redis: object, digests: Sequence[Digest]) -> RequiredBlobs | None:
        """A capability: when these blobs live in `redis` itself (the scheduler's own,
        non-cluster server), the keys the enqueue script checks and refreshes in the
        same round trip; None when they do not (Execute checks with `find_missing`)."""

    async def get_many(self, instance_name: str, digests: Sequence[Digest]) -> list[bytes | None]:
        """Whole blobs (None for missing). Callers bound the total size."""

    async def get(self, instance_name: str, digest: Digest) -> bytes:
        """One whole blob (an Action, a Command, a Tree). Raises NotFound."""

    def read(
        self, instance_name: str, digest: Digest, offset: int = 0, limit: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream `limit` bytes (0 = to the end) from `offset`, in chunks.

        Raises NotFound, and OutOfRange when `offset` > size or negative.
        """

    async def open_write(self, instance_name: str, digest: Digest, upload_id: str) -> WriteSession:
        """Start or resume the upload `upload_id` of `digest`."""

    async def write_status(
        self, instance_name: str, digest: Digest, upload_id: str
    ) -> tuple[int, bool]:
        """(committed_size, complete) of an upload, as QueryWriteStatus reports it."""

    def get_tree(
        self, instance_name: str, root: Digest, page_size: int, page_token: str
    ) -> AsyncIterator[tuple[list[re_pb2.Directory], str]]:
        """Pages of the directories below `root`, breadth first, from `page_token` on.

        Each page comes with the token of the next one; the last with "".
        Raises NotFound for a missing root (missing subtrees are left out).
        """

    async def ping(self) -> None:
        """Raise if the backend is unreachable (health checking)."""


class ActionCacheStore(Protocol):
    """ActionResults keyed by (instance name, action digest)."""

    async def get(self, instance_name: str, action_digest: Digest) -> re_pb2.ActionResult:
        """Raises NotFound when there is no (usable) result."""

    async def put(
        self, instance_name: str, action_digest: Digest, result: re_pb2.ActionResult
    ) -> None: ...
