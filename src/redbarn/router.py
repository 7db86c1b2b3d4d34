"""`--action-router JSON`: bb_scheduler's action router configuration, read as redbarn runs it.

The JSON is Buildbarn's `ActionRouterConfiguration` (scheduler.proto, copied into
`redbarn.proto.scheduler_pb2` with upstream's names and numbers) in protobuf JSON, so
an operator pastes the `actionRouter` block of a bb_scheduler configuration (converted
from jsonnet to JSON) unchanged. What each part becomes here:

- `platformKeyExtractor`: `action` (the Action's platform), `actionAndCommand` (the
  Command's when the Action has none) or `static` (this platform for every request).
- `invocationKeyExtractors`: the levels of the invocation tree, outermost first
  (`correlatedInvocationsId`, `toolInvocationId`); an empty list is one flat queue.
- `initialSizeClassAnalyzer`: default and maximum execution timeout; `feedbackDriven`
  turns on learned initial size classes (`redbarn.queue.sizeclass`, docs/size-classes.md):
  `failureCacheDuration` and `historySize` (1 to 1024) are required, and so are
  `pageRank`'s `minimumExecutionTimeout`, a positive
  `smallerSizeClassExecutionTimeoutMultiplier` and `maximumConvergenceError` when it is
  given (Buildbarn would divide by zero or never stop on those).

Refused at start with a message naming the field: the `demultiplexing` router and
the `authenticationMetadata` extractor (redbarn's tokens carry no public identity).

The default is Buildbarn's example deployment (correlatedInvocationsId above
toolInvocationId, 30 min default and 2 h maximum timeout), with actionAndCommand
rather than action: Bazel 4.2.3 and other pre-REAPI-2.2 clients put the platform only
in the Command.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from google.protobuf import json_format

from redbarn.config import ConfigError
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import scheduler_pb2

# Invocation tree levels, as the scheduler's invocation paths name them.
CORRELATED = "c"
TOOL = "t"

DEFAULT_ACTION_ROUTER = json.dumps(
    {
        "simple": {
            "platformKeyExtractor": {"actionAndCommand": {}},
            "invocationKeyExtractors": [
                {"correlatedInvocationsId": {}},
                {"toolInvocationId": {}},
            ],
            "initialSizeClassAnalyzer": {
                "defaultExecutionTimeout": "1800s",
                "maximumExecutionTimeout": "7200s",
            },
        }
    }
)


@dataclass(frozen=True)
class ActionRouter:
    """What the scheduler takes from an ActionRouterConfiguration."""

    # "action", "actionAndCommand" or "static" (then `static_platform` is used).
    platform_key_extractor: str = "actionAndCommand"
    static_platform: re_pb2.Platform | None = None
    # Invocation tree levels, outermost first: CORRELATED and/or TOOL.
    invocation_keys: tuple[str, ...] = (CORRELATED, TOOL)
    default_timeout: float = 1800.0
    max_timeout: float = 7200.0
    # Buildbarn's InitialSizeClassFeedbackDrivenAnalyzerConfiguration, or None.
    feedback_driven: scheduler_pb2.InitialSizeClassFeedbackDrivenAnalyzerConfiguration | None = None


def _seconds(duration: object) -> float:
    return duration.ToTimedelta().total_seconds()  # type: ignore[attr-defined, no-any-return]


MAX_HISTORY_SIZE = 1024


def _check_duration(message: object, name: str, json_name: str, where: str) -> None:
    if not message.HasField(name):  # type: ignore[attr-defined]
        raise ConfigError(f"{where}.{json_name} is required")
    if _seconds(getattr(message, name)) < 0:
        raise ConfigError(f"{where}.{json_name} must not be negative")


def _check_feedback_driven(
    fd: scheduler_pb2.InitialSizeClassFeedbackDrivenAnalyzerConfiguration, where: str
) -> None:
    """ConfigError for settings the analyzer cannot run with."""
    _check_duration(fd, "failure_cache_duration", "failureCacheDuration", where)
    if not 1 <= fd.history_size <= MAX_HISTORY_SIZE:
        raise ConfigError(
            f"{where}.historySize must be between 1 and {MAX_HISTORY_SIZE}, got {fd.history_size}"
        )
    if not fd.HasField("page_rank"):
        return
    pr, where = fd.page_rank, where + ".pageRank"
    _check_duration(pr, "minimum_execution_timeout", "minimumExecutionTimeout", where)
    exponent = pr.acceptable_execution_time_increase_exponent
    if not math.isfinite(exponent):
        raise ConfigError(f"{where}.acceptableExecutionTimeIncreaseExponent must be finite")
    for value, name in (
        (
            pr.smaller_size_class_execution_timeout_multiplier,
            "smallerSizeClassExecutionTimeoutMultiplier",
        ),
        (pr.maximum_convergence_error, "maximumConvergenceError"),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{where}.{name} must be a positive number, got {value:g}")


def parse(text: str, flag: str = "--action-router") -> ActionRouter:
    """The ActionRouter of a protobuf-JSON ActionRouterConfiguration; ConfigError naming
    the flag and what is wrong otherwise."""
    message = scheduler_pb2.ActionRouterConfiguration()
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as err:
        raise ConfigError(
            f"invalid {flag}: not a Buildbarn ActionRouterConfiguration in JSON: {err}"
        ) from None
    kind = message.WhichOneof("kind")
    if kind == "demultiplexing":
        raise ConfigError(
            f"invalid {flag}: the demultiplexing action router is not supported; use simple"
        )
    if kind != "simple":
        raise ConfigError(f'invalid {flag}: expected {{"simple": {{...}}}}')
    simple = message.simple
    extractor = simple.platform_key_extractor.WhichOneof("kind")
    if extractor is None:
        raise ConfigError(f"invalid {flag}: simple.platformKeyExtractor is required")
    static = None
    if extractor == "static":
        static = re_pb2.Platform()
        static.CopyFrom(simple.platform_key_extractor.static)
    levels: list[str] = []
    for i, key in enumerate(simple.invocation_key_extractors):
        which = key.WhichOneof("kind")
        if which == "tool_invocation_id":
            levels.append(TOOL)
        elif which == "correlated_invocations_id":
            levels.append(CORRELATED)
        elif which == "authentication_metadata":
            raise ConfigError(
                f"invalid {flag}: invocationKeyExtractors[{i}] authenticationMetadata is not "
                "supported (redbarn's tokens carry no public identity)"
            )
        else:
            raise ConfigError(f"invalid {flag}: invocationKeyExtractors[{i}] names no extractor")
    if len(set(levels)) != len(levels):
        raise ConfigError(f"invalid {flag}: an invocation key extractor is listed twice")
    analyzer = simple.initial_size_class_analyzer
    if not (
        analyzer.HasField("default_execution_timeout")
        and analyzer.HasField("maximum_execution_timeout")
    ):
        raise ConfigError(
            f"invalid {flag}: initialSizeClassAnalyzer needs defaultExecutionTimeout and "
            "maximumExecutionTimeout (bb_scheduler requires both)"
        )
    default, maximum = (
        _seconds(analyzer.default_execution_timeout),
        _seconds(analyzer.maximum_execution_timeout),
    )
    if default <= 0 or maximum <= 0 or default > maximum:
        raise ConfigError(
            f"invalid {flag}: defaultExecutionTimeout {default:g}s must be positive and at "
            f"most maximumExecutionTimeout {maximum:g}s"
        )
    feedback = None
    if analyzer.HasField("feedback_driven"):
        feedback = scheduler_pb2.InitialSizeClassFeedbackDrivenAnalyzerConfiguration()
        feedback.CopyFrom(analyzer.feedback_driven)
        _check_feedback_driven(feedback, f"invalid {flag}: initialSizeClassAnalyzer.feedbackDriven")
    return ActionRouter(
        platform_key_extractor={"action_and_command": "actionAndCommand"}.get(extractor, extractor),
        static_platform=static,
        invocation_keys=tuple(levels),
        default_timeout=default,
        max_timeout=maximum,
        feedback_driven=feedback,
    )
