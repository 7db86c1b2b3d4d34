"""CAS and Action Cache in Redis: the default storage of a frontend.

One key per blob, whatever its size: a blob up to the chunk size (1 MiB) is a STRING,
a bigger one a HASH whose fields are its chunks (`c0`, `c1`, ...). Existence is then
one key, so the Redis work of a request is bounded by its digest count, never by the
sizes it declares; and Redis's LRU (the CAS Redis runs `allkeys-lru`) evicts a blob
whole. A key that does not hold exactly its size (a HASH lacking a chunk, a STRING of
another length such as a v1 manifest) reads as missing everywhere. Reads take one
chunk at a time (HGET), so no reply is larger than a chunk. Uploads stage whole chunks
in one HASH under their upload key and commit with one RENAME. Keys expire; each use
refreshes the TTL (default 7 days). The CAS is shared by all instance names (content is
content); the Action Cache is keyed by instance name, as in Buildbarn.

Keys, their catalogue and redis-cli recipes: `cas_keys`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
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
from redbarn.frontend.storage import tree
from redbarn.frontend.storage.cas_keys import (
    COMMITTED_FIELD,
    ac_key,
    cas_key,
    chunk_field,
    upload_key,
)
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue.scripts import RequiredBlobs
from redbarn.runtime.fastredis import FastRedis

DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_CAS_TTL = 7 * 24 * 3600.0
DEFAULT_UPLOAD_TTL = 3600.0
_MIN_CHUNK_SIZE = 1024
# Digests (= keys: one per blob) per probe_blobs.lua or put_blobs.lua call, bounding how
# long Redis is busy.
PROBE_BATCH = 2000
_CHUNKS_PER_REPLY = 8  # chunks per HMGET of a whole-blob read: no Redis reply over 8 MiB
_FAST_READ_MAX = 64 * 1024  # bytes a read may return over the pipelined connection

# What a probe says of one blob: bytes = the blob (a STRING); WHOLE = a STRING, value
# not asked for; an int > 1 = a complete HASH with chunks of that size; MISSING.
Probe = bytes | int
MISSING = 0
WHOLE = 1


def stored(digests: Sequence[Digest]) -> list[Digest]:
    """`digests` that occupy keys: each once, in order, without the empty blob."""
    return [d for d in dict.fromkeys(digests) if not d.is_empty]


def _script(name: str) -> str:
    return (resources.files("redbarn.frontend.storage") / name).read_text()


def _not_found(digest: Digest) -> NotFound:
    return NotFound(f"Blob {digest} not found")


def complete_hash(size: int, count: int, first: int, last: int) -> int:
    """The chunk size of a HASH blob of `size` bytes with `count` fields whose first
    and last fields are `first` and `last` bytes long, or MISSING when they cannot be
    all of it (probe_blobs.lua's rule, for the pipeline path)."""
    spans = first > 0 and (count - 1) * first < size <= count * first
    return first if spans and last == size - (count - 1) * first else MISSING


class RedisBlobStore:
    """`BlobStore` on a redis.asyncio client (the scheduler's, or a `--cas-redis` one)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl: float = DEFAULT_CAS_TTL,
        upload_ttl: float = DEFAULT_UPLOAD_TTL,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        use_scripts: bool | None = None,
        fast: FastRedis | None = None,
    ) -> None:
        if chunk_size < _MIN_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} is below {_MIN_CHUNK_SIZE} bytes")
        self.client = client
        self.ttl_ms = max(1, int(ttl * 1000))
        self.upload_ttl_ms = max(1, int(upload_ttl * 1000))
        self.chunk_size = chunk_size
        # Multi-key scripts cannot span hash slots: a cluster client uses pipelines for
        # the batch calls. The upload scripts touch one blob's keys (one slot): always.
        self._scripts = (
            use_scripts if use_scripts is not None else not isinstance(client, RedisCluster)
        )
        self._probe = client.register_script(_script("probe_blobs.lua"))
        self._put = client.register_script(_script("put_blobs.lua"))
        self.stage_upload = client.register_script(_script("stage_upload.lua"))
        self.commit_upload = client.register_script(_script("commit_upload.lua"))
        # Small reads (an Action at Execute, say) go over the pipelined connection when
        # there is one; big ones keep redis-py's pool, so they never hold up the
        # scheduler's calls queued behind them on that one connection.
        self._fast_probe = (
            fast.script(_script("probe_blobs.lua")) if fast and self._scripts else None
        )

    # ------------------------------------------------------------ find / put / get

    async def find_missing(self, instance_name: str, digests: Sequence[Digest]) -> list[Digest]:
        unique = stored(digests)
        missing: list[Digest] = []
        for start in range(0, len(unique), PROBE_BATCH):
            batch = unique[start : start + PROBE_BATCH]
            found = await self._probe_blobs(batch, values=False)
            missing += [d for d, f in zip(batch, found, strict=True) if f == MISSING]
        return missing

    def enqueue_check(self, redis: object, digests: Sequence[Digest]) -> RequiredBlobs | None:
        """The enqueue script can check these blobs itself when this store's client is
        the scheduler's `redis` and not a cluster client (its keys then live in one
        server); None otherwise. One key per blob: its CAS key."""
        if redis is not self.client or not self._scripts:
            return None
        checked = stored(digests)
        keys = [[cas_key(d)] for d in checked]
        return RequiredBlobs(keys=keys, ttl_ms=self.ttl_ms, blobs=checked)

    async def _probe_blobs(self, digests: Sequence[Digest], *, values: bool) -> list[Probe]:
        """One `Probe` per digest (at most PROBE_BATCH of them), refreshing the TTL of
        those present; `values` asks for the bytes of STRING blobs."""
        if not digests:
            return []
        keys = [cas_key(d) for d in digests]
        args = [self.ttl_ms, "1" if values else "0", *(d.size_bytes for d in digests)]
        small = sum(d.size_bytes for d in digests) <= _FAST_READ_MAX
        if self._fast_probe is not None and small:
            return list(await self._fast_probe(keys=keys, args=args))
        if self._scripts:
            return list(await self._probe(keys=keys, args=args))
        return await self._probe_pipeline(digests, values=values)

    async def _probe_pipeline(self, digests: Sequence[Digest], *, values: bool) -> list[Probe]:
        """The cluster-safe form of probe_blobs.lua, same rule: pipelines of single-key
        commands (a command of the wrong type answers an error, read as 0)."""

        def num(reply: Any) -> int:
            return reply if isinstance(reply, int) else 0

        keys = [cas_key(d) for d in digests]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.strlen(key)
                pipe.hlen(key)
                pipe.hstrlen(key, chunk_field(0))
            replies = [num(r) for r in await pipe.execute(raise_on_error=False)]
        strings = [i for i, d in enumerate(digests) if replies[3 * i] == d.size_bytes]
        reads = strings if values else []
        hashes = [i for i in range(len(digests)) if replies[3 * i + 1] > 0]
        async with self.client.pipeline(transaction=False) as pipe:
            for i in reads:
                pipe.get(keys[i])
            for i in hashes:
                pipe.hstrlen(keys[i], chunk_field(replies[3 * i + 1] - 1))
            second = await pipe.execute(raise_on_error=False)
        found: list[Probe] = [MISSING] * len(digests)
        for i in strings:
            found[i] = WHOLE
        for i, value in zip(reads, second, strict=False):
            ok = isinstance(value, bytes) and len(value) == digests[i].size_bytes
            found[i] = value if ok else MISSING
        for i, last in zip(hashes, second[len(reads) :], strict=True):
            count, first = replies[3 * i + 1], replies[3 * i + 2]
            found[i] = complete_hash(digests[i].size_bytes, count, first, num(last))
        async with self.client.pipeline(transaction=False) as pipe:
            for key, f in zip(keys, found, strict=True):
                if f != MISSING:
                    pipe.pexpire(key, self.ttl_ms)
            await pipe.execute()
        return found

    async def put_many(
        self, instance_name: str, blobs: Sequence[tuple[Digest, bytes]]
    ) -> list[RedbarnError | None]:
        results: list[RedbarnError | None] = []
        writes: list[tuple[str, list[bytes]]] = []
        for digest, data in blobs:
            try:
                check_data(digest, data)
            except InvalidArgument as err:
                results.append(err)
                continue
            results.append(None)
            if not digest.is_empty:
                writes.append((cas_key(digest), self._chunks(data)))
        if self._scripts:
            for start in range(0, len(writes), PROBE_BATCH):
                batch = writes[start : start + PROBE_BATCH]
                args: list[int | bytes] = [self.ttl_ms]
                for _, chunks in batch:
                    args += [len(chunks), *chunks]
                await self._put(keys=[k for k, _ in batch], args=args)
        elif writes:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, chunks in writes:
                    if len(chunks) == 1:
                        pipe.set(key, chunks[0], px=self.ttl_ms)
                        continue
                    pipe.delete(key)
                    pipe.hset(key, mapping={chunk_field(i): c for i, c in enumerate(chunks)})
                    pipe.pexpire(key, self.ttl_ms)
                await pipe.execute()
        return results

    def _chunks(self, data: bytes) -> list[bytes]:
        """The values a blob is stored as: itself, or its chunks (the fields of its HASH)."""
        size = self.chunk_size
        if len(data) <= size:
            return [data]
        return [data[i : i + size] for i in range(0, len(data), size)]

    async def get_many(self, instance_name: str, digests: Sequence[Digest]) -> list[bytes | None]:
        wanted = stored(digests)
        found: dict[Digest, bytes | None] = {}
        for start in range(0, len(wanted), PROBE_BATCH):
            batch = wanted[start : start + PROBE_BATCH]
            probes = await self._probe_blobs(batch, values=True)
            for d, probe in zip(batch, probes, strict=True):
                if isinstance(probe, bytes):
                    found[d] = probe
                elif probe == MISSING:
                    found[d] = None
                else:
                    found[d] = await self._get_chunked(d, probe)
        return [b"" if d.is_empty else found[d] for d in digests]

    async def _get_chunked(self, digest: Digest, chunk_size: int) -> bytes | None:
        """A whole HASH blob (the caller bounds its size); None if a chunk went missing."""
        count = math.ceil(digest.size_bytes / chunk_size)
        chunks: list[bytes | None] = []
        for start in range(0, count, _CHUNKS_PER_REPLY):
            fields = [chunk_field(i) for i in range(start, min(count, start + _CHUNKS_PER_REPLY))]
            chunks += cast(list[bytes | None], await self.client.hmget(cas_key(digest), fields))
        if any(c is None for c in chunks):
            return None
        data = b"".join(cast(list[bytes], chunks))
        return data if len(data) == digest.size_bytes else None

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
        (probe,) = await self._probe_blobs([digest], values=True)
        if probe == MISSING:
            raise _not_found(digest)
        if isinstance(probe, bytes):
            for start in range(offset, end, self.chunk_size):
                yield probe[start : min(end, start + self.chunk_size)]
            return
        async for piece in self._read_chunked(digest, probe, offset, end):
            yield piece

    async def _read_chunked(
        self, digest: Digest, chunk_size: int, offset: int, end: int
    ) -> AsyncIterator[bytes]:
        """Bytes [offset, end) of a HASH blob, one HGET of one chunk at a time."""
        pos = offset
        while pos < end:
            index, within = divmod(pos, chunk_size)
            chunk = await self.client.hget(cas_key(digest), chunk_field(index))
            expected = min(chunk_size, digest.size_bytes - index * chunk_size)
            if chunk is None or len(chunk) != expected:
                raise Unavailable(f"Blob {digest} lost chunk {index} while being read")
            piece = cast(bytes, chunk)[within : within + (end - pos)]
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
        committed = await self.client.hget(upload_key(digest, upload_id), COMMITTED_FIELD)
        return int(committed or 0), False

    def get_tree(
        self, instance_name: str, root: Digest, page_size: int, page_token: str
    ) -> AsyncIterator[tuple[list[re_pb2.Directory], str]]:
        return tree.iter_tree_pages(self, instance_name, root, page_size, page_token)

    async def ping(self) -> None:
        await self.client.ping()


class RedisWriteSession:
    """`WriteSession`: stages whole chunks in the upload's HASH, hashing as it goes.

    The session holds at most one chunk (the one being received, from `_base`). A
    chunk is staged (stage_upload.lua: HSET the chunk and `committed`) when it is full
    and more data follows; the blob's last chunk stays in memory until `finish`, which
    stores it with the commit (commit_upload.lua: a blob of one chunk is SET as a
    STRING, a bigger one's upload HASH is RENAMEd to the CAS key). `close` stages the
    chunk in progress, partial, so another stream can resume. Both scripts first check
    `committed` against what this stream last saw, so two streams writing the same
    upload id cannot interleave. A resumed session re-reads the staged chunks once to
    rebuild the hash state.
    """

    def __init__(self, store: RedisBlobStore, digest: Digest, upload_id: str) -> None:
        self._store = store
        self._digest = digest
        self._upload_id = upload_id
        self._key = upload_key(digest, upload_id)
        self._hasher = hashlib.sha256()
        self._base = 0  # offset of the chunk being received (a multiple of the chunk size)
        self._pending = bytearray()  # bytes received from _base on
        self._staged = 0  # `committed` as this stream last wrote or read it
        self._complete = False
        size, chunk = digest.size_bytes, store.chunk_size
        self._last_base = ((size - 1) // chunk) * chunk if size else 0

    @property
    def committed_size(self) -> int:
        return self._digest.size_bytes if self._complete else self._staged

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def _received(self) -> int:
        return self._base + len(self._pending)

    async def open(self) -> None:
        if await self._store._exists(self._digest):
            self._complete = True
            return
        client, chunk = self._store.client, self._store.chunk_size
        committed = int(await client.hget(self._key, COMMITTED_FIELD) or 0)
        if not 0 <= committed <= self._digest.size_bytes:
            await self._discard()
            return
        base = min(committed - committed % chunk, self._last_base)
        for index in range(math.ceil(committed / chunk)):
            staged = cast(bytes | None, await client.hget(self._key, chunk_field(index)))
            expected = min(chunk, committed - index * chunk)
            if staged is None or len(staged) != expected:  # expired under us: start over
                await self._discard()
                return
            self._hasher.update(staged)
            if index * chunk == base:
                self._pending += staged
        self._base, self._staged = base, committed

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
        chunk = self._store.chunk_size
        while len(self._pending) >= chunk and self._base < self._last_base:
            await self._stage(bytes(self._pending[:chunk]))
            del self._pending[:chunk]
            self._base += chunk

    async def _stage(self, data: bytes) -> None:
        """Stage `data` as the chunk at `_base` (whole, or partial on close)."""
        store, index = self._store, self._base // self._store.chunk_size
        committed = self._base + len(data)
        reply = await store.stage_upload(
            keys=[self._key],
            args=[self._staged, committed, store.upload_ttl_ms, chunk_field(index), data],
        )
        if not reply[0]:
            raise self._moved(int(reply[1]))
        self._staged = committed

    def _moved(self, found: int) -> Aborted:
        return Aborted(
            f"Upload {self._upload_id} of blob {self._digest} has {found} bytes committed, "
            f"while this stream expected {self._staged}: another stream wrote to it, or it "
            "expired; restart from QueryWriteStatus"
        )

    async def finish(self) -> int:
        if self._complete:
            return self._digest.size_bytes
        try:
            check_hasher(self._digest, self._hasher, self._received)
        except InvalidArgument:
            await self._discard()
            raise
        store, digest = self._store, self._digest
        mode = "string" if digest.size_bytes <= store.chunk_size else "hash"
        index = self._base // store.chunk_size
        reply = await store.commit_upload(
            keys=[self._key, cas_key(digest)],
            args=[self._staged, store.ttl_ms, mode, chunk_field(index), bytes(self._pending)],
        )
        if not reply[0]:
            raise self._moved(int(reply[1]))
        self._pending = bytearray()
        self._complete = True
        return digest.size_bytes

    async def close(self) -> None:
        if not self._complete and self._received > self._staged:
            await self._stage(bytes(self._pending))

    async def _discard(self) -> None:
        await self._store.client.delete(self._key)
        self._hasher, self._base, self._pending, self._staged = hashlib.sha256(), 0, bytearray(), 0


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
