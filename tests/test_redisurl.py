"""--redis / --cas-redis URLs: one server, redis+cluster://, redis+sentinel:// (issue 19)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from redbarn.config import ConfigError
from redbarn.frontend.config import FrontendConfig
from redbarn.runtime.fastredis import FastCluster, FastRedis
from redbarn.runtime.redisurl import (
    RedisTarget,
    SentinelMaster,
    fast_client,
    parse_redis_url,
    redis_client,
)


def test_one_server_urls_are_left_to_redis_py() -> None:
    for url in ("redis://r:6379/0", "rediss://u:p@r:6380/1", "unix:///run/r.sock?db=2"):
        target = parse_redis_url(url)
        assert (target.kind, target.url) == ("single", url)
    assert parse_redis_url("rediss://r:6380/0").tls


def test_cluster_url() -> None:
    t = parse_redis_url("redis+cluster://app:s%3Acret@10.0.0.1:7000,10.0.0.2:7001")
    assert t == RedisTarget(
        kind="cluster", url=t.url, nodes=(("10.0.0.1", 7000), ("10.0.0.2", 7001)),
        username="app", password="s:cret",
    )  # fmt: skip
    assert parse_redis_url("redis+cluster://r/0").nodes == (("r", 6379),)
    tls = parse_redis_url("rediss+cluster://:pw@[::1]:7000?ssl_ca_certs=/ca.pem")
    assert (tls.tls, tls.nodes, tls.username, tls.password) == (True, (("::1", 7000),), None, "pw")
    assert tls.option("ssl_ca_certs") == "/ca.pem"


def test_sentinel_url() -> None:
    t = parse_redis_url(
        "redis+sentinel://app:pw@s1:26379,s2,[fd00::3]:26380/my%20master/3?sentinel_password=sp"
    )
    assert (t.kind, t.service, t.db, t.username, t.password) == (
        "sentinel", "my master", 3, "app", "pw",
    )  # fmt: skip
    assert t.nodes == (("s1", 26379), ("s2", 26379), ("fd00::3", 26380))
    assert t.option("sentinel_password") == "sp"
    assert parse_redis_url("redis+sentinel://s1:26379/m").db == 0
    assert parse_redis_url("redis+sentinel://s1:26379/m/").db == 0
    assert parse_redis_url("rediss+sentinel://s1:26379/m?ssl_cert_reqs=none").tls


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://r:7000/2", "a Redis Cluster has only database 0, not 2"),
        ("redis+cluster://", "an empty host (expected HOST:PORT[,HOST:PORT...])"),
        ("redis+cluster://a:1,,b:2", "an empty host (expected HOST:PORT[,HOST:PORT...])"),
        ("redis+cluster://r:70000", 'bad port "70000" in "r:70000"'),
        ("redis+cluster://r:port", 'bad port "port" in "r:port"'),
        ("redis+cluster://::1:7000", 'bad host "::1:7000" (IPv6 addresses go in brackets)'),
        ("redis+cluster://:7000", 'no host in ":7000"'),
        ("redis+cluster://r:7000/x/y", 'path "/x/y" is not [/0]'),
        ("redis+cluster://r:7000#frag", "a fragment (#...) means nothing here"),
        (
            "redis+cluster://r:7000?ssl_ca_certs=/ca.pem",
            'unknown query option "ssl_ca_certs" (TLS options need rediss+cluster://)',
        ),
        ("redis+cluster://r:7000?db=1", 'unknown query option "db" (none are allowed)'),
        (
            "redis+sentinel://s:26379",
            "no service name: expected redis+sentinel://HOST:PORT/SERVICE",
        ),
        ("redis+sentinel://s:26379/m/zero", 'path "/m/zero" is not /SERVICE[/DB]'),
        ("redis+sentinel://s:26379/m/1/2", 'path "/m/1/2" is not /SERVICE[/DB]'),
        (
            "redis+sentinel://s:26379/m?timeout=1",
            'unknown query option "timeout" (allowed: sentinel_username, sentinel_password)',
        ),
        (
            "rediss+sentinel://s:26379/m?ssl_cert_reqs=maybe",
            'ssl_cert_reqs "maybe" is not one of none, optional, required',
        ),
        (
            "rediss+cluster://r:7000?ssl_check_hostname=yes",
            'ssl_check_hostname "yes" is not true or false',
        ),
    ],
)
def test_malformed_urls_are_refused_naming_the_fault(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url(url, "--cas-redis")
    assert str(info.value) == f'invalid --cas-redis "{url}": {why}'


def test_refusals_mask_the_password() -> None:
    # A URL the redactor cannot parse is masked whole; the reason still names the part.
    with pytest.raises(ConfigError) as info:
        parse_redis_url("redis+cluster://u:pw@[::1:7000")
    assert str(info.value) == 'invalid --redis "***": bad IPv6 host "[::1:7000"'

    with pytest.raises(ConfigError) as info:
        parse_redis_url("redis+sentinel://app:hunter2@s:26379")
    assert "hunter2" not in str(info.value)
    assert 'invalid --redis "redis+sentinel://app:***@s:26379": no service name' in str(info.value)


@pytest.mark.parametrize("url", ["localhost:6379", "http://r:1", "redis+cloud://r:1"])
def test_unknown_schemes_keep_the_old_message(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url(url)
    assert str(info.value) == f'invalid --redis "{url}": expected redis://host:port/db'


def test_frontend_config_checks_both_flags() -> None:
    ok = FrontendConfig(
        redis_url="redis+sentinel://s1:26379,s2:26379/sched",
        cas_redis_url="redis+cluster://c1:7000",
    )
    assert ok.redis_url.startswith("redis+sentinel://")
    with pytest.raises(ConfigError, match=r'^invalid --redis "redis\+cluster://r:7000/1": '):
        FrontendConfig(redis_url="redis+cluster://r:7000/1")
    with pytest.raises(ConfigError, match=r'^invalid --cas-redis "redis\+sentinel://s:1": '):
        FrontendConfig(cas_redis_url="redis+sentinel://s:1")


async def test_clients_for_each_kind() -> None:
    """Building a client connects to nothing; the kinds get the classes they need."""
    single = redis_client("redis://127.0.0.1:1/0")
    assert isinstance(single, aioredis.Redis)
    assert isinstance(single.connection_pool, aioredis.BlockingConnectionPool)
    cluster = redis_client("redis+cluster://:pw@127.0.0.1:1")
    assert isinstance(cluster, RedisCluster)
    sentinel = redis_client("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m/4")
    assert isinstance(sentinel, SentinelMaster)
    manager = sentinel.sentinel_manager
    assert manager is not None
    assert [c.connection_pool.connection_kwargs["port"] for c in manager.sentinels] == [1, 2]
    pool = sentinel.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("m", 4)
    for client in (single, cluster, sentinel):
        await client.aclose()


async def test_fast_client_only_where_it_applies() -> None:
    single = fast_client("redis://127.0.0.1:1/2")
    assert isinstance(single, FastRedis) and single.db == 2
    assert fast_client("rediss://127.0.0.1:1/0") is None
    cluster = fast_client("redis+cluster://:pw@127.0.0.1:1,127.0.0.1:2")
    assert isinstance(cluster, FastCluster) and cluster.password == "pw"
    assert fast_client("rediss+cluster://127.0.0.1:1") is None  # no TLS in FastRedis
    assert fast_client("rediss+sentinel://127.0.0.1:1/m") is None  # no TLS in FastRedis
    sentinel = fast_client("redis+sentinel://u:pw@127.0.0.1:1/m/3")
    assert isinstance(sentinel, FastRedis)
    assert (sentinel.db, sentinel.username, sentinel.password) == (3, "u", "pw")
    assert sentinel.resolve is not None
    await sentinel.aclose()
