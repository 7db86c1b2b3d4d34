"""Helpers shared by every process's settings: durations, KEY=VALUE pairs, env defaults.

Each process keeps its own frozen dataclass (`FrontendConfig`, `WorkerConfig`, ...);
this module only parses the values that fill them. Flags win over `REDBARN_*`
environment variables, which win over the dataclass defaults.
"""

from __future__ import annotations

import argparse
import os
import re

# The frontend's gRPC port unless told otherwise (`--listen`, the worker's `--frontend`).
DEFAULT_PORT = 8981
# Units for writing defaults: `cas_ttl: float = 7 * DAY`, `max_blob_size: int = 1 * GiB`.
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": MINUTE, "h": HOUR, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


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


def format_duration(seconds: float) -> str:
    """A default for `--help`, read back by `parse_duration`: whole hours as "168h",
    whole minutes from ten minutes up as "15m", anything shorter in seconds ("60s")."""
    if seconds >= HOUR and seconds % HOUR == 0:
        return f"{int(seconds // HOUR)}h"
    if seconds >= 10 * MINUTE and seconds % MINUTE == 0:
        return f"{int(seconds // MINUTE)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds * 1000:g}ms"


def format_size(size: int) -> str:
    """A default for `--help`, read back by `parse_size`: the largest binary unit that
    divides it ("4MiB", "10GiB"), else bytes."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_pair(text: str, what: str = "KEY=VALUE") -> tuple[str, str]:
    """Parse "key=value"; the key must be non-empty."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f'invalid {what} "{text}": expected KEY=VALUE')
    return key, value


def read_file(path: str, flag: str) -> bytes:
    """The bytes of the file a flag names (a PEM file, say); ConfigError if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ConfigError(f"cannot read {flag} {path}: {err.strerror}") from None


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
