"""Digests, digest functions, instance names, resource names and worker ids: one rule set.

The frontend, the scheduler core and the worker all check what they are sent here,
so one mistake gets one wording wherever it is caught. The wording is Buildbarn's
(bb-storage `pkg/digest`, reference §1.6); every error is INVALID_ARGUMENT:

- absent digest:    "No digest provided"
- hash length:      "Hash has length 12, while 64 characters were expected"
- hash characters:  "Non-hexadecimal character in digest hash: U+0047 'G'"
- size:             "Invalid digest size: -1 bytes"
- digest function:  "Unknown digest function" when neither the enum nor the hash
                    length names one;
                    "Unsupported digest function BLAKE3: this server stores SHA256 only"
                    (the frontend's storage policy, `stored_function`) and
                    "Unsupported digest function BLAKE3: this worker hashes MD5, SHA1,
                    SHA256, SHA384 and SHA512 only" (`hasher`) for a named function
                    the process cannot serve.
- instance name:    'Invalid instance name "a//b": Instance name contains redundant
                    slashes' and '... contains reserved keyword "blobs"'.

Digests travel as `re_pb2.Digest` messages or as the hashable `Digest` value; the
functions here take either (anything with `hash` and `size_bytes`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2

DigestFunction = re_pb2.DigestFunction
UNKNOWN_FUNCTION = DigestFunction.UNKNOWN
SHA256 = DigestFunction.SHA256

# Hex length of each function's hash (REAPI's DigestFunction comments).
HASH_LENGTHS: dict[int, int] = {
    DigestFunction.MD5: 32,
    DigestFunction.SHA1: 40,
    DigestFunction.SHA256: 64,
    DigestFunction.SHA384: 96,
    DigestFunction.SHA512: 128,
    DigestFunction.SHA256TREE: 64,
    DigestFunction.BLAKE3: 64,
    DigestFunction.GITSHA1: 40,
}
# The functions a hash length implies when a request leaves the function UNKNOWN
# (bb-storage `bare_function.go`). These are also the functions a resource name
# leaves out: `blobs/<hash>/<size>` rather than `blobs/<function>/<hash>/<size>`.
FUNCTION_BY_HASH_LENGTH: dict[int, int] = {
    32: DigestFunction.MD5,
    40: DigestFunction.SHA1,
    64: DigestFunction.SHA256,
    96: DigestFunction.SHA384,
    128: DigestFunction.SHA512,
}
# The functions this code can hash, and so serve, with their hashlib constructors.
HASHERS: dict[int, Callable[..., Any]] = {
    DigestFunction.MD5: hashlib.md5,
    DigestFunction.SHA1: hashlib.sha1,
    DigestFunction.SHA256: hashlib.sha256,
    DigestFunction.SHA384: hashlib.sha384,
    DigestFunction.SHA512: hashlib.sha512,
}
SHA256_HEX_LENGTH = HASH_LENGTHS[SHA256]
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
READ_CHUNK = 1 << 20

_HEX = re.compile(r"[0-9a-f]*")


class HashAndSize(Protocol):
    """A digest in either form: an `re_pb2.Digest` message or a `Digest` value."""

    @property
    def hash(self) -> str: ...

    @property
    def size_bytes(self) -> int: ...


class Digest(NamedTuple):
    """A validated SHA256 digest: lowercase hex `hash` and `size_bytes` >= 0. Hashable."""

    hash: str
    size_bytes: int

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest(), len(data))

    @property
    def subject(self) -> str:
        """The PreconditionFailure subject REAPI prescribes: "blobs/<hash>/<size>"."""
        return blob_path(self)

    @property
    def is_empty(self) -> bool:
        """The empty blob, which REAPI says is always present and never uploaded."""
        return self.size_bytes == 0 and self.hash == EMPTY_SHA256

    def to_proto(self) -> re_pb2.Digest:
        return re_pb2.Digest(hash=self.hash, size_bytes=self.size_bytes)

    def __str__(self) -> str:
        return key(self)


def key(digest: HashAndSize) -> str:
    """`<hash>-<size>`, the form Buildbarn uses in messages."""
    return f"{digest.hash}-{digest.size_bytes}"


# ---------------------------------------------------------------- digest functions


def function_name(function: int) -> str:
    """The enum name (`SHA256`), or the number for a value the enum does not know."""
    try:
        return str(DigestFunction.Value.Name(function))
    except ValueError:
        return str(function)


def function_component(function: int) -> str:
    """The lowercase name a resource name carries (`blobs/sha256tree/...`)."""
    return function_name(function).lower()


def infer_function(hash_length: int) -> int:
    """The function a hash length implies, UNKNOWN when it implies none."""
    return FUNCTION_BY_HASH_LENGTH.get(hash_length, UNKNOWN_FUNCTION)


def function_of(function: int, hash_length: int) -> int:
    """Buildbarn's `GetDigestFunction`: `function`, or when UNKNOWN the one `hash_length`
    implies; "Unknown digest function" when neither names one."""
    if function == UNKNOWN_FUNCTION:
        function = infer_function(hash_length)
    if function == UNKNOWN_FUNCTION or function not in DigestFunction.Value.values():
        raise InvalidArgument("Unknown digest function")
    return function


def _unsupported(function: int, what_is_served: str) -> InvalidArgument:
    return InvalidArgument(
        f"Unsupported digest function {function_name(function)}: {what_is_served}"
    )


def stored_function(function: int) -> int:
    """The frontend's storage policy: SHA256, the one function Capabilities advertises."""
    if function != SHA256:
        raise _unsupported(function, "this server stores SHA256 only")
    return SHA256


