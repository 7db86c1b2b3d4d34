"""The scheduler core's own request checks, with Buildbarn's wording: platform order
(R6) and the action timeout (R20).

Digests, digest functions and instance names follow `redbarn.digests`, the rule set
the frontend and the worker use too; `instance_name` is its check, under the name
the scheduler calls.
"""

from __future__ import annotations

import itertools

from redbarn import digests
from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2

instance_name = digests.validate_instance_name


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
