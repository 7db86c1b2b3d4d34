"""The scripts on a real 3-master Redis Cluster that this test starts itself."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from qhelpers import FAST, action, assigned, is_idle, request, synchronize
from redis.asyncio.cluster import RedisCluster

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import keys
from redbarn.queue.scheduler import PollingHints, Scheduler
from redbarn.runtime.redisserver import find_redis_server, port_in_use

Stage = re_pb2.ExecutionStage


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free and valid too. Both stay
    below the kernel's ephemeral range (32768 and up), where the other tests' servers
    and clients take their ports, so nothing can grab one between check and bind."""
    rng = random.Random()
    while True:
        port = rng.randrange(12000, 22000)
        if (
            port not in taken
            and not port_in_use("127.0.0.1", port)
            and not port_in_use("127.0.0.1", port + 10000)
        ):
            taken.add(port)
            return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is needed to create a cluster")
    binary = find_redis_server()
    base: Path = tmp_path_factory.mktemp("cluster")
    taken: set[int] = set()
    ports = [_cluster_port(taken) for _ in range(3)]
    procs = []
    for port in ports:
        d = base / str(port)
        d.mkdir()
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(d / "nodes.conf"),
                    "--dir",
                    str(d),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    str(d / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for port, proc in zip(ports, procs, strict=True):
            deadline = time.monotonic() + 30
            while (
                subprocess.run([cli, "-p", str(port), "ping"], capture_output=True).stdout.strip()
                != b"PONG"
            ):
                if proc.poll() is not None:
                    log = (base / str(port) / "redis.log").read_text(errors="replace")
                    raise AssertionError(f"cluster node on port {port} exited: {log[-2000:]}")
                assert time.monotonic() < deadline, "cluster node did not start"
                time.sleep(0.05)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 60
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True
            ).stdout
        ):
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.1)
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


async def test_scripts_on_redis_cluster(cluster: list[int]) -> None:
    rc = RedisCluster(host="127.0.0.1", port=cluster[0])
    try:
        s = Scheduler(rc, FAST, hints=PollingHints())
        await s.start()
        linux = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="os", value="linux")])
        # Two domains: their keys land in different slots (and likely different nodes).
        for prefix in ("a", "b"):
            assert is_idle(await synchronize(s, request("1", prefix=prefix, platform=linux)))
        for prefix in ("a", "b"):
            digest, a = action(1, platform=linux)
            v = await s.operations.execute(
                instance_name=prefix, action_digest=digest, action=a, digest_function=1
            )
            assert v.stage == Stage.QUEUED
            got = assigned(await synchronize(s, request("1", prefix=prefix, platform=linux)))
            assert got == digest
            done = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=0))
            await synchronize(
                s, request("1", "completed", digest, response=done, prefix=prefix, platform=linux)
            )
            assert (await s.operations.get_operation_view(v.name)).done
        # Park + direct assignment, kill, drain and the reaper, on the cluster.
        sync = asyncio.create_task(synchronize(s, request("2", prefix="a", platform=linux)))
        await asyncio.sleep(0.05)
        await s.control.set_drain(
            add=True,
            instance_name_prefix="a",
            platform=linux,
            size_class=0,
            pattern={"thread": "9"},
        )
        await s.control.set_drain(
            add=False,
            instance_name_prefix="a",
            platform=linux,
            size_class=0,
            pattern={"thread": "9"},
        )
        await sync
        await asyncio.sleep(0.4)
        totals = await s.reaper.reap()
        assert totals.workers == 3
        slots = {
            keys.domain_key(
                keys.domain_id(p, '{"properties":[{"name":"os","value":"linux"}]}'), "meta"
            )
            for p in "ab"
        }
        assert len({rc.keyslot(k) for k in slots}) == 2
        digest, a = action(5, platform=linux)  # the domain still has a (worker-less) queue
        v = await s.operations.execute(
            instance_name="a/x", action_digest=digest, action=a, digest_function=1
        )
        assert v.stage == Stage.QUEUED
    finally:
        await rc.aclose()


async def test_plain_client_is_not_required(redis_url: str) -> None:
    # Sanity: the same Scheduler works on a single server (what the other tests use).
    r = aioredis.Redis.from_url(redis_url)
    try:
        s = Scheduler(r, FAST, hints=PollingHints())
        assert is_idle(await synchronize(s, request("1")))
    finally:
        await r.aclose()