def resolve_function(function: int, hash_length: int | None = None) -> int:
    """The digest function of a frontend request: its enum value, else inferred from
    `hash_length` (SHA256 when the request has no digest to infer it from).

    Only SHA256 is returned (`stored_function`); anything else raises InvalidArgument.
    """
    if function == UNKNOWN_FUNCTION and hash_length is None:
        return SHA256
    return stored_function(function_of(function, hash_length or 0))


def hasher(function: int) -> Callable[..., Any]:
    """The hashlib constructor for `function`; INVALID_ARGUMENT if it has none here."""
    constructor = HASHERS.get(function)
    if constructor is None:
        function_of(function, 0)  # "Unknown digest function" for UNKNOWN and unknown values
        raise _unsupported(function, "this worker hashes MD5, SHA1, SHA256, SHA384 and SHA512 only")
    return constructor


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


# ---------------------------------------------------------------- digest validation


def validate(digest: HashAndSize, function: int = SHA256) -> None:
    """INVALID_ARGUMENT unless `digest` is well formed for `function`, a function `hasher`
    knows (bb-storage `function.go` checks, in its order)."""
    hasher(function)
    expected, hash_ = HASH_LENGTHS[function], digest.hash
    if len(hash_) != expected:
        raise InvalidArgument(
            f"Hash has length {len(hash_)}, while {expected} characters were expected"
        )
    if not _HEX.fullmatch(hash_):
        bad = next(c for c in hash_ if c not in "0123456789abcdef")
        raise InvalidArgument(f"Non-hexadecimal character in digest hash: U+{ord(bad):04X} {bad!r}")
    if digest.size_bytes < 0:
        raise InvalidArgument(f"Invalid digest size: {digest.size_bytes} bytes")


def parse_hash_and_size(hash_: str, size: int) -> Digest:
    """Validate a SHA256 hash and a size into a `Digest`."""
    digest = Digest(hash_, size)
    validate(digest, SHA256)
    return digest


def parse_digest(digest: re_pb2.Digest | None, function: int = UNKNOWN_FUNCTION) -> Digest:
    """Validate one digest message of a frontend request. `None` is "No digest provided"."""
    if digest is None:
        raise InvalidArgument("No digest provided")
    resolve_function(function, len(digest.hash))
    return parse_hash_and_size(digest.hash, digest.size_bytes)


