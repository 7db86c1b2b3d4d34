"""The keys of the Redis CAS and Action Cache (`redis.RedisBlobStore`, `RedisActionCache`).

Key catalogue (`H` = SHA256 hex, `S` = size in bytes, `U` = client upload id, `C` = chunk
size, 1 MiB by default)

| key | type | holds | written by | lifetime |
|---|---|---|---|---|
| `redbarn:v1:cas:{H}:S` | STRING | the blob itself, when S <= C | BatchUpdateBlobs, Write commit | CAS TTL, refreshed on every find/read/write |
| `redbarn:v1:cas:{H}:S` | HASH | fields `c0`, `c1`, ... `c<n-1>`: the blob's chunks (C bytes each, the last one the rest), when S > C | same (a Write commit RENAMEs its upload HASH here) | same |
| `redbarn:v1:upload:{H}:S:U` | HASH | `committed` = bytes staged by ByteStream Write `U`, and fields `c<N>`: whole chunks staged so far, plus the chunk in progress when a stream closed early | Write | upload TTL (default 1 h), refreshed per staged chunk; renamed or deleted on commit |
| `redbarn:v1:ac:{H}:S:<instance>` | STRING | serialized `ActionResult` for action digest H-S | UpdateActionResult, workers | AC TTL, refreshed on every get |

One key per blob, whatever its size: FindMissingBlobs, reads and the enqueue check
touch one key per digest, never `S / C` of them, so a request's Redis work is bounded
by its digest count whatever sizes it declares. Redis's LRU evicts a blob whole (the
CAS Redis runs `allkeys-lru`), and an upload in progress is one key with the upload TTL.

A blob counts as stored only when its key holds exactly S bytes: a STRING of length S,
or a HASH of n fields where `c0` is C' bytes, (n-1)*C' < S <= n*C' and `c<n-1>` holds
the rest (C' is whatever chunk size wrote it, so frontends with different `--chunk-size`
read each other's blobs). Anything else (a HASH lacking a chunk, a STRING of another
length such as a v1 manifest `redbarn-chunked:v1:...`) reads as missing everywhere and
is overwritten by the next upload. v1's separate `...:c<N>` chunk keys are never read;
they expire with their TTL.

Batches go through two small scripts beside this module, one round trip and far less
client CPU than redis-py pipelines: `probe_blobs.lua` (FindMissingBlobs, BatchReadBlobs
and the first step of every read: the rule above per key, PEXPIRE of those present,
2000 keys per call) and `put_blobs.lua` (BatchUpdateBlobs: SET, or HSET of the chunks,
with the TTL). Their keys span hash slots, so a Redis Cluster client gets the same
commands as pipelines. Uploads use `stage_upload.lua` and `commit_upload.lua`, which
touch one blob's keys (one hash slot, `{H}`) and so run on cluster clients too.

Inspecting with redis-cli:

    redis-cli --scan --pattern 'redbarn:v1:cas:*' | head           # some blobs
    redis-cli TYPE 'redbarn:v1:cas:{<hash>}:<size>'                # string, or hash (chunked)
    redis-cli STRLEN 'redbarn:v1:cas:{<hash>}:<size>'              # a small blob's size
    redis-cli HLEN 'redbarn:v1:cas:{<hash>}:<size>'                # a chunked blob's chunk count
    redis-cli HSTRLEN 'redbarn:v1:cas:{<hash>}:<size>' c0          # its chunk size
    redis-cli HGET 'redbarn:v1:cas:{<hash>}:<size>' c0 | head -c 64 # its first bytes
    redis-cli TTL 'redbarn:v1:cas:{<hash>}:<size>'                 # seconds left
    redis-cli MEMORY USAGE 'redbarn:v1:cas:{<hash>}:<size>'        # bytes it costs Redis
    redis-cli --scan --pattern 'redbarn:v1:upload:*'               # uploads in progress
    redis-cli HGET 'redbarn:v1:upload:{<hash>}:<size>:<uuid>' committed
    redis-cli --scan --pattern 'redbarn:v1:ac:*'                   # cached actions
    redis-cli GET 'redbarn:v1:ac:{<hash>}:<size>:<instance>' | protoc --decode_raw
    # after upgrading from the chunk-key layout: drop its chunk keys now, not at expiry
    redis-cli --scan --pattern 'redbarn:v1:*:c[0-9]*' | grep -E ':c[0-9]+$' |
        xargs -r -n 500 redis-cli UNLINK
"""

from __future__ import annotations

from redbarn.digests import Digest

COMMITTED_FIELD = "committed"  # bytes staged so far, in an upload HASH


def cas_key(digest: Digest) -> str:
    return f"redbarn:v1:cas:{{{digest.hash}}}:{digest.size_bytes}"


def chunk_field(index: int) -> str:
    """The HASH field holding chunk `index` (0-based) of a chunked blob or an upload."""
    return f"c{index}"


def upload_key(digest: Digest, upload_id: str) -> str:
    return f"redbarn:v1:upload:{{{digest.hash}}}:{digest.size_bytes}:{upload_id}"


def ac_key(instance_name: str, action_digest: Digest) -> str:
    return f"redbarn:v1:ac:{{{action_digest.hash}}}:{action_digest.size_bytes}:{instance_name}"
