"""Encodings shared by the Python side and the Lua scripts.

Lua compares only plain fields: records are strings of fields joined by \\x1f, sorted-set
members are fixed-width text. Protobuf payloads are opaque to Lua. Everything that
leaks into messages or sort orders uses Buildbarn's canonical forms (reference §1.6).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from redbarn.digests import go_json as go_json
from redbarn.digests import worker_json as worker_json
from redbarn.proto import remote_execution_pb2 as re_pb2

SEP = "\x1f"
TOKEN_SEP = "\x1e"
PRIORITY_OFFSET = 2**31


def platform_json(platform: re_pb2.Platform | None) -> str:
    """golang/protobuf v1 jsonpb form: `{}` or `{"properties":[{"name":..,"value":..}]}`."""
    if platform is None or not platform.properties:
        return "{}"
    props = []
    for p in platform.properties:
        entry: dict[str, str] = {}
        if p.name:
            entry["name"] = p.name
        if p.value:
            entry["value"] = p.value
        props.append(entry)
    return json.dumps({"properties": props}, separators=(",", ":"), ensure_ascii=False)


def platform_from_json(text: str) -> re_pb2.Platform:
    data = json.loads(text)
    return re_pb2.Platform(
        properties=[
            re_pb2.Platform.Property(name=p.get("name", ""), value=p.get("value", ""))
            for p in data.get("properties", [])
        ]
    )


def tokens(pairs: Mapping[str, str]) -> str:
    """Worker-id pairs (or a drain pattern) as "\\x1e<json pair>\\x1e..." for Lua subset tests."""
    if not pairs:
        return TOKEN_SEP
    items = [json.dumps([k, v], separators=(",", ":")) for k, v in sorted(pairs.items())]
    return TOKEN_SEP + TOKEN_SEP.join(items) + TOKEN_SEP


def priority_field(priority: int) -> str:
    return f"{priority + PRIORITY_OFFSET:010d}"


def priority_from_field(field: str) -> int:
    return int(field[:10]) - PRIORITY_OFFSET


def dedup_key(digest_function: int, digest: re_pb2.Digest, instance_name: str) -> str:
    """In-flight dedup key: the internal digest identity, hashed to a fixed short field."""
    identity = f"{digest_function}-{digest.hash}-{digest.size_bytes}-{instance_name}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def digest_from_field(field: str) -> re_pb2.Digest:
    h, _, size = field.rpartition("-")
    return re_pb2.Digest(hash=h, size_bytes=int(size or 0))


def ms_timestamp(ms: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    set_ms_timestamp(t, ms)
    return t


def set_ms_timestamp(field: timestamp_pb2.Timestamp, ms: int) -> None:
    """Milliseconds since the epoch into a Timestamp field in place (no message built and
    copied: this runs for every Synchronize reply and stream message)."""
    field.seconds, field.nanos = ms // 1000, (ms % 1000) * 1_000_000


# Invocation paths -------------------------------------------------------------------

CORRELATED = "c"
TOOL = "t"


def path_element(kind: str, invocation_id: str) -> str:
    return kind + quote(invocation_id, safe="")


def invocation_path(elements: Sequence[tuple[str, str]]) -> str:
    """ "" for the root, else "/<el>/<el>" from (kind, id) pairs, root first."""
    return "".join("/" + path_element(kind, iid) for kind, iid in elements)


def parse_invocation_path(path: str) -> list[tuple[str, str]]:
    if not path:
        return []
    return [(el[:1], unquote(el[1:])) for el in path.split("/")[1:]]


def request_metadata_path(
    md: re_pb2.RequestMetadata | None, *, levels: Sequence[str]
) -> list[tuple[str, str]]:
    """Buildbarn's invocation key extractors, outermost first: each level ("c" or "t")
    takes correlated_invocations_id or tool_invocation_id ("" when the client sent none)."""
    fields = {CORRELATED: "correlated_invocations_id", TOOL: "tool_invocation_id"}
    return [(kind, getattr(md, fields[kind]) if md else "") for kind in levels]


# Results ----------------------------------------------------------------------------


def worker_result(response: re_pb2.ExecuteResponse) -> bytes:
    """A worker's (or KillOperations') ExecuteResponse as a stored result."""
    return b"R" + response.SerializeToString()


def decode_result(raw: bytes) -> re_pb2.ExecuteResponse:
    """A stored result: "R"+ExecuteResponse, or "E<code>\\x1f<message>" written by Lua."""
    if raw[:1] == b"R":
        return re_pb2.ExecuteResponse.FromString(raw[1:])
    if raw[:1] == b"E":
        code, _, message = raw[1:].partition(SEP.encode())
        return re_pb2.ExecuteResponse(
            status=status_pb2.Status(code=int(code), message=message.decode("utf-8", "replace"))
        )
    return re_pb2.ExecuteResponse()


def response_failed(response: re_pb2.ExecuteResponse) -> bool:
    """Buildbarn's failure test for the fallback analyzer: non-OK status or exit code."""
    return response.status.code != 0 or response.result.exit_code != 0


# Records (for reads; Lua writes them) ------------------------------------------------


# TaskRecord.rehands once the worker reported progress on its assignment (_lib.lua).
STARTED = -1


@dataclass(frozen=True)
class TaskRecord:
    stage: str  # "q" queued, "x" executing, "d" done
    size_class: int
    epoch: int
    attempts: int
    rehands: int  # re-hands before the first progress report, or STARTED
    queued_ms: int
    digest: str
    digest_function: int
    dedup: str
    worker: str
    fallback: bool
    ops: tuple[str, ...]

    @classmethod
    def parse(cls, raw: bytes) -> TaskRecord:
        f = raw.decode().split(SEP)
        return cls(
            stage=f[0],
            size_class=int(f[1]),
            epoch=int(f[2]),
            attempts=int(f[3]),
            rehands=int(f[4]),
            queued_ms=int(f[5]),
            digest=f[6],
            digest_function=int(f[7] or 0),
            dedup=f[8],
            worker=f[9],
            fallback=f[10] == "1",
            ops=tuple(f[11].split()),
        )


@dataclass(frozen=True)
class OpRecord:
    tid: str
    priority: int
    seq: int
    path: str
    fids: tuple[str, ...]
    target_id: str = ""  # the request's RequestMetadata.target_id

    @classmethod
    def parse(cls, raw: bytes) -> OpRecord:
        f = raw.decode().split(SEP)
        return cls(
            tid=f[0],
            priority=priority_from_field(f[1]),
            seq=int(f[1][10:]),
            path=f[2],
            fids=tuple(f[3].split()) if len(f) > 3 else (),
            target_id=f[4] if len(f) > 4 else "",
        )


@dataclass(frozen=True)
class WorkerRecord:
    tid: str
    epoch: int
    holder: str
    terminating: bool
    # The invocation path of the task it last completed itself ("" = the root; R35).
    last_invocation: str = ""

    @classmethod
    def parse(cls, raw: bytes) -> WorkerRecord:
        f = raw.decode().split(SEP)
        return cls(
            tid=f[0],
            epoch=int(f[1]),
            holder=f[2],
            terminating=f[3] == "1",
            last_invocation=f[5] if len(f) > 5 else "",
        )
