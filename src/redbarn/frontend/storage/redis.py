"""CAS and Action Cache in Redis: the default storage of a frontend.

Every key of one blob shares the hash tag `{<hash>}`, so a blob's keys live in one
hash slot (Redis Cluster) and a commit is one MULTI. No value is larger than the
chunk size (1 MiB): bigger blobs are a small manifest plus chunk keys, read in
ranges without loading the blob whole. Keys expire; each use refreshes the TTL
(default 7 days). The CAS is shared by all instance names (content is content);
the Action Cache is keyed by instance name, as in Buildbarn.

Keys, their catalogue and redis-cli recipes: `cas_keys`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import cast

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from redbarn.digests import Digest, check_data, check_hasher
from redbarn.errors import (
    Aborted,
    InvalidArgument,
    NotFound,
    OutOfRange,
    RedbarnError,
    Unavailable,
)
from redbarn.frontend.storage import cas_keys, tree
from redbarn.frontend.storage.cas_keys import (
    ac_key,
    cas_chunk_key,
    cas_key,
    upload_chunk_key,
    upload_key,
)
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue.scripts import RequiredBlobs
from redbarn.runtime.fastredis import FastRedis

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_CAS_TTL = 7 * 24 * 3600.0
DEFAULT_UPLOAD_TTL = 3600.0
_MIN_CHUNK_SIZE = 1024
_TOUCH_BATCH = 2000  # digests per touch_blobs.lua call, bounding how long Redis is busy
_FAST_READ_MAX = 64 * 1024  # bytes a read may return over the pipelined connection


def stored(digests: Sequence[Digest]) -> list[Digest]:
    """`digests` that occupy keys: each once, in order, without the empty blob."""
    return [d for d in dict.fromkeys(digests) if not d.is_empty]


def _script(name: str) -> str:
    return (resources.files("redbarn.frontend.storage") / name).read_text()


def _not_found(digest: Digest) -> NotFound:
    return NotFound(f"Blob {digest} not found")


class RedisBlobStore:
    """`BlobStore` on a redis.asyncio client (the scheduler's, or a `--cas-redis` one)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl: float = DEFAULT_CAS_TTL,
        upload_ttl: float = DEFAULT_UPLOAD_TTL,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        flush_size: int = 256 * 1024,
        use_scripts: bool | None = None,
        fast: FastRedis | None = None,
    ) -> None:
        if chunk_size < _MIN_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} is below {_MIN_CHUNK_SIZE} bytes")
        self.client = client
        self.ttl_ms = max(1, int(ttl * 1000))
        self.upload_ttl_ms = max(1, int(upload_ttl * 1000))
        self.chunk_size = chunk_size
        self.flush_size = min(flush_size, chunk_size)
        # Multi-key scripts cannot span hash slots: a cluster client uses pipelines.
        self._scripts = (
            use_scripts if use_scripts is not None else not isinstance(client, RedisCluster)
        )
        self._touch = client.register_script(_script("touch_blobs.lua"))
        self._put = client.register_script(_script("put_blobs.lua"))
        self._get = client.register_script(_script("get_blobs.lua"))
        # Small reads (an Action at Execute, say) go over the pipelined connection when
        # there is one; big ones keep redis-py's pool, so they never hold up the
        # scheduler's calls queued behind them on that one connection.
        self._fast_get = fast.script(_script("get_blobs.lua")) if fast and self._scripts else None

    def _chunk_count(self, size: int) -> int:
        """0 for a blob stored in its main key, else the number of chunk keys."""
        return 0 if size <= self.chunk_size else math.ceil(size / self.chunk_size)

    # ------------------------------------------------------------ find / put / get

    async def find_missing(self, instance_name: str, digests: Sequence[Digest]) -> list[Digest]:
        unique = stored(digests)
        missing: list[Digest] = []
        for start in range(0, len(unique), _TOUCH_BATCH):
            batch = unique[start : start + _TOUCH_BATCH]
            present = await (
                self._touch_script(batch) if self._scripts else self._touch_pipeline(batch)
            )
            missing += [d for d, ok in zip(batch, present, strict=True) if not ok]
        return missing

    def blob_keys(self, digest: Digest) -> list[str]:
        """The keys that hold `digest`: its CAS key, then its chunk keys."""
        count = self._chunk_count(digest.size_bytes)
        return [cas_key(digest), *(cas_chunk_key(digest, i) for i in range(count))]

    def enqueue_check(self, redis: object, digests: Sequence[Digest]) -> RequiredBlobs | None:
        """The enqueue script can check these blobs itself when this store's client is
        the scheduler's `redis` and not a cluster client (its keys then live in one
        server); None otherwise."""
        if redis is not self.client or not self._scripts:
            return None
        checked = stored(digests)
        keys = [self.blob_keys(d) for d in checked]
        return RequiredBlobs(keys=keys, ttl_ms=self.ttl_ms, blobs=checked)

    async def _touch_script(self, digests: Sequence[Digest]) -> list[bool]:
        """touch_blobs.lua: one round trip, far less client CPU than a pipeline."""
        keys: list[str] = []
        counts: list[int] = []
        for d in digests:
            blob_keys = self.blob_keys(d)
            keys += blob_keys
            counts.append(len(blob_keys))
        replies = await self._touch(keys=keys, args=[self.ttl_ms, *counts])
        return [bool(r) for r in replies]

    async def _touch_pipeline(self, digests: Sequence[Digest]) -> list[bool]:
        """The cluster-safe form: a pipeline of single-key PEXPIREs."""
        async with self.client.pipeline(transaction=False) as pipe:
            for d in digests:
                for key in self.blob_keys(d):
                    pipe.pexpire(key, self.ttl_ms)
            replies = await pipe.execute()
        present, pos = [], 0
        for d in digests:
            n = 1 + self._chunk_count(d.size_bytes)
            present.append(all(replies[pos : pos + n]))
            pos += n
        return present

    async def put_many(
        self, instance_name: str, blobs: Sequence[tuple[Digest, bytes]]
    ) -> list[RedbarnError | None]:
        results: list[RedbarnError | None] = []
        writes: list[tuple[str, bytes]] = []
        for digest, data in blobs:
            try:
                check_data(digest, data)
            except InvalidArgument as err:
                results.append(err)
                continue
            results.append(None)
            if not digest.is_empty:
                writes += self._values(digest, data)
        if self._scripts and writes:
            await self._put(
                keys=[k for k, _ in writes], args=[self.ttl_ms, *(v for _, v in writes)]
            )
        elif writes:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in writes:
                    pipe.set(key, value, px=self.ttl_ms)
                await pipe.execute()
        return results

    def _values(self, digest: Digest, data: bytes) -> list[tuple[str, bytes]]:
        """The (key, value) pairs of a blob; a manifest comes after its chunks."""
        count = self._chunk_count(digest.size_bytes)
        if count == 0:
            return [(cas_key(digest), data)]
        size = self.chunk_size
        values = [(cas_chunk_key(digest, i), data[i * size : (i + 1) * size]) for i in range(count)]
        return [*values, (cas_key(digest), cas_keys.manifest(size, count))]

    async def _head(self, digests: Sequence[Digest]) -> list[bytes | None]:
        """Main-key values (blob or manifest), refreshing their TTL."""
        keys = [cas_key(d) for d in digests]
        if not keys:
            return []
        if self._fast_get is not None and sum(d.size_bytes for d in digests) <= _FAST_READ_MAX:
            return list(await self._fast_get(keys=keys, args=[self.ttl_ms]))
        if self._scripts:
            return list(await self._get(keys=keys, args=[self.ttl_ms]))
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pexpire(key, self.ttl_ms)
            replies = await pipe.execute()
        return [replies[2 * i] for i in range(len(digests))]

    async def _touch_chunks(self, digest: Digest, chunk_size: int, count: int) -> None:
        """Refresh every chunk's TTL; a blob with a lost chunk is dropped and NotFound."""
        keys = [cas_chunk_key(digest, i) for i in range(count)]
        if self._scripts:
            present = await self._touch(keys=keys, args=[self.ttl_ms, count])
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(key, self.ttl_ms)
                present = await pipe.execute()
        if not all(present):
            await self.client.delete(cas_key(digest))
            raise _not_found(digest)

    async def get_many(self, instance_name: str, digests: Sequence[Digest]) -> list[bytes | None]:
        heads = await self._head([d for d in digests if not d.is_empty])
        values = iter(heads)
        out: list[bytes | None] = []
        for d in digests:
            if d.is_empty:
                out.append(b"")
                continue
            value = next(values)
            if value is None or len(value) == d.size_bytes:
                out.append(value)
                continue
            try:
                out.append(
                    b"".join(
                        [piece async for piece in self._read_chunked(d, value, 0, d.size_bytes)]
                    )
                )
            except NotFound:
                out.append(None)
        return out

    async def get(self, instance_name: str, digest: Digest) -> bytes:
        (data,) = await self.get_many(instance_name, [digest])
        if data is None:
            raise _not_found(digest)
        return data

    # ------------------------------------------------------------ ranged reads

    async def read(
        self, instance_name: str, digest: Digest, offset: int = 0, limit: int = 0
    ) -> AsyncIterator[bytes]:
        size = digest.size_bytes
        if offset < 0 or offset > size:
            raise OutOfRange(f"Read offset {offset} is outside blob {digest} of {size} bytes")
        if limit < 0:
            raise InvalidArgument(f"Invalid read limit {limit}: it must not be negative")
        end = size if limit == 0 else min(size, offset + limit)
        if digest.is_empty:
            return
        (value,) = await self._head([digest])
        if value is None:
            raise _not_found(digest)
        if len(value) == size:
            for start in range(offset, end, self.chunk_size):
                yield value[start : min(end, start + self.chunk_size)]
            return
        async for piece in self._read_chunked(digest, value, offset, end):
            yield piece

    async def _read_chunked(
        self, digest: Digest, manifest: bytes, offset: int, end: int
    ) -> AsyncIterator[bytes]:
        chunk_size, count = cas_keys.parse_manifest(digest, manifest)
        await self._touch_chunks(digest, chunk_size, count)
        pos = offset
        while pos < end:
            index, within = divmod(pos, chunk_size)
            stop = min(chunk_size, within + (end - pos))
            key = cas_chunk_key(digest, index)
            piece = cast(bytes, await self.client.getrange(key, within, stop - 1))
            if len(piece) != stop - within:
                await self.client.delete(cas_key(digest))
                raise Unavailable(f"Blob {digest} lost chunk {index} while being read")
            yield piece
            pos += len(piece)

    # ------------------------------------------------------------ uploads

    async def _exists(self, digest: Digest) -> bool:
        if digest.is_empty:
            return True
        return not await self.find_missing("", [digest])

    async def open_write(
        self, instance_name: str, digest: Digest, upload_id: str
    ) -> RedisWriteSession:
        session = RedisWriteSession(self, digest, upload_id)
        await session.open()
        return session

    async def write_status(
        self, instance_name: str, digest: Digest, upload_id: str
    ) -> tuple[int, bool]:
        if await self._exists(digest):
            return digest.size_bytes, True
        committed = await self.client.hget(upload_key(digest, upload_id), "committed")
        return int(committed or 0), False

    def get_tree(
        self, instance_name: str, root: Digest, page_size: int, page_token: str
    ) -> AsyncIterator[tuple[list[re_pb2.Directory], str]]:
        return tree.iter_tree_pages(self, instance_name, root, page_size, page_token)

    async def ping(self) -> None:
        await self.client.ping()


