"""Digests, digest functions, instance names and ByteStream resource names.

Every servicer parses what a client sends through this module, so one request shape
gives one error wording everywhere. The wording is Buildbarn's
(bb-storage `pkg/digest`, reference §1.6):

- hash length:      "Hash has length 12, while 64 characters were expected"
- hash characters:  "Non-hexadecimal character in digest hash: U+0047 'G'"
- size:             "Invalid digest size: -1 bytes"
- absent digest:    "No digest provided"
- digest function:  "Unknown digest function" when neither the enum nor the hash
                    length names one.

Storage holds SHA256 only (the one function Capabilities advertises). Any other
function a client names, or that its hash length implies, is INVALID_ARGUMENT
naming the function.

Instance names (§1.6): no leading, trailing or doubled "/"; no component equal to
a reserved keyword. The Execution servicer validates with the same function.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import NamedTuple

from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import validate

SHA256 = re_pb2.DigestFunction.SHA256
UNKNOWN_FUNCTION = re_pb2.DigestFunction.UNKNOWN

# Hash length in hex characters -> the function Buildbarn infers from it.
_FUNCTION_BY_HASH_LENGTH = validate.FUNCTION_BY_HASH_LENGTH
SHA256_HEX_LENGTH = 64
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_HEX = re.compile(r"[0-9a-f]*")


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
        return f"blobs/{self.hash}/{self.size_bytes}"

    @property
    def is_empty(self) -> bool:
        """The empty blob, which REAPI says is always present and never uploaded."""
        return self.size_bytes == 0 and self.hash == EMPTY_SHA256

    def to_proto(self) -> re_pb2.Digest:
        return re_pb2.Digest(hash=self.hash, size_bytes=self.size_bytes)

    def __str__(self) -> str:
        return f"{self.hash}-{self.size_bytes}"


def function_name(function: int) -> str:
    try:
        return str(re_pb2.DigestFunction.Value.Name(function))
    except ValueError:
        return str(function)


def resolve_function(function: int, hash_length: int | None = None) -> int:
    """The digest function of a request: its enum value, else inferred from `hash_length`.

    Only SHA256 is returned; anything else raises InvalidArgument naming the function.
    """
    if function == UNKNOWN_FUNCTION:
        if hash_length is None:
            return SHA256
        if hash_length not in _FUNCTION_BY_HASH_LENGTH:
            raise InvalidArgument("Unknown digest function")
        function = _FUNCTION_BY_HASH_LENGTH[hash_length]
    if function != SHA256:
        if function not in re_pb2.DigestFunction.Value.values():
            raise InvalidArgument("Unknown digest function")
        raise InvalidArgument(
            f"Unsupported digest function {function_name(function)}: this server stores SHA256 only"
        )
    return SHA256


def parse_hash_and_size(hash_: str, size: int) -> Digest:
    """Validate a SHA256 hash and a size (bb-storage `function.go` checks, in its order)."""
    if len(hash_) != SHA256_HEX_LENGTH:
        raise InvalidArgument(
            f"Hash has length {len(hash_)}, while {SHA256_HEX_LENGTH} characters were expected"
        )
    if not _HEX.fullmatch(hash_):
        bad = next(c for c in hash_ if c not in "0123456789abcdef")
        raise InvalidArgument(f"Non-hexadecimal character in digest hash: U+{ord(bad):04X} {bad!r}")
    if size < 0:
        raise InvalidArgument(f"Invalid digest size: {size} bytes")
    return Digest(hash_, size)


def parse_digest(digest: re_pb2.Digest | None, function: int = UNKNOWN_FUNCTION) -> Digest:
    """Validate one digest message. `None` is "No digest provided"."""
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
    if len(data) != digest.size_bytes:
        raise InvalidArgument(
            f"Buffer is {len(data)} bytes in size, while {digest.size_bytes} bytes were expected"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest.hash:
        raise InvalidArgument(f"Buffer has checksum {actual}, while {digest.hash} was expected")


def check_hasher(digest: Digest, hasher: hashlib._Hash, size: int) -> None:
    """The streaming form of `check_data`: `hasher` has seen `size` bytes."""
    if size != digest.size_bytes:
        raise InvalidArgument(
            f"Buffer is {size} bytes in size, while {digest.size_bytes} bytes were expected"
        )
    actual = hasher.hexdigest()
    if actual != digest.hash:
        raise InvalidArgument(f"Buffer has checksum {actual}, while {digest.hash} was expected")


def validate_instance_name(name: str) -> str:
    """Return `name` if it is a valid instance name, else raise InvalidArgument (§1.6).

    One rule set for the whole project: `redbarn.queue.validate.instance_name`."""
    validate.instance_name(name)
    return name


# ---------------------------------------------------------------- ByteStream names


@dataclass(frozen=True)
class ResourceName:
    """A parsed ByteStream resource name.

    Reads:  `{instance}/blobs/{hash}/{size}`,
            `{instance}/compressed-blobs/{compressor}/{hash}/{size}`;
    writes: `{instance}/uploads/{uuid}/blobs/{hash}/{size}{/metadata}` and the
            `compressed-blobs/{compressor}/` form. An optional lowercase digest
            function component before the hash (`blobs/sha256/{hash}/{size}`) is
            accepted when it names SHA256. Only the `identity` compressor is served.
    """

    instance_name: str
    digest: Digest
    upload_id: str = ""


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


def _parse_blob_part(resource_name: str, kind: str, rest: list[str]) -> tuple[Digest, list[str]]:
    """Parse what follows `blobs` or `compressed-blobs`; return the digest and leftovers."""
    if kind == "compressed-blobs":
        if not rest:
            raise InvalidArgument(f'Invalid resource name "{resource_name}": no compressor')
        compressor, rest = rest[0], rest[1:]
        if compressor != "identity":
            raise InvalidArgument(
                f'Unsupported compressor "{compressor}" in resource name "{resource_name}": '
                "this server supports identity only"
            )
    if len(rest) >= 3 and not rest[1].isdigit():
        # `{digest_function}/{hash}/{size}`: REAPI names the function for functions
        # not inferable from the hash length. Only "sha256" is stored here.
        if rest[0] != "sha256":
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
    return parse_hash_and_size(hash_, size), rest[2:]


def parse_read_resource(resource_name: str) -> ResourceName:
    instance, kind, rest = _split_at_keyword(resource_name, ("blobs", "compressed-blobs"))
    digest, extra = _parse_blob_part(resource_name, kind, rest)
    if extra:
        raise InvalidArgument(
            f'Invalid resource name "{resource_name}": unexpected "{"/".join(extra)}" after the size'
        )
    return ResourceName(instance, digest)


def parse_write_resource(resource_name: str) -> ResourceName:
    instance, _, rest = _split_at_keyword(resource_name, ("uploads",))
    if len(rest) < 2 or not rest[0] or rest[1] not in ("blobs", "compressed-blobs"):
        raise InvalidArgument(
            f'Invalid resource name "{resource_name}": expected '
            "{instance_name}/uploads/{uuid}/blobs/{hash}/{size}"
        )
    digest, _metadata = _parse_blob_part(resource_name, rest[1], rest[2:])
    return ResourceName(instance, digest, upload_id=rest[0])


def read_resource_name(instance_name: str, digest: Digest) -> str:
    prefix = f"{instance_name}/" if instance_name else ""
    return f"{prefix}blobs/{digest.hash}/{digest.size_bytes}"


def write_resource_name(instance_name: str, upload_id: str, digest: Digest) -> str:
    prefix = f"{instance_name}/" if instance_name else ""
    return f"{prefix}uploads/{upload_id}/blobs/{digest.hash}/{digest.size_bytes}"
