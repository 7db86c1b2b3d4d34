"""The keys of the Redis CAS and Action Cache (`redis.RedisBlobStore`, `RedisActionCache`).

Key catalogue (`H` = SHA256 hex, `S` = size in bytes, `U` = client upload id)

| key | type | holds | written by | lifetime |
|---|---|---|---|---|
| `redbarn:v1:cas:{H}:S` | STRING | the blob itself when S <= chunk size, else the manifest `redbarn-chunked:v1:<chunk size>:<count>` | BatchUpdateBlobs, Write commit | CAS TTL, refreshed on every find/read/write |
| `redbarn:v1:cas:{H}:S:c<N>` | STRING | chunk N (0-based) of a chunked blob | same | same TTL as the manifest, refreshed with it |
| `redbarn:v1:upload:{H}:S:U` | HASH | `committed` = bytes staged so far by ByteStream Write `U` | Write | upload TTL (default 1 h), refreshed per flush; deleted on commit |
| `redbarn:v1:upload:{H}:S:U:c<N>` | STRING | staged chunk N, renamed to the CAS chunk on commit | Write | as above |
| `redbarn:v1:ac:{H}:S:<instance>` | STRING | serialized `ActionResult` for action digest H-S | UpdateActionResult, workers | AC TTL, refreshed on every get |

Batches go through three small scripts beside this module, one round trip and far
less client CPU than redis-py pipelines: `touch_blobs.lua` (FindMissingBlobs: PEXPIRE
every key of every blob, 2000 digests per call), `put_blobs.lua` (BatchUpdateBlobs:
SET ... PX) and `get_blobs.lua` (BatchReadBlobs and reads: GET + PEXPIRE). Their keys
span hash slots, so a Redis Cluster client gets the same commands as pipelines.

A value whose length equals S is the blob; anything else under a CAS main key is a
manifest (a manifest is a few dozen bytes and only used when S > chunk size).

Inspecting with redis-cli:

    redis-cli --scan --pattern 'redbarn:v1:cas:*' | head           # some blobs
    redis-cli STRLEN 'redbarn:v1:cas:{<hash>}:<size>'              # size, or manifest length
    redis-cli GET 'redbarn:v1:cas:{<hash>}:<size>' | head -c 64    # manifest of a big blob
    redis-cli TTL 'redbarn:v1:cas:{<hash>}:<size>'                 # seconds left
    redis-cli --scan --pattern 'redbarn:v1:upload:*' | grep -v ':c' # uploads in progress
    redis-cli HGET 'redbarn:v1:upload:{<hash>}:<size>:<uuid>' committed
    redis-cli --scan --pattern 'redbarn:v1:ac:*'                   # cached actions
    redis-cli GET 'redbarn:v1:ac:{<hash>}:<size>:<instance>' | protoc --decode_raw
"""

from __future__ import annotations

from redbarn.digests import Digest
from redbarn.errors import NotFound

MANIFEST_PREFIX = b"redbarn-chunked:v1:"


def cas_key(digest: Digest) -> str:
    return f"redbarn:v1:cas:{{{digest.hash}}}:{digest.size_bytes}"


def cas_chunk_key(digest: Digest, index: int) -> str:
    return f"{cas_key(digest)}:c{index}"


def upload_key(digest: Digest, upload_id: str) -> str:
    return f"redbarn:v1:upload:{{{digest.hash}}}:{digest.size_bytes}:{upload_id}"


def upload_chunk_key(digest: Digest, upload_id: str, index: int) -> str:
    return f"{upload_key(digest, upload_id)}:c{index}"


def ac_key(instance_name: str, action_digest: Digest) -> str:
    return f"redbarn:v1:ac:{{{action_digest.hash}}}:{action_digest.size_bytes}:{instance_name}"


def manifest(chunk_size: int, count: int) -> bytes:
    return MANIFEST_PREFIX + f"{chunk_size}:{count}".encode()


def parse_manifest(digest: Digest, value: bytes) -> tuple[int, int]:
    """(chunk size, chunk count) of a manifest; a value of another shape is NotFound."""
    if not value.startswith(MANIFEST_PREFIX):
        raise NotFound(f"Blob {digest} not found: stored value has an unexpected format")
    size_text, _, count_text = value[len(MANIFEST_PREFIX) :].partition(b":")
    return int(size_text), int(count_text)
