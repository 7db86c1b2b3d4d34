"""Pure request checks with Buildbarn's wording, shared by the core and the frontend."""

from __future__ import annotations

import itertools

from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2

RESERVED = (
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
)

_DF = re_pb2.DigestFunction
HASH_LENGTHS: dict[int, int] = {
    _DF.MD5: 32,
    _DF.SHA1: 40,
    _DF.SHA256: 64,
    _DF.SHA384: 96,
    _DF.SHA512: 128,
    _DF.SHA256TREE: 64,
    _DF.BLAKE3: 64,
    _DF.GITSHA1: 40,
}
FUNCTION_BY_HASH_LENGTH: dict[int, int] = {
    32: _DF.MD5,
    40: _DF.SHA1,
    64: _DF.SHA256,
    96: _DF.SHA384,
    128: _DF.SHA512,
}


def instance_name(name: str) -> None:
    """Raise InvalidArgument `Invalid instance name "<n>": ...` (bb-storage instance_name.go)."""
    if not name:
        return
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise InvalidArgument(
            f'Invalid instance name "{name}": Instance name contains redundant slashes'
        )
    for component in name.split("/"):
        if component in RESERVED:
            raise InvalidArgument(
                f'Invalid instance name "{name}": Instance name contains reserved keyword "{component}"'
            )


def platform(p: re_pb2.Platform) -> None:
    """Properties must be sorted by (name, value) with no exact duplicates (R6)."""
    props = list(p.properties)
    for a, b in itertools.pairwise(props):
        if (a.name, a.value) >= (b.name, b.value):
            raise InvalidArgument(
                "Platform properties are not lexicographically sorted, as property "
                f"{_prop(b)} should have been placed before property {_prop(a)}"
            )


def _prop(p: re_pb2.Platform.Property) -> str:
    return f'name:"{p.name}" value:"{p.value}"'


def digest_function(value: int, hash_hex: str) -> int:
    """Resolve UNKNOWN by hash length (R3); raise `Unknown digest function`."""
    if value != _DF.UNKNOWN:
        if value not in HASH_LENGTHS:
            raise InvalidArgument("Unknown digest function")
        return value
    found = FUNCTION_BY_HASH_LENGTH.get(len(hash_hex))
    if found is None:
        raise InvalidArgument("Unknown digest function")
    return found


def digest(d: re_pb2.Digest | None, fn: int, what: str = "action") -> None:
    """Raise `Failed to extract digest for <what>: <reason>` (R4)."""
    reason = digest_problem(d, fn)
    if reason:
        raise InvalidArgument(f"Failed to extract digest for {what}: {reason}")


def digest_problem(d: re_pb2.Digest | None, fn: int) -> str | None:
    if d is None:
        return "No digest provided"
    want = HASH_LENGTHS.get(fn, 64)
    if len(d.hash) != want:
        return f"Hash has length {len(d.hash)}, while {want} characters were expected"
    for ch in d.hash:
        if ch not in "0123456789abcdef":
            return f"Non-hexadecimal character in digest hash: {ch!r}"
    if d.size_bytes < 0:
        return f"Invalid digest size: {d.size_bytes} bytes"
    return None


def _fmt_duration(seconds: float) -> str:
    """Go time.Duration.String() for whole and fractional seconds: 1h0m0s, 30m0s, 1.5s."""
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    s = abs(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    sec_text = f"{sec:.9f}".rstrip("0").rstrip(".")
    out = (f"{int(h)}h" if h else "") + (f"{int(m)}m" if h or m else "") + f"{sec_text}s"
    return ("-" if neg else "") + out


def action_timeout(action: re_pb2.Action, *, default: float, maximum: float) -> float:
    """The action's timeout in seconds, filled with the default (R20)."""
    if not action.HasField("timeout"):
        return default
    t = action.timeout
    if (t.seconds > 0 and t.nanos < 0) or (t.seconds < 0 and t.nanos > 0) or abs(t.nanos) >= 10**9:
        raise InvalidArgument(
            "Failed to route action: Failed to analyze initial size class: Invalid execution timeout: "
            f"duration ({t.seconds}s, {t.nanos}ns) has seconds and nanos with different signs"
        )
    value = t.seconds + t.nanos / 1e9
    if value < 0 or value > maximum:
        raise InvalidArgument(
            "Failed to route action: Failed to analyze initial size class: Execution timeout of "
            f"{_fmt_duration(value)} is outside permitted range [0s, {_fmt_duration(maximum)}]"
        )
    return value
