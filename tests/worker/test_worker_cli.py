"""`redbarn worker` flags: REDBARN_* environment defaults, parsing, clear errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from redbarn.config import ConfigError
from redbarn.worker import cli


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_fill_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDBARN_CONCURRENCY", "3")
    monkeypatch.setenv("REDBARN_LABEL", "pool=fast,rack=r1")
    args = _parse(
        [
            "--frontend", "dns:///frontends:8981",
            "--platform", "os=linux", "--platform", "arch=x86_64",
            "--cache-size", "2GiB", "--size-class", "2",
        ]
    )  # fmt: skip
    config = cli.config_from_args(args)
    assert config.frontend == "dns:///frontends:8981"
    assert config.cas is None
    assert config.concurrency == 3
    assert config.platform == (("arch", "x86_64"), ("os", "linux"))
    assert dict(config.labels) == {"pool": "fast", "rack": "r1"}
    assert config.cache_size == 2 << 30
    assert config.size_class == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--concurrency", "0"],
        ["--concurrency", "many"],
        ["--platform", "novalue"],
        ["--cache-size", "lots"],
        ["--platform", "a=1", "--platform", "a=1"],
        ["--instance-name-prefix", "/leading"],
        ["--instance-name-prefix", "a/blobs"],
    ],
)
def test_bad_flags_are_config_errors(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        cli.config_from_args(_parse(argv))


def test_module_entry_point_reports_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "redbarn.worker", "--concurrency", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "redbarn worker: invalid --concurrency 0: must be at least 1"
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--container-runtime", "no-such-runtime-here"],
         "--container-runtime no-such-runtime-here: not found"),
        (["--run-as", "no-such-user-here"], 'invalid --run-as "no-such-user-here": no such user'),
        (["--run-as", "root"], "must not run as root"),
    ],
)  # fmt: skip
def test_run_as_and_runtime_are_checked_before_anything_starts(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "redbarn.worker", "--build-dir", str(tmp_path / "b"),
         "--cache-dir", str(tmp_path / "c"), *flags],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "b").exists()  # refused before creating anything
