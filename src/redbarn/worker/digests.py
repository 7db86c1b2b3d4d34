"""Digest helpers for the worker: hashing by REAPI digest function, keys, resource names.

Only the digest functions `hashlib` provides are supported; any other value in an
assignment fails the action with INVALID_ARGUMENT (bb_worker has no fallback either).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2

DigestFunction = re_pb2.DigestFunction

_HASHERS: dict[int, Callable[..., Any]] = {
    DigestFunction.SHA256: hashlib.sha256,
    DigestFunction.SHA1: hashlib.sha1,
    DigestFunction.MD5: hashlib.md5,
    DigestFunction.SHA384: hashlib.sha384,
    DigestFunction.SHA512: hashlib.sha512,
}
_HEX_LENGTHS = {
    32: DigestFunction.MD5,
    40: DigestFunction.SHA1,
    64: DigestFunction.SHA256,
    96: DigestFunction.SHA384,
    128: DigestFunction.SHA512,
}

READ_CHUNK = 1 << 20
_HEX_LENGTH = {f: h().digest_size * 2 for f, h in _HASHERS.items()}
_LOWER_HEX = re.compile(r"[0-9a-f]*")


def hasher(function: int) -> Callable[..., Any]:
    """The hashlib constructor for `function`; INVALID_ARGUMENT if unsupported."""
    try:
        return _HASHERS[function]
    except KeyError:
        name = (
            DigestFunction.Value.Name(function)
            if function in DigestFunction.Value.values()
            else str(function)
        )
        raise InvalidArgument(f"Unsupported digest function: {name}") from None


def function_name(function: int) -> str:
    return DigestFunction.Value.Name(function).lower()


def infer_function(digest: re_pb2.Digest) -> int:
    """Digest function from the hash length (for assignments that leave it UNKNOWN)."""
    return _HEX_LENGTHS.get(len(digest.hash), DigestFunction.UNKNOWN)


def key(digest: re_pb2.Digest) -> str:
    """`<hash>-<size>`, the form Buildbarn uses in messages."""
    return f"{digest.hash}-{digest.size_bytes}"


def of_bytes(data: bytes, function: int) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hasher(function)(data).hexdigest(), size_bytes=len(data))


def of_file(path: str, function: int) -> re_pb2.Digest:
    h = hasher(function)()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return re_pb2.Digest(hash=h.hexdigest(), size_bytes=size)


def validate(digest: re_pb2.Digest, function: int) -> None:
    """INVALID_ARGUMENT unless `digest` is well formed for `function` (bb-storage wording)."""
    expected = _HEX_LENGTH.get(function)
    if expected is None:
        hasher(function)  # raises
    h = digest.hash
    if len(h) != expected:
        raise InvalidArgument(
            f"Hash has length {len(h)}, while {expected} characters were expected"
        )
    if not _LOWER_HEX.fullmatch(h):
        raise InvalidArgument(f"Non-hexadecimal character in digest hash: {h}")
    if digest.size_bytes < 0:
        raise InvalidArgument(f"Invalid digest size: {digest.size_bytes} bytes")


def instance_name(prefix: str, suffix: str) -> str:
    """Full instance name: prefix and suffix joined by "/" when both are non-empty."""
    if prefix and suffix:
        return f"{prefix}/{suffix}"
    return prefix or suffix


def blob_path(function: int, digest: re_pb2.Digest) -> str:
    """`blobs/[<fn>/]<hash>/<size>`: the function appears only for non-legacy functions."""
    if function in _HASHERS:  # all legacy (inferable by hash length)
        return f"blobs/{digest.hash}/{digest.size_bytes}"
    return f"blobs/{function_name(function)}/{digest.hash}/{digest.size_bytes}"
