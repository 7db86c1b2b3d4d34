"""`redbarn.digests`: the one digest, digest-function, instance-name and worker-id rule set
the frontend, the scheduler core and the worker share, with Buildbarn's wording."""

from __future__ import annotations

import pytest

from redbarn import digests, errors
from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2

DF = re_pb2.DigestFunction
H = "ab" * 32


def test_instance_names() -> None:
    for ok in ("", "main", "main/sub", "a/b/c"):
        assert digests.validate_instance_name(ok) == ok
    for bad, why in [
        ("/main", "redundant slashes"),
        ("main/", "redundant slashes"),
        ("a//b", "redundant slashes"),
        ("main/blobs", 'reserved keyword "blobs"'),
        ("operations", 'reserved keyword "operations"'),
    ]:
        with pytest.raises(InvalidArgument) as err:
            digests.validate_instance_name(bad)
        assert err.value.message.startswith(
            f'Invalid instance name "{bad}": Instance name contains'
        )
        assert why in err.value.message


def test_instance_name_join() -> None:
    assert digests.join_instance_name("main", "sub") == "main/sub"
    assert digests.join_instance_name("main", "") == "main"
    assert digests.join_instance_name("", "sub") == "sub"
    assert digests.join_instance_name("", "") == ""


def test_digest_function_by_enum_or_hash_length() -> None:
    assert digests.function_of(DF.UNKNOWN, 64) == DF.SHA256
    assert digests.function_of(DF.UNKNOWN, 40) == DF.SHA1
    assert digests.function_of(DF.SHA256TREE, 64) == DF.SHA256TREE
    for function, length in [(DF.UNKNOWN, 10), (DF.UNKNOWN, 0), (999, 64)]:
        with pytest.raises(InvalidArgument, match=r"^Unknown digest function$"):
            digests.function_of(function, length)
    assert digests.infer_function(128) == DF.SHA512
    assert digests.infer_function(63) == DF.UNKNOWN


def test_digest_validation_wording() -> None:
    digests.validate(re_pb2.Digest(hash="a" * 64, size_bytes=1), DF.SHA256)
    digests.validate(digests.Digest("a" * 40, 0), DF.SHA1)
    cases = [
        (("a" * 63, 1, DF.SHA256), "Hash has length 63, while 64 characters were expected"),
        (("a" * 64, 1, DF.SHA1), "Hash has length 64, while 40 characters were expected"),
        (("A" * 64, 1, DF.SHA256), "Non-hexadecimal character in digest hash: U+0041 'A'"),
        (("a" * 63 + "G", 1, DF.SHA256), "Non-hexadecimal character in digest hash: U+0047 'G'"),
        (("a" * 64, -1, DF.SHA256), "Invalid digest size: -1 bytes"),
    ]
    for (hash_, size, function), message in cases:
        with pytest.raises(InvalidArgument) as err:
            digests.validate(re_pb2.Digest(hash=hash_, size_bytes=size), function)
        assert err.value.message == message
    with pytest.raises(InvalidArgument) as err:
        digests.validate(re_pb2.Digest(hash="a" * 63, size_bytes=1), DF.SHA256)
    wrapped = errors.wrap("Failed to extract digest for action", err.value)
    assert isinstance(wrapped, InvalidArgument)
    assert wrapped.message == (
        "Failed to extract digest for action: Hash has length 63, while 64 characters were expected"
    )
    with pytest.raises(InvalidArgument, match=r"^No digest provided$"):
        digests.parse_digest(None)


def test_functions_a_process_cannot_serve() -> None:
    for function in (DF.UNKNOWN, 999):
        with pytest.raises(InvalidArgument, match=r"^Unknown digest function$"):
            digests.hasher(function)
        with pytest.raises(InvalidArgument, match=r"^Unknown digest function$"):
            digests.validate(re_pb2.Digest(hash=H, size_bytes=1), function)
    with pytest.raises(InvalidArgument) as err:
        digests.hasher(DF.BLAKE3)
    assert err.value.message == (
        "Unsupported digest function BLAKE3: this worker hashes MD5, SHA1, SHA256, SHA384 "
        "and SHA512 only"
    )
    with pytest.raises(InvalidArgument) as err:
        digests.stored_function(DF.SHA1)
    assert err.value.message == "Unsupported digest function SHA1: this server stores SHA256 only"
    assert digests.stored_function(DF.SHA256) == DF.SHA256


def test_hashing() -> None:
    d = digests.of_bytes(b"hello", DF.SHA1)
    assert d == re_pb2.Digest(hash="aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", size_bytes=5)
    assert digests.key(d) == "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d-5"
    assert digests.of_bytes(b"hello", DF.SHA256) == digests.Digest.of(b"hello").to_proto()
    assert str(digests.Digest.of(b"")) == f"{digests.EMPTY_SHA256}-0"


def test_resource_names_carry_a_function_only_when_the_length_does_not_imply_it() -> None:
    d = digests.Digest(H, 5)
    assert digests.blob_path(d) == f"blobs/{H}/5" == d.subject
    assert digests.read_resource_name("", d) == f"blobs/{H}/5"
    assert digests.read_resource_name("a/b", d, DF.SHA256) == f"a/b/blobs/{H}/5"
    assert digests.read_resource_name("i", d, DF.SHA256TREE) == f"i/blobs/sha256tree/{H}/5"
    assert digests.write_resource_name("i", "u", d) == f"i/uploads/u/blobs/{H}/5"
    assert digests.write_resource_name("", "u", d, DF.BLAKE3) == f"uploads/u/blobs/blake3/{H}/5"


def test_worker_ids_are_go_json() -> None:
    assert (
        digests.worker_json({"thread": "42", "hostname": "worker123"})
        == '{"hostname":"worker123","thread":"42"}'
    )
    assert digests.worker_json({"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'
    assert digests.go_json({"b": ["é"], "a": 1}) == '{"a":1,"b":["é"]}'