class RedisWriteSession:
    """`WriteSession`: stages data in upload chunk keys, hashing as it goes.

    Data is flushed every `flush_size` bytes with one MULTI (APPEND to the staged
    chunk, bump `committed`) under WATCH of the upload hash, so two streams writing
    the same upload id cannot interleave. A resumed session re-reads the staged
    prefix once to rebuild the hash state.
    """

    def __init__(self, store: RedisBlobStore, digest: Digest, upload_id: str) -> None:
        self._store = store
        self._digest = digest
        self._upload_id = upload_id
        self._meta = upload_key(digest, upload_id)
        self._hasher = hashlib.sha256()
        self._pending = bytearray()
        self._committed = 0
        self._complete = False

    @property
    def committed_size(self) -> int:
        return self._digest.size_bytes if self._complete else self._committed

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def _received(self) -> int:
        return self._committed + len(self._pending)

    async def open(self) -> None:
        if await self._store._exists(self._digest):
            self._complete = True
            return
        client = self._store.client
        self._committed = int(await client.hget(self._meta, "committed") or 0)
        chunk = self._store.chunk_size
        for i in range(math.ceil(self._committed / chunk)):
            staged = await client.get(upload_chunk_key(self._digest, self._upload_id, i))
            if staged is None:  # expired under us: start over
                await self._discard()
                self._committed, self._hasher = 0, hashlib.sha256()
                return
            self._hasher.update(cast(bytes, staged))

    async def write(self, offset: int, data: bytes) -> None:
        if self._complete:
            return
        if offset != self._received:
            raise InvalidArgument(
                f"Invalid write offset {offset} for upload {self._upload_id} of blob "
                f"{self._digest}: expected offset {self._received}"
            )
        if self._received + len(data) > self._digest.size_bytes:
            raise InvalidArgument(
                f"Write of {len(data)} bytes at offset {offset} exceeds the size of blob "
                f"{self._digest} ({self._digest.size_bytes} bytes)"
            )
        self._hasher.update(data)
        self._pending += data
        if len(self._pending) >= self._store.flush_size:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        store, chunk = self._store, self._store.chunk_size
        async with store.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self._meta)
                current = int(await pipe.hget(self._meta, "committed") or 0)
                if current != self._committed:
                    raise Aborted(
                        f"Upload {self._upload_id} of blob {self._digest} has {current} bytes "
                        f"committed, while this stream expected {self._committed}: another "
                        "stream wrote to it, or it expired; restart from QueryWriteStatus"
                    )
                pipe.multi()  # type: ignore[no-untyped-call]
                pos, data = self._committed, memoryview(bytes(self._pending))
                while data:
                    index, within = divmod(pos, chunk)
                    piece = data[: chunk - within]
                    key = upload_chunk_key(self._digest, self._upload_id, index)
                    pipe.append(key, bytes(piece))
                    pipe.pexpire(key, store.upload_ttl_ms)
                    pos, data = pos + len(piece), data[len(piece) :]
                pipe.hset(self._meta, "committed", str(pos))
                pipe.pexpire(self._meta, store.upload_ttl_ms)
                await pipe.execute()
            except redis.exceptions.WatchError:
                raise Aborted(
                    f"Upload {self._upload_id} of blob {self._digest} was written by another stream"
                ) from None
        self._committed = pos
        self._pending.clear()

    async def finish(self) -> int:
        if self._complete:
            return self._digest.size_bytes
        await self._flush()
        try:
            check_hasher(self._digest, self._hasher, self._committed)
        except InvalidArgument:
            await self._discard()
            raise
        await self._commit()
        self._complete = True
        return self._digest.size_bytes

    async def close(self) -> None:
        if not self._complete:
            await self._flush()

    async def _commit(self) -> None:
        store, digest = self._store, self._digest
        count = store._chunk_count(digest.size_bytes)
        async with store.client.pipeline(transaction=True) as pipe:
            if digest.size_bytes == 0:
                pipe.set(cas_key(digest), b"", px=store.ttl_ms)
            elif count == 0:
                pipe.rename(upload_chunk_key(digest, self._upload_id, 0), cas_key(digest))
                pipe.pexpire(cas_key(digest), store.ttl_ms)
            else:
                for i in range(count):
                    pipe.rename(
                        upload_chunk_key(digest, self._upload_id, i), cas_chunk_key(digest, i)
                    )
                    pipe.pexpire(cas_chunk_key(digest, i), store.ttl_ms)
                pipe.set(
                    cas_key(digest), cas_keys.manifest(store.chunk_size, count), px=store.ttl_ms
                )
            pipe.delete(self._meta)
            try:
                await pipe.execute()
            except redis.exceptions.ResponseError as err:  # a staged chunk expired
                raise Aborted(f"Upload {self._upload_id} of blob {digest} expired: {err}") from None

    async def _discard(self) -> None:
        count = math.ceil(self._digest.size_bytes / self._store.chunk_size)
        keys = [upload_chunk_key(self._digest, self._upload_id, i) for i in range(count)]
        await self._store.client.delete(self._meta, *keys)


class RedisActionCache:
    """`ActionCacheStore`: one key per (instance name, action digest), TTL refreshed on get."""

    def __init__(self, client: aioredis.Redis, *, ttl: float = DEFAULT_CAS_TTL) -> None:
        self.client = client
        self.ttl_ms = max(1, int(ttl * 1000))

    async def get(self, instance_name: str, action_digest: Digest) -> re_pb2.ActionResult:
        key = ac_key(instance_name, action_digest)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pexpire(key, self.ttl_ms)
            value, _ = await pipe.execute()
        if value is None:
            raise NotFound(f"Action result for action {action_digest} not found")
        return re_pb2.ActionResult.FromString(value)

    async def put(
        self, instance_name: str, action_digest: Digest, result: re_pb2.ActionResult
    ) -> None:
        await self.client.set(
            ac_key(instance_name, action_digest), result.SerializeToString(), px=self.ttl_ms
        )