async def test_hub_on_redis_cluster(cluster: list[int]) -> None:
    """The frontend's hint channel on a cluster (issue 19): it subscribes on one node,
    hints published through any node reach it (PUBLISH is broadcast), and PUBSUB
    NUMSUB, counted on every node, finds it alive."""
    from redbarn.frontend.hub import Hub
    from redbarn.runtime.redisurl import redis_client

    rc = redis_client(f"redis+cluster://127.0.0.1:{cluster[-1]}")
    assert isinstance(rc, RedisCluster)
    hub = Hub(rc, "fe-cluster-test")
    await hub.start()
    try:
        await asyncio.wait_for(hub.connected.wait(), 10)
        for port in cluster:
            node = aioredis.Redis(port=port)
            try:
                waiting = asyncio.create_task(hub.wait(f"topic-{port}", 10))
                await asyncio.sleep(0)
                await node.publish(keys.channel(hub.fid), f"topic-{port}\x1fpayload".encode())
                assert await waiting == b"payload"
                # Asked through any node, the hub counts as alive; an unknown one does not.
                assert await Hub(node, "asker").alive(hub.fid) is (port == hub_port(rc, hub))
            finally:
                await node.aclose()
        assert await hub.alive(hub.fid)
        assert not await hub.alive("no-such-frontend")
    finally:
        await hub.stop()
        await rc.aclose()


def hub_port(rc: RedisCluster, hub: object) -> int:
    """The port of the node the hub's subscription lives on (its first attempt's)."""
    return int(rc.get_nodes()[0].port)


async def test_scheduler_on_fast_cluster(cluster: list[int]) -> None:
    """The scheduler's script calls over FastCluster (the frontend's pipelined client
    on a redis+cluster:// URL): two platform queues in two slots, on two masters."""
    from redbarn.runtime.fastredis import FastCluster

    rc = RedisCluster(host="127.0.0.1", port=cluster[0])
    fast = FastCluster([("127.0.0.1", cluster[1])])
    try:
        s = Scheduler(rc, FAST, hints=PollingHints(), fast=fast)
        await s.start()
        linux = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="os", value="fast")])
        for prefix in ("c", "d"):
            assert is_idle(await synchronize(s, request("1", prefix=prefix, platform=linux)))
            digest, a = action(7, platform=linux)
            v = await s.operations.execute(
                instance_name=prefix, action_digest=digest, action=a, digest_function=1
            )
            assert v.stage == Stage.QUEUED
            got = assigned(await synchronize(s, request("1", prefix=prefix, platform=linux)))
            assert got == digest
        assert len(fast._clients) >= 2  # the two queues' masters, at least
    finally:
        await fast.aclose()
        await rc.aclose()


async def test_sharded_queue_on_three_masters(cluster: list[int]) -> None:
    """--queue-shards 3 on the 3-master cluster: one shard on each master, Executes in
    all three, and one worker (over FastCluster) runs every one of them."""
    import dataclasses

    from redbarn import digests
    from redbarn.queue import codec
    from redbarn.queue.config import PredeclaredQueue
    from redbarn.runtime.fastredis import FastCluster

    platform = re_pb2.Platform(properties=[re_pb2.Platform.Property(name="os", value="shard")])
    queue = PredeclaredQueue("", codec.platform_json(platform), (0,))
    cfg = dataclasses.replace(
        FAST, predeclared=(queue,), queue_shards=3, operation_retention=30.0, worker_timeout=5.0
    )
    rc = RedisCluster(host="127.0.0.1", port=cluster[0])
    fast = FastCluster([("127.0.0.1", cluster[1])])
    try:
        await rc.initialize()
        shards = keys.shard_domains(queue.domain, 3)
        owners = {rc.get_node_from_key(keys.domain_key(d, "meta")).port for d in shards}
        assert len(owners) == 3  # one shard per master
        s = Scheduler(rc, cfg, hints=PollingHints(), fast=fast)
        await s.start()
        names = []
        for n in range(12):
            digest, a = action(1000 + n, platform=platform)
            v = await s.operations.execute(
                instance_name="", action_digest=digest, action=a, digest_function=1
            )
            names.append(v.name)
        assert {keys.parse_operation_name(n)[0] for n in names} == set(shards)  # type: ignore[index]
        done = set()
        resp = await synchronize(s, request("1", platform=platform))
        while (digest := assigned(resp)) is not None:
            done.add(digests.key(digest))
            resp = await synchronize(s, request("1", "completed", digest, platform=platform))
        assert len(done) == 12
        for name in names:
            view = await s.operations.get_operation_view(name)
            assert view.stage == Stage.COMPLETED
    finally:
        await fast.aclose()
        await rc.aclose()


def _slot_owner(port: int, slot: int) -> tuple[int, bytes]:
    """(port, node id) of the master holding `slot`."""
    import redis as sync_redis

    with sync_redis.Redis(port=port) as r:
        for first, last, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(master[1]), master[2]
    raise AssertionError(f"slot {slot} has no master")


