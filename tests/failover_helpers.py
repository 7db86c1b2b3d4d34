"""Real Redis topologies for the failover tests: a Redis Cluster with replicas, and one
master with a replica watched by three sentinels.

Every node is a `redis-server` child process (tests/cluster.py's `Proc`) on loopback,
without persistence, logging to the test's tmp dir. Timeouts are short so a failover
takes about two seconds: cluster-node-timeout 1000 ms, and for Sentinel
down-after-milliseconds 1000 with failover-timeout 3000.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from cluster import Proc

from redbarn.queue import keys
from redbarn.runtime.redisserver import find_redis_server, port_in_use

NODE_TIMEOUT_MS = 1000


def _port(taken: set[int], bus: bool = False) -> int:
    """A free port below the ephemeral range (where other tests' clients take theirs);
    with `bus`, its cluster bus port (+10000) is free as well."""
    rng = random.Random()
    while True:
        port = rng.randrange(12000, 22000)
        if port in taken or port_in_use("127.0.0.1", port):
            continue
        if bus and port_in_use("127.0.0.1", port + 10000):
            continue
        taken.add(port)
        return port


def _ping(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5) as r:
            return bool(r.ping())
    except redis.RedisError:
        return False


def _wait(proc: Proc, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not _ping(port):
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not answer PING")
        time.sleep(0.05)


@dataclass
class RedisNodes:
    """A set of redis-server processes (data nodes and sentinels) to stop together."""

    tmp: Path
    procs: dict[int, Proc] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)

    def start(self, port: int, *args: str, name: str = "redis") -> Proc:
        d = self.tmp / f"{name}-{port}"
        d.mkdir(parents=True, exist_ok=True)
        p = Proc(
            f"{name}-{port}",
            [
                find_redis_server(), *args, "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(d), "--save", "", "--appendonly", "no",
            ],
            d / "out.log",
        ).start()  # fmt: skip
        self.procs[port] = p
        _wait(p, port)
        return p

    def kill(self, port: int) -> None:
        self.procs[port].kill()

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop(grace=3)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.log()[-1500:]}" for p in self.procs.values())


def start_cluster(nodes: RedisNodes, masters: int = 3, replicas: int = 1) -> list[int]:
    """A Redis Cluster of `masters` masters with `replicas` replicas each; its ports."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise FileNotFoundError("redis-cli is needed to create a cluster")
    ports = [_port(nodes.taken, bus=True) for _ in range(masters * (1 + replicas))]
    for port in ports:
        nodes.start(
            port,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(nodes.tmp / f"nodes-{port}.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            name="cluster",
        )  # fmt: skip
    subprocess.run(
        [
            cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas", str(replicas), "--cluster-yes",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not all(cluster_ok(p) for p in ports) or len(cluster_masters(ports[0])) != masters:
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not converge:\n" + nodes.logs())
        time.sleep(0.1)
    # Wait until every replica has synced, so the first failover has something to promote.
    while not all(_replica_synced(p) for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("the replicas did not sync:\n" + nodes.logs())
        time.sleep(0.1)
    return ports


def cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as r:
            return b"cluster_state:ok" in r.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False


def cluster_masters(port: int) -> dict[int, tuple[int, int]]:
    """{master port: (first slot, last slot)} of the masters that hold slots."""
    with redis.Redis(port=port, socket_timeout=1) as r:
        slots = r.execute_command("CLUSTER", "SLOTS")
    return {int(entry[2][1]): (int(entry[0]), int(entry[1])) for entry in slots}


def _replica_synced(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=1) as r:
        info = r.info("replication")
    return info["role"] == "master" or info.get("master_link_status") == "up"


def platform_master(ports: list[int]) -> tuple[int, str]:
    """(port of the master holding the platform queue's slot, the queue's domain id):
    the first queue in the registry of platforms."""
    alive = [p for p in ports if _ping(p)]
    with redis.RedisCluster(host="127.0.0.1", port=alive[0]) as rc:
        domains = list(rc.hgetall(keys.PLATFORMS))
        assert domains, "no platform queue registered yet"
        domain = domains[0].decode()
        node = rc.get_node_from_key(keys.domain_key(domain, "meta"))
        assert node is not None
        return int(node.port), domain


def start_sentinels(nodes: RedisNodes, service: str = "mymaster") -> tuple[int, int, list[int]]:
    """One master, one replica and three sentinels (quorum 2); (master, replica,
    sentinel ports)."""
    master = _port(nodes.taken)
    replica = _port(nodes.taken)
    nodes.start(master, name="master")
    nodes.start(replica, "--replicaof", "127.0.0.1", str(master), name="replica")
    deadline = time.monotonic() + 30
    while not _replica_synced(replica):
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not sync:\n" + nodes.logs())
        time.sleep(0.1)
    sentinels = [_port(nodes.taken) for _ in range(3)]
    for port in sentinels:
        conf = nodes.tmp / f"sentinel-{port}.conf"
        conf.write_text(
            f"sentinel monitor {service} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 3000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        p = Proc(
            f"sentinel-{port}",
            [
                find_redis_server(), str(conf), "--sentinel", "--port", str(port),
                "--bind", "127.0.0.1", "--dir", str(nodes.tmp),
            ],
            nodes.tmp / f"sentinel-{port}.log",
        ).start()  # fmt: skip
        nodes.procs[port] = p
        _wait(p, port)
    # Every sentinel knows the replica and the other sentinels before the test kills anything.
    while not all(_sentinel_ready(p, service) for p in sentinels):
        if time.monotonic() > deadline:
            raise RuntimeError("the sentinels did not see each other:\n" + nodes.logs())
        time.sleep(0.1)
    return master, replica, sentinels


def _sentinel_ready(port: int, service: str) -> bool:
    with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as r:
        state = r.execute_command("SENTINEL", "MASTER", service)
        fields = (
            dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else state
        )
        return int(fields["num-slaves"]) >= 1 and int(fields["num-other-sentinels"]) >= 2


def sentinel_master(sentinel_port: int, service: str = "mymaster") -> int:
    with redis.Redis(port=sentinel_port, socket_timeout=1, decode_responses=True) as r:
        _host, port = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
    return int(port)
