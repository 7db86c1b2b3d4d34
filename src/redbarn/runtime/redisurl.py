"""Redis URLs for `--redis` and `--cas-redis`: one server, a Redis Cluster, or Sentinel.

    redis://[user:pass@]HOST[:PORT][/DB]          one server (redis-py's own syntax,
    rediss://...  unix:///path.sock[?db=N]         query options included)
    redis+cluster://[user:pass@]HOST:PORT[,HOST:PORT...][/0]
    rediss+cluster://...                           the same over TLS
    redis+sentinel://[user:pass@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]
    rediss+sentinel://...                          the same over TLS (sentinels too)

A cluster URL names any node (or several, tried in turn); the client reads the slot map
from it and follows MOVED/ASK, refreshing the map after a failover (redis-py's
`RedisCluster`). A sentinel URL names the sentinels and the master's service name; the
client asks a sentinel for the master's address on every new connection, and a
connection that finds a replica where the master was (READONLY) is dropped, so the
next one goes to the new master (redis-py's `Sentinel.master_for`).

The user and password in a cluster or sentinel URL are the data nodes' (the master's
and its replicas'). Sentinels that require a password of their own get it from the
query: `?sentinel_password=...` (and `sentinel_username=`). Over TLS the query may
carry `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`
(none/optional/required) and `ssl_check_hostname` (true/false). Any other query key is
refused, naming it.

`parse_redis_url` checks a URL and raises `ConfigError` naming the flag and what is
wrong; `redis_client` builds the redis.asyncio client for it; `fast_client` the
pipelined `FastRedis` where one applies (without TLS: one server over TCP or a Unix
socket, the current Sentinel master, or a cluster's masters as a `FastCluster`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from redbarn.config import ConfigError
from redbarn.runtime.fastredis import FastCluster, FastRedis

AnyRedis = aioredis.Redis | RedisCluster

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
CERT_REQS = ("none", "optional", "required")

# Connections per node a client may open; beyond it a call waits (single server) or
# fails (a cluster node: redis-py's cluster pool does not wait).
MAX_CONNECTIONS = 256
CONNECT_TIMEOUT = 2.0

Kind = Literal["single", "cluster", "sentinel"]


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. `url` is the URL as given (repr() leaves it out: passwords)."""

    kind: Kind
    url: str = field(repr=False)
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()  # cluster start-up nodes, or the sentinels
    service: str = ""  # sentinel: the master's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # query

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)