async def test_fast_cluster_follows_moved_and_ask(cluster: list[int]) -> None:
    """MOVED: a slot map that names the wrong master (as after a failover) is corrected
    and the call goes through once, at the right master. ASK: while a slot migrates,
    a key the old master no longer holds is asked for at the new one, after ASKING."""
    import redis as sync_redis
    from redis.crc import key_slot

    from redbarn.runtime.fastredis import FastCluster

    fast = FastCluster([("127.0.0.1", cluster[0])])
    incr = fast.script("return redis.call('INCR', KEYS[1])")
    key = "fast:{moved}:n"
    slot = key_slot(key.encode())
    owner, _ = _slot_owner(cluster[0], slot)
    wrong = next(p for p in cluster if p != owner)
    try:
        assert await incr(keys=[key]) == 1
        refreshes = fast.refreshes
        fast._slots[slot] = ("127.0.0.1", wrong)  # a stale map
        assert await incr(keys=[key]) == 2  # MOVED, then run once where it belongs
        assert fast._slots[slot] == ("127.0.0.1", owner)
        with sync_redis.Redis(port=owner) as r:
            assert r.get(key) == b"2"
        await fast.execute_keyed(key, "PING")
        assert fast.refreshes == refreshes + 1  # the map was read again after MOVED

        # ASK: migrate an empty slot from its owner to another master, half way.
        ask_key = "fast:{asked}:n"
        ask_slot = key_slot(ask_key.encode())
        source, source_id = _slot_owner(cluster[0], ask_slot)
        target = next(p for p in cluster if p != source)
        with sync_redis.Redis(port=target) as t, sync_redis.Redis(port=source) as s:
            target_id = t.execute_command("CLUSTER", "MYID")
            t.execute_command("CLUSTER", "SETSLOT", ask_slot, "IMPORTING", source_id)
            s.execute_command("CLUSTER", "SETSLOT", ask_slot, "MIGRATING", target_id)
            try:
                assert await incr(keys=[ask_key]) == 1  # ASK -> ASKING + EVALSHA on target
                with sync_redis.Redis(port=target) as t2:
                    t2.execute_command("ASKING")
                    assert t2.get(ask_key) == b"1"  # written on the importing master
                assert s.execute_command("CLUSTER", "COUNTKEYSINSLOT", ask_slot) == 0
                assert fast._slots[ask_slot] == ("127.0.0.1", source)  # ASK leaves the map
            finally:
                with sync_redis.Redis(port=target) as t2:
                    t2.execute_command("ASKING")
                    t2.delete(ask_key)
                t.execute_command("CLUSTER", "SETSLOT", ask_slot, "STABLE")
                s.execute_command("CLUSTER", "SETSLOT", ask_slot, "STABLE")
    finally:
        await fast.aclose()


async def test_frontend_with_cas_on_the_cluster(cluster: list[int], redis_url: str) -> None:
    """`--cas-redis redis+cluster://…` through a real frontend and channel: blobs
    written in one batch land on several masters, are found and read back, and an
    Action Cache entry round-trips."""
    import grpc
    from redis.crc import key_slot

    from redbarn.digests import Digest
    from redbarn.frontend.config import FrontendConfig
    from redbarn.frontend.server import create_server
    from redbarn.frontend.storage.cas_keys import cas_key
    from redbarn.proto import remote_execution_pb2_grpc as re_grpc

    config = FrontendConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        cas_redis_url=f"redis+cluster://127.0.0.1:{cluster[2]}",
        health_interval=0.2,
        grace_period=0.5,
    )
    server, port = await create_server(config)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        cas = re_grpc.ContentAddressableStorageStub(channel)
        ac = re_grpc.ActionCacheStub(channel)
        blobs = [b"cluster blob %d" % i for i in range(12)]
        digests = [
            re_pb2.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b)) for b in blobs
        ]
        Req = re_pb2.BatchUpdateBlobsRequest.Request
        put = await cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(
                requests=[Req(digest=d, data=b) for d, b in zip(digests, blobs, strict=True)]
            )
        )
        assert [r.status.code for r in put.responses] == [0] * len(blobs)
        absent = re_pb2.Digest(hash="0" * 64, size_bytes=5)
        missing = await cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[*digests, absent])
        )
        assert list(missing.missing_blob_digests) == [absent]
        read = await cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=digests))
        assert [r.data for r in read.responses] == blobs
        # The blobs are spread over the masters, each stored where its slot lives.
        holders = set()
        for b in blobs:
            key = cas_key(Digest.of(b))
            slot_port, _ = _slot_owner(cluster[0], key_slot(key.encode()))
            async with aioredis.Redis(port=slot_port) as node:
                assert await node.get(key) == b
            holders.add(slot_port)
        assert len(holders) >= 2
        result = re_pb2.ActionResult(exit_code=3, stdout_digest=digests[0])
        await ac.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(action_digest=digests[1], action_result=result)
        )
        got = await ac.GetActionResult(re_pb2.GetActionResultRequest(action_digest=digests[1]))
        assert got == result
    finally:
        await channel.close()
        await server.stop(0)
