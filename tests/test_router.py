"""`--action-router`: Buildbarn's ActionRouterConfiguration in protobuf JSON (issue 18)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from redbarn import router
from redbarn.config import ConfigError
from redbarn.frontend import cli
from redbarn.proto import remote_execution_pb2 as re_pb2

# The actionRouter block of Buildbarn's example scheduler configuration (bb-deployments'
# scheduler.jsonnet), converted from jsonnet to JSON, unchanged.
BUILDBARN_EXAMPLE = """
{
  "simple": {
    "platformKeyExtractor": { "action": {} },
    "invocationKeyExtractors": [
      { "correlatedInvocationsId": {} },
      { "toolInvocationId": {} }
    ],
    "initialSizeClassAnalyzer": {
      "defaultExecutionTimeout": "1800s",
      "maximumExecutionTimeout": "7200s"
    }
  }
}
"""


def test_buildbarns_example_block_is_accepted_unchanged() -> None:
    got = router.parse(BUILDBARN_EXAMPLE)
    assert got == router.ActionRouter(
        platform_key_extractor="action",
        invocation_keys=(router.CORRELATED, router.TOOL),
        default_timeout=1800.0,
        max_timeout=7200.0,
    )


def test_the_default_is_the_example_with_action_and_command() -> None:
    assert router.parse(router.DEFAULT_ACTION_ROUTER) == router.ActionRouter(
        platform_key_extractor="actionAndCommand",
        invocation_keys=(router.CORRELATED, router.TOOL),
    )


def test_static_platform_order_of_levels_and_feedback_driven() -> None:
    got = router.parse(
        json.dumps(
            {
                "simple": {
                    "platformKeyExtractor": {
                        "static": {"properties": [{"name": "OSFamily", "value": "linux"}]}
                    },
                    "invocationKeyExtractors": [{"toolInvocationId": {}}],
                    "initialSizeClassAnalyzer": {
                        "defaultExecutionTimeout": "60s",
                        "maximumExecutionTimeout": "600s",
                        "feedbackDriven": {"failureCacheDuration": "86400s", "historySize": 32},
                    },
                }
            }
        )
    )
    assert got.platform_key_extractor == "static"
    assert got.static_platform == re_pb2.Platform(
        properties=[re_pb2.Platform.Property(name="OSFamily", value="linux")]
    )
    assert got.invocation_keys == (router.TOOL,)
    assert (got.default_timeout, got.max_timeout) == (60.0, 600.0)
    assert got.feedback_driven is not None and got.feedback_driven.history_size == 32
    no_levels = json.loads(BUILDBARN_EXAMPLE)
    del no_levels["simple"]["invocationKeyExtractors"]
    assert router.parse(json.dumps(no_levels)).invocation_keys == ()  # one flat queue


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{", "not a Buildbarn ActionRouterConfiguration in JSON"),
        ('{"simple": {"bogus": 1}}', "not a Buildbarn ActionRouterConfiguration in JSON"),
        ("{}", 'expected {"simple": {...}}'),
        ('{"demultiplexing": {}}', "the demultiplexing action router is not supported"),
        ('{"simple": {}}', "simple.platformKeyExtractor is required"),
        (
            '{"simple": {"platformKeyExtractor": {"action": {}}, "invocationKeyExtractors":'
            ' [{"authenticationMetadata": {}}]}}',
            "invocationKeyExtractors[0] authenticationMetadata is not supported",
        ),
        (
            '{"simple": {"platformKeyExtractor": {"action": {}}}}',
            "needs defaultExecutionTimeout and maximumExecutionTimeout",
        ),
        (
            '{"simple": {"platformKeyExtractor": {"action": {}}, "initialSizeClassAnalyzer":'
            ' {"defaultExecutionTimeout": "900s", "maximumExecutionTimeout": "60s"}}}',
            "defaultExecutionTimeout 900s must be positive and at most maximumExecutionTimeout",
        ),
    ],
)
def test_bad_configurations_name_what_is_wrong(config: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid --action-router: ") as err:
        router.parse(config)
    assert message in str(err.value)


def _frontend_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_frontend_flag_sets_levels_timeouts_and_the_extractor() -> None:
    config = cli.config_from_args(_frontend_args("--action-router", BUILDBARN_EXAMPLE))
    assert config.router.platform_key_extractor == "action"
    assert config.scheduler.invocation_keys == ("c", "t")
    one_level = BUILDBARN_EXAMPLE.replace('{ "correlatedInvocationsId": {} },', "").replace(
        '"1800s"', '"120s"'
    )
    config = cli.config_from_args(
        _frontend_args("--action-router", one_level, "--default-action-timeout", "5m")
    )
    assert config.scheduler.invocation_keys == ("t",)
    assert config.scheduler.default_action_timeout == 120.0  # the router's wins
    # Without --action-router: the default router, and the timeout flags as shorthands.
    config = cli.config_from_args(_frontend_args("--default-action-timeout", "5m"))
    assert config.router.platform_key_extractor == "actionAndCommand"
    assert config.scheduler.invocation_keys == ("c", "t")
    assert config.scheduler.default_action_timeout == 300.0


# Buildbarn's recommended feedback-driven settings (scheduler.proto's comments).
FEEDBACK_DRIVEN: dict[str, Any] = {
    "failureCacheDuration": "86400s",
    "historySize": 32,
    "pageRank": {
        "acceptableExecutionTimeIncreaseExponent": 0.5,
        "smallerSizeClassExecutionTimeoutMultiplier": 1.5,
        "minimumExecutionTimeout": "10s",
        "maximumConvergenceError": 0.002,
    },
}


def test_the_frontend_takes_buildbarns_feedback_driven_analyzer() -> None:
    """An actionRouter block with Buildbarn's current feedbackDriven layout (its PageRank
    options under pageRank) starts a frontend that learns initial size classes."""
    learned = json.loads(BUILDBARN_EXAMPLE)
    learned["simple"]["initialSizeClassAnalyzer"]["feedbackDriven"] = FEEDBACK_DRIVEN
    config = cli.config_from_args(_frontend_args("--action-router", json.dumps(learned)))
    fd = config.router.feedback_driven
    assert fd is not None and fd.history_size == 32
    assert fd.page_rank.smaller_size_class_execution_timeout_multiplier == 1.5
    assert fd.page_rank.minimum_execution_timeout.seconds == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"failureCacheDuration": None}, r"feedbackDriven\.failureCacheDuration is required"),
        ({"historySize": 0}, r"historySize must be between 1 and 1024, got 0"),
        ({"historySize": 5000}, r"historySize must be between 1 and 1024, got 5000"),
        ({"failureCacheDuration": "-1s"}, r"failureCacheDuration must not be negative"),
        (
            {"pageRank": {**FEEDBACK_DRIVEN["pageRank"], "minimumExecutionTimeout": None}},
            r"pageRank\.minimumExecutionTimeout is required",
        ),
        (
            {
                "pageRank": {
                    **FEEDBACK_DRIVEN["pageRank"],
                    "smallerSizeClassExecutionTimeoutMultiplier": 0,
                }
            },
            r"smallerSizeClassExecutionTimeoutMultiplier must be a positive number, got 0",
        ),
        (
            {"pageRank": {**FEEDBACK_DRIVEN["pageRank"], "maximumConvergenceError": -1}},
            r"maximumConvergenceError must be a positive number, got -1",
        ),
        (
            # Buildbarn's layout before 2023 (PageRank options at the top level).
            {"acceptableExecutionTimeIncreaseExponent": 0.5},
            r"has no field named \"acceptableExecutionTimeIncreaseExponent\"",
        ),
    ],
)
def test_bad_feedback_driven_settings_are_refused(change: dict[str, Any], message: str) -> None:
    fd = {**FEEDBACK_DRIVEN, **change}
    fd = {k: v for k, v in fd.items() if v is not None}
    if isinstance(fd.get("pageRank"), dict):
        fd["pageRank"] = {k: v for k, v in fd["pageRank"].items() if v is not None}
    learned = json.loads(BUILDBARN_EXAMPLE)
    learned["simple"]["initialSizeClassAnalyzer"]["feedbackDriven"] = fd
    with pytest.raises(ConfigError, match=message):
        router.parse(json.dumps(learned))
