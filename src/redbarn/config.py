"""Helpers shared by every process's settings: durations, KEY=VALUE pairs, env defaults.

Each process keeps its own frozen dataclass (`FrontendConfig`, `WorkerConfig`, ...);
this module only parses the values that fill them. Flags win over `REDBARN_*`
environment variables, which win over the dataclass defaults.
"""

from __future__ import annotations

import argparse
import os
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ConfigError(ValueError):
    """An invalid setting. Processes print it as one line and exit non-zero."""


def parse_duration(text: str) -> float:
    """Parse "500ms", "2s", "5m", "1h" or a bare number of seconds into seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(f'invalid duration "{text}": use a number with ms, s, m or h, e.g. 2s')
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_size(text: str) -> int:
    """Parse "10GiB", "512M", "4096" into bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f'invalid size "{text}": use a number with K, M, G or T, e.g. 10GiB')
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_pair(text: str, what: str = "KEY=VALUE") -> tuple[str, str]:
    """Parse "key=value"; the key must be non-empty."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f'invalid {what} "{text}": expected KEY=VALUE')
    return key, value


def env_name(flag: str) -> str:
    """`--idle-sync-timeout` -> `REDBARN_IDLE_SYNC_TIMEOUT`."""
    return "REDBARN_" + flag.lstrip("-").replace("-", "_").upper()


def env_default(flag: str, default: str | None = None) -> str | None:
    """The `REDBARN_*` environment value for a flag, else `default`."""
    return os.environ.get(env_name(flag), default)


def env_list(flag: str) -> list[str]:
    """A repeatable flag's environment value: comma-separated (`a=1,b=2`)."""
    raw = os.environ.get(env_name(flag), "")
    return [item for item in (p.strip() for p in raw.split(",")) if item]


def add_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    default: str | None,
    help: str,
    *,
    repeat: bool = False,
    **kwargs: object,
) -> None:
    """Add `flag` whose default comes from its `REDBARN_*` variable, then `default`.

    The help text names the variable, so `--help` is the configuration reference.
    """
    env = env_name(flag)
    if repeat:
        parser.add_argument(
            flag,
            action="append",
            default=env_list(flag),
            help=f"{help} (repeatable; env {env}, comma-separated)",
            **kwargs,  # type: ignore[arg-type]
        )
    else:
        shown = f"default {default}; " if default not in (None, "") else ""
        parser.add_argument(
            flag,
            default=env_default(flag, default),
            help=f"{help} ({shown}env {env})",
            **kwargs,  # type: ignore[arg-type]
        )