def parse_field(message: object, field: str, function: int = UNKNOWN_FUNCTION) -> Digest:
    """Validate a singular digest field, "No digest provided" when it is unset."""
    present = message.HasField(field)  # type: ignore[attr-defined]
    return parse_digest(getattr(message, field) if present else None, function)


def parse_digests(digests: object, function: int = UNKNOWN_FUNCTION) -> list[Digest]:
    """Validate a repeated digest field (and an explicit function even with no digests)."""
    if function != UNKNOWN_FUNCTION:
        resolve_function(function)
    return [parse_digest(d, function) for d in digests]  # type: ignore[attr-defined]


def check_data(digest: Digest, data: bytes) -> None:
    """Raise InvalidArgument unless `data` has `digest` (Buildbarn's wording)."""
    check_hasher(digest, hashlib.sha256(data), len(data))


def check_hasher(digest: Digest, hasher: hashlib._Hash, size: int) -> None:
    """The streaming form of `check_data`: `hasher` has seen `size` bytes."""
    if size != digest.size_bytes:
        raise InvalidArgument(
            f"Buffer is {size} bytes in size, while {digest.size_bytes} bytes were expected"
        )
    actual = hasher.hexdigest()
    if actual != digest.hash:
        raise InvalidArgument(f"Buffer has checksum {actual}, while {digest.hash} was expected")


# ---------------------------------------------------------------- instance names

RESERVED = (
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
)


def validate_instance_name(name: str) -> str:
    """Return `name` if it is a valid instance name, else raise InvalidArgument
    `Invalid instance name "<n>": ...` (bb-storage `instance_name.go`)."""
    if not name:
        return name
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise InvalidArgument(
            f'Invalid instance name "{name}": Instance name contains redundant slashes'
        )
    for component in name.split("/"):
        if component in RESERVED:
            raise InvalidArgument(
                f'Invalid instance name "{name}": Instance name contains reserved keyword "{component}"'
            )
    return name


def join_instance_name(prefix: str, suffix: str) -> str:
    """The full instance name a worker uses: prefix and suffix joined by "/" when both
    are non-empty (Buildbarn R19)."""
    if prefix and suffix:
        return f"{prefix}/{suffix}"
    return prefix or suffix


# ---------------------------------------------------------------- ByteStream names


@dataclass(frozen=True)
class ResourceName:
    """A parsed ByteStream resource name.

    Reads:  `{instance}/blobs/{hash}/{size}`,
            `{instance}/compressed-blobs/{compressor}/{hash}/{size}`;
    writes: `{instance}/uploads/{uuid}/blobs/{hash}/{size}{/metadata}` and the
            `compressed-blobs/{compressor}/` form. An optional lowercase digest
            function component before the hash (`blobs/sha256/{hash}/{size}`) is
            accepted when it names SHA256. The compressors served are `identity` and
            `zstd` (`SUPPORTED_COMPRESSORS`); `compressor` is the `Compressor.Value`.
    """

    instance_name: str
    digest: Digest
    upload_id: str = ""
    compressor: int = re_pb2.Compressor.IDENTITY


# The compressors a resource name may carry, by their lowercase REAPI names.
SUPPORTED_COMPRESSORS: dict[str, int] = {
    "identity": re_pb2.Compressor.IDENTITY,
    "zstd": re_pb2.Compressor.ZSTD,
}


def _split_at_keyword(resource_name: str, keywords: tuple[str, ...]) -> tuple[str, str, list[str]]:
    parts = resource_name.split("/")
    for i, part in enumerate(parts):
        if part in keywords:
            instance = "/".join(parts[:i])
            validate_instance_name(instance)
            return instance, part, parts[i + 1 :]
    raise InvalidArgument(
        f'Invalid resource name "{resource_name}": expected '
        + ("{instance_name}/uploads/{uuid}/blobs/{hash}/{size}" if "uploads" in keywords
           else "{instance_name}/blobs/{hash}/{size}")
    )  # fmt: skip


