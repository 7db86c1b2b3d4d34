"""The core's own checks and codec: Buildbarn's wording and canonical encodings.

Digest and instance-name rules are `redbarn.digests`'s: tests/test_digests.py."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec, keys, validate

P = re_pb2.Platform.Property


def test_platform_order() -> None:
    validate.platform(
        re_pb2.Platform(properties=[P(name="a", value="1"), P(name="a", value="2"), P(name="b")])
    )
    with pytest.raises(InvalidArgument) as err:
        validate.platform(
            re_pb2.Platform(properties=[P(name="os", value="x"), P(name="cpu", value="y")])
        )
    assert err.value.message == (
        "Platform properties are not lexicographically sorted, as property "
        'name:"cpu" value:"y" should have been placed before property name:"os" value:"x"'
    )
    with pytest.raises(InvalidArgument):  # exact duplicates
        validate.platform(
            re_pb2.Platform(properties=[P(name="a", value="1"), P(name="a", value="1")])
        )


def test_action_timeout() -> None:
    a = re_pb2.Action()
    assert validate.action_timeout(a, default=1800, maximum=7200) == 1800
    a.timeout.CopyFrom(duration_pb2.Duration(seconds=0))
    assert validate.action_timeout(a, default=1800, maximum=7200) == 0
    a.timeout.CopyFrom(duration_pb2.Duration(seconds=7201))
    with pytest.raises(InvalidArgument) as err:
        validate.action_timeout(a, default=1800, maximum=7200)
    assert err.value.message.endswith(
        "Execution timeout of 2h0m1s is outside permitted range [0s, 2h0m0s]"
    )
    a.timeout.CopyFrom(duration_pb2.Duration(seconds=-1))
    with pytest.raises(InvalidArgument, match=r"Execution timeout of -1s is outside"):
        validate.action_timeout(a, default=1800, maximum=7200)


def test_canonical_encodings() -> None:
    assert codec.platform_json(re_pb2.Platform()) == "{}"
    assert codec.platform_json(
        re_pb2.Platform(properties=[P(name="cpu", value="armv6"), P(name="os", value="linux")])
    ) == ('{"properties":[{"name":"cpu","value":"armv6"},{"name":"os","value":"linux"}]}')
    assert (
        codec.worker_json({"thread": "42", "hostname": "worker123"})
        == '{"hostname":"worker123","thread":"42"}'
    )
    assert codec.worker_json({"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'
    path = codec.invocation_path([("c", "a/b c"), ("t", "x\x1fy")])
    assert codec.parse_invocation_path(path) == [("c", "a/b c"), ("t", "x\x1fy")]
    assert " " not in path and "\x1f" not in path and path.count("/") == 2
    assert codec.priority_from_field(codec.priority_field(-(2**31))) == -(2**31)
    assert codec.priority_field(-1) < codec.priority_field(0) < codec.priority_field(2**31 - 1)
    r = codec.decode_result(b"E14\x1fgone")
    assert r.status.code == 14 and r.status.message == "gone"


def test_operation_names_route() -> None:
    d = keys.domain_id("main", "{}")
    name = keys.operation_name(d, "0" * 32)
    assert keys.parse_operation_name(name) == (d, "0" * 32)
    for bad in ("", "x", "main/operations/123", d + "." + "0" * 31, d.upper() + "." + "0" * 32):
        assert keys.parse_operation_name(bad) is None