def parse_redis_url(url: str, flag: str = "--redis") -> RedisTarget:
    """Check `url` and split it into its parts; ConfigError names `flag` and the fault.
    One-server URLs are left to redis-py (only the scheme is checked here)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f'invalid {flag} "{_redact(url)}": expected redis://host:port/db')
    scheme = scheme.lower()
    if scheme in SINGLE_SCHEMES:
        return RedisTarget(kind="single", url=url, tls=scheme == "rediss")
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        # Kept word for word since issue 14 (tests and scripts match it); the module
        # docstring and docs/scaling.md list the cluster and sentinel forms.
        raise ConfigError(f'invalid {flag} "{_redact(url)}": expected redis://host:port/db')
    kind: Kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    tls = scheme.startswith("rediss")
    rest, _, query = rest.partition("?")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _bad(flag, url, "a fragment (#...) means nothing here")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis://secret@host, as redis-py reads a lone userinfo
            username, password = None, unquote(user)
    nodes = tuple(_node(flag, url, h, DEFAULT_PORT[kind]) for h in hosts.split(","))
    parts = path.split("/") if path else []
    service = ""
    db = 0
    if kind == "sentinel":
        if not parts or not parts[0]:
            raise _bad(flag, url, "no service name: expected redis+sentinel://HOST:PORT/SERVICE")
        service = unquote(parts[0])
        parts = parts[1:]
    if len(parts) > 1 or (parts and parts[0] and not parts[0].isdigit()):
        want = "/SERVICE[/DB]" if kind == "sentinel" else "[/0]"
        raise _bad(flag, url, f'path "/{path}" is not {want}')
    if parts and parts[0]:
        db = int(parts[0])
    if kind == "cluster" and db != 0:
        raise _bad(flag, url, f"a Redis Cluster has only database 0, not {db}")
    options = tuple(parse_qsl(query, keep_blank_values=True))
    allowed = (TLS_OPTIONS if tls else ()) + (SENTINEL_OPTIONS if kind == "sentinel" else ())
    for key, value in options:
        if key not in allowed:
            why = f"allowed: {', '.join(allowed)}" if allowed else "none are allowed"
            if key in TLS_OPTIONS:
                why = f"TLS options need {scheme.replace('redis+', 'rediss+')}://"
            raise _bad(flag, url, f'unknown query option "{key}" ({why})')
        if key == "ssl_cert_reqs" and value not in CERT_REQS:
            raise _bad(flag, url, f'ssl_cert_reqs "{value}" is not one of {", ".join(CERT_REQS)}')
        if key == "ssl_check_hostname" and value.lower() not in ("true", "false"):
            raise _bad(flag, url, f'ssl_check_hostname "{value}" is not true or false')
    return RedisTarget(
        kind=kind, url=url, tls=tls, nodes=nodes, service=service, db=db,
        username=username, password=password, options=options,
    )  # fmt: skip


def _node(flag: str, url: str, text: str, default_port: int) -> tuple[str, int]:
    if not text:
        raise _bad(flag, url, "an empty host (expected HOST:PORT[,HOST:PORT...])")
    if text.startswith("["):  # [::1]:6379
        host, close, tail = text[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise _bad(flag, url, f'bad IPv6 host "{text}"')
        port_text = tail[1:]
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise _bad(flag, url, f'bad host "{text}" (IPv6 addresses go in brackets)')
    if not host:
        raise _bad(flag, url, f'no host in "{text}"')
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(flag, url, f'bad port "{port_text}" in "{text}"')
    return host, int(port_text)


def _redact(url: str) -> str:
    from redbarn.frontend.config import redact_url  # the one URL redactor

    return redact_url(url)


def _bad(flag: str, url: str, why: str) -> ConfigError:
    return ConfigError(f'invalid {flag} "{_redact(url)}": {why}')


def _tls_kwargs(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    out: dict[str, Any] = {"ssl": True}
    for key in TLS_OPTIONS:
        value = target.option(key)
        if value is None:
            continue
        out[key] = value.lower() == "true" if key == "ssl_check_hostname" else value
    return out


def redis_client(url: str | RedisTarget, flag: str = "--redis") -> AnyRedis:
    """The redis.asyncio client for `url`: a `Redis` over a pool that waits for a free
    connection (one server), a `RedisCluster`, or a `Redis` on the Sentinel master."""
    target = url if isinstance(url, RedisTarget) else parse_redis_url(url, flag)
    if target.kind == "single":
        # redis-py's default pool fails a call once every connection is busy; this one waits.
        pool = aioredis.BlockingConnectionPool.from_url(
            target.url,
            max_connections=MAX_CONNECTIONS,
            timeout=10,
            socket_connect_timeout=CONNECT_TIMEOUT,
        )
        return aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username, password=target.password,
            max_connections=MAX_CONNECTIONS, socket_connect_timeout=CONNECT_TIMEOUT,
            **_tls_kwargs(target),
        )  # fmt: skip
    sentinel = sentinel_of(target)
    master: SentinelMaster = sentinel.master_for(
        target.service, redis_class=SentinelMaster, db=target.db,
        username=target.username, password=target.password,
        socket_connect_timeout=CONNECT_TIMEOUT, **_tls_kwargs(target),
    )  # fmt: skip
    master.sentinel_manager = sentinel
    return master


class SentinelMaster(aioredis.Redis):
    """The client of a Sentinel master; closing it also closes its sentinel clients."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


def sentinel_of(target: RedisTarget) -> Sentinel:
    """The redis-py `Sentinel` for a sentinel URL (its own credentials from the query)."""
    assert target.kind == "sentinel"
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": CONNECT_TIMEOUT,
        **_tls_kwargs(target),
    }
    if target.option("sentinel_password") is not None:
        sentinel_kwargs["password"] = target.option("sentinel_password")
        sentinel_kwargs["username"] = target.option("sentinel_username")
    return Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)


def fast_client(url: str | RedisTarget, flag: str = "--redis") -> FastRedis | None:
    """The pipelined client for the scheduler's hot script calls, or None where redis-py
    carries them (TLS). On a cluster it is a `FastCluster` (one connection per master,
    MOVED/ASK followed); on Sentinel it connects to the master the sentinels name,
    asking again whenever it reconnects."""
    target = url if isinstance(url, RedisTarget) else parse_redis_url(url, flag)
    if target.kind == "single":
        return FastRedis.from_url(target.url)
    if target.tls:
        return None
    if target.kind == "cluster":
        return FastCluster(target.nodes, username=target.username, password=target.password)
    sentinel = sentinel_of(target)
    service = target.service

    async def master() -> tuple[str, int]:
        host, port = await sentinel.discover_master(service)
        return str(host), int(port)

    return FastRedis(
        resolve=master, db=target.db, username=target.username, password=target.password,
        where=f"the master of {service} (sentinel)", close_resolver=sentinel_close(sentinel),
    )  # fmt: skip


def sentinel_close(sentinel: Sentinel) -> Any:
    async def close() -> None:
        for client in sentinel.sentinels:
            await client.aclose()

    return close
