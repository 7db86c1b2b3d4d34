"""The frontend's use of `redbarn.digests`: ByteStream resource names, instance names,
the SHA256-only storage policy (no server). The shared rules: tests/test_digests.py."""

from __future__ import annotations

import pytest

from redbarn.digests import (
    Digest,
    ResourceName,
    parse_digest,
    parse_read_resource,
    parse_write_resource,
    resolve_function,
    validate_instance_name,
)
from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2

H = "ab" * 32
ZSTD = re_pb2.Compressor.ZSTD


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        (f"blobs/{H}/5", ResourceName("", Digest(H, 5))),
        (f"a/b/blobs/{H}/5", ResourceName("a/b", Digest(H, 5))),
        (f"x/compressed-blobs/identity/{H}/0", ResourceName("x", Digest(H, 0))),
        (f"blobs/sha256/{H}/7", ResourceName("", Digest(H, 7))),
        (f"x/compressed-blobs/zstd/{H}/9", ResourceName("x", Digest(H, 9), compressor=ZSTD)),
        (f"compressed-blobs/zstd/sha256/{H}/9", ResourceName("", Digest(H, 9), compressor=ZSTD)),
    ],
)
def test_read_names(name: str, parsed: ResourceName) -> None:
    assert parse_read_resource(name) == parsed


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        (f"uploads/u-1/blobs/{H}/5", ResourceName("", Digest(H, 5), "u-1")),
        (f"i/uploads/u/blobs/{H}/5/meta/data", ResourceName("i", Digest(H, 5), "u")),
        (f"i/uploads/u/compressed-blobs/identity/{H}/5", ResourceName("i", Digest(H, 5), "u")),
        (f"uploads/u/compressed-blobs/zstd/{H}/5/m", ResourceName("", Digest(H, 5), "u", ZSTD)),
    ],
)
def test_write_names(name: str, parsed: ResourceName) -> None:
    assert parse_write_resource(name) == parsed


@pytest.mark.parametrize(
    "name",
    [f"blobs/{H}/5", f"uploads/blobs/{H}/5", f"uploads//blobs/{H}/5", f"uploads/u/other/{H}/5"],
)
def test_bad_write_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_write_resource(name)


@pytest.mark.parametrize("compressor", ["deflate", "brotli", "lz4", "Zstd", ""])
def test_unsupported_compressors_are_named(compressor: str) -> None:
    for name in (
        f"compressed-blobs/{compressor}/{H}/5",
        f"uploads/u/compressed-blobs/{compressor}/{H}/5",
    ):
        parse = parse_write_resource if name.startswith("uploads") else parse_read_resource
        with pytest.raises(InvalidArgument) as info:
            parse(name)
        assert str(info.value) == (
            f'Unsupported compressor "{compressor}" in resource name "{name}": '
            "this server supports identity and zstd only"
        )


def test_instance_names() -> None:
    assert validate_instance_name("") == ""
    assert validate_instance_name("a/b-c/d") == "a/b-c/d"
    for bad in ["a/", "/a", "a//b", "operations", "x/actionResults/y"]:
        with pytest.raises(InvalidArgument):
            validate_instance_name(bad)


def test_function_resolution() -> None:
    assert resolve_function(re_pb2.DigestFunction.UNKNOWN, 64) == re_pb2.DigestFunction.SHA256
    for length, name in [(32, "MD5"), (40, "SHA1"), (96, "SHA384"), (128, "SHA512")]:
        with pytest.raises(InvalidArgument, match=f"Unsupported digest function {name}"):
            resolve_function(re_pb2.DigestFunction.UNKNOWN, length)
    with pytest.raises(InvalidArgument, match=r"^Unknown digest function$"):
        resolve_function(re_pb2.DigestFunction.UNKNOWN, 63)
    with pytest.raises(InvalidArgument, match=r"^Unknown digest function$"):
        resolve_function(999)


def test_digest_helpers() -> None:
    d = Digest.of(b"hello")
    assert str(d) == f"{d.hash}-5"
    assert d.subject == f"blobs/{d.hash}/5"
    assert parse_digest(d.to_proto()) == d
    with pytest.raises(InvalidArgument, match=r"^No digest provided$"):
        parse_digest(None)