def _parse_blob_part(
    resource_name: str, kind: str, rest: list[str]
) -> tuple[Digest, int, list[str]]:
    """Parse what follows `blobs` or `compressed-blobs`; return the digest, the
    compressor and leftovers."""
    compressor: int = re_pb2.Compressor.IDENTITY
    if kind == "compressed-blobs":
        if not rest:
            raise InvalidArgument(f'Invalid resource name "{resource_name}": no compressor')
        name, rest = rest[0], rest[1:]
        if name not in SUPPORTED_COMPRESSORS:
            raise InvalidArgument(
                f'Unsupported compressor "{name}" in resource name "{resource_name}": '
                "this server supports identity and zstd only"
            )
        compressor = SUPPORTED_COMPRESSORS[name]
    if len(rest) >= 3 and not rest[1].isdigit():
        # `{digest_function}/{hash}/{size}`: REAPI names the function for functions
        # not inferable from the hash length. Only "sha256" is stored here.
        if rest[0] != function_component(SHA256):
            raise InvalidArgument(
                f'Unsupported digest function "{rest[0]}" in resource name "{resource_name}": '
                "this server stores SHA256 only"
            )
        rest = rest[1:]
    if len(rest) < 2:
        raise InvalidArgument(
            f'Invalid resource name "{resource_name}": expected a hash and a size after "{kind}"'
        )
    hash_, size_text = rest[0], rest[1]
    try:
        size = int(size_text)
    except ValueError:
        raise InvalidArgument(
            f'Invalid resource name "{resource_name}": invalid digest size "{size_text}"'
        ) from None
    resolve_function(UNKNOWN_FUNCTION, len(hash_))
    return parse_hash_and_size(hash_, size), compressor, rest[2:]


def parse_read_resource(resource_name: str) -> ResourceName:
    instance, kind, rest = _split_at_keyword(resource_name, ("blobs", "compressed-blobs"))
    digest, compressor, extra = _parse_blob_part(resource_name, kind, rest)
    if extra:
        raise InvalidArgument(
            f'Invalid resource name "{resource_name}": unexpected "{"/".join(extra)}" after the size'
        )
    return ResourceName(instance, digest, compressor=compressor)


def parse_write_resource(resource_name: str) -> ResourceName:
    instance, _, rest = _split_at_keyword(resource_name, ("uploads",))
    if len(rest) < 2 or not rest[0] or rest[1] not in ("blobs", "compressed-blobs"):
        raise InvalidArgument(
            f'Invalid resource name "{resource_name}": expected '
            "{instance_name}/uploads/{uuid}/blobs/{hash}/{size}"
        )
    digest, compressor, _metadata = _parse_blob_part(resource_name, rest[1], rest[2:])
    return ResourceName(instance, digest, upload_id=rest[0], compressor=compressor)


def blob_path(digest: HashAndSize, function: int = SHA256) -> str:
    """`blobs/[<function>/]<hash>/<size>`: the function appears only when the hash
    length does not imply it."""
    if function in FUNCTION_BY_HASH_LENGTH.values():
        return f"blobs/{digest.hash}/{digest.size_bytes}"
    return f"blobs/{function_component(function)}/{digest.hash}/{digest.size_bytes}"


def read_resource_name(instance_name: str, digest: HashAndSize, function: int = SHA256) -> str:
    prefix = f"{instance_name}/" if instance_name else ""
    return prefix + blob_path(digest, function)


def write_resource_name(
    instance_name: str, upload_id: str, digest: HashAndSize, function: int = SHA256
) -> str:
    prefix = f"{instance_name}/" if instance_name else ""
    return f"{prefix}uploads/{upload_id}/" + blob_path(digest, function)


# ---------------------------------------------------------------- worker ids


def go_json(value: object) -> str:
    """Go's json.Marshal form: compact, sorted keys, <>& escaped, UTF-8 kept."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def worker_json(worker_id: Mapping[str, str]) -> str:
    """The worker key JSON (`{"hostname":"w1","thread":"3"}`), as in Buildbarn's messages
    and as a worker names itself (`ExecutedActionMetadata.worker`)."""
    return go_json(dict(worker_id))
