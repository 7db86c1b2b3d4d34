"""Exactly one typed wrapper per Lua script in `redbarn/lua/`; each returns the typed
record of its reply (decoded in `redbarn.queue.replies`, the only module that reads a
reply's positions).

Each transition is `_lib.lua` (shared helpers over the fixed KEYS layout) and the
script's own file; both are plain files, nothing is generated. Through FastRedis (the
frontends) they are functions of one Redis function library (`library()`, FCALL); where
Redis has no functions, and through redis-py `Script` objects (tests, fakeredis), each
is a script (`script_source()`, EVALSHA, reloaded on NOSCRIPT). Either way they work on
a single server and on a cluster (all KEYS share the domain's hash tag).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redbarn.queue import keys, replies
from redbarn.runtime.fastredis import FastRedis

SCRIPT_NAMES = (
    "enqueue_operation",
    "synchronize_worker",
    "unpark_worker",
    "touch_operation",
    "reap_domain",
    "kill_operation",
    "kill_queued",
    "add_drain",
    "remove_drain",
    "terminate_workers",
    "declare_queue",
    "wake_parked",
)

Reply = list[Any]  # a script's raw reply, for `replies` to decode


@dataclass(frozen=True)
class RequiredBlobs:
    """Blobs the enqueue script checks (and refreshes) before it enqueues: per blob, its
    keys in the same non-cluster Redis (one key per blob: its CAS key), and their TTL.
    `blobs`, when given, names the blobs in the same order (for the caller's errors)."""

    keys: Sequence[Sequence[str]]
    ttl_ms: int
    blobs: Sequence[Any] = ()


def script_body(name: str) -> str:
    return (resources.files("redbarn.lua") / f"{name}.lua").read_text()


def script_source(name: str) -> str:
    """Script mode (EVALSHA; Redis before 7, fakeredis): _lib.lua, begin(), then the
    script's body run as a function, so that whatever it returns gets the hints for the
    calling frontend appended (L.publish) as one nested list."""
    return (
        script_body("_lib")
        + "\nbegin()\nlocal function transition()\n"
        + script_body(name)
        + "\nend\nlocal reply = transition()\n"
        + "if #LOCAL > 0 then reply[#reply + 1] = LOCAL end\nreturn reply\n"
    )


@functools.cache
def library() -> tuple[str, str]:
    """Function mode (FCALL, Redis 7): (library name, FUNCTION LOAD source). _lib.lua is
    instantiated once per server, and each script is one function of the library:
    per call only begin() runs, not the definition of every helper (about 27 us of
    Redis time per call in script mode). Named after a hash of the source, so frontends
    of two versions each call their own during a rolling upgrade."""
    bodies = "".join(
        f"redis.register_function('{{lib}}_{name}', function(keys, args)\n"
        "  KEYS, ARGV = keys, args\n"
        "  begin()\n"
        "  local function transition()\n"
        f"{script_body(name)}\n"
        "  end\n"
        "  local reply = transition()\n"
        "  if #LOCAL > 0 then reply[#reply + 1] = LOCAL end\n"
        "  return reply\n"
        "end)\n"
        for name in SCRIPT_NAMES
    )
    code = "local KEYS, ARGV\n" + script_body("_lib") + "\n" + bodies
    name = "redbarn_" + hashlib.sha1(code.encode()).hexdigest()[:16]
    return name, f"#!lua name={name}\n" + code.replace("{lib}", name)


def function_name(script: str) -> str:
    """The FCALL name of a script in `library()`."""
    return f"{library()[0]}_{script}"


def _b(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode()


class Scripts:
    """The registered scripts of one Redis (or RedisCluster) client."""

    def __init__(
        self,
        redis: Any,
        fast: FastRedis | None = None,
        local_hints: Callable[[bytes], None] | None = None,
    ) -> None:
        """`fast`, when given, carries the calls (one pipelined connection to the same
        single server, see `redbarn.runtime.fastredis`); else redis-py's `Script` objects do.
        `local_hints` receives the hints a call made for its own frontend (the fid at
        the end of the config argument), which come back in the reply, not by pub/sub."""
        self._redis = redis
        self._local_hints = local_hints
        lib_source = library()[1]
        self._s: dict[str, Any] = {
            name: fast.function(lib_source, function_name(name), script_source(name))
            if fast
            else redis.register_script(script_source(name))
            for name in SCRIPT_NAMES
        }
        self.calls = 0
        # Told each call's name and round-trip seconds (the frontend's metrics).
        self.timer: Callable[[str, float], None] | None = None

    async def _run(
        self, name: str, domain: str, args: list[str | bytes], extra_keys: Sequence[str] = ()
    ) -> Reply:
        self.calls += 1
        start = time.perf_counter()
        raw = await self._s[name](
            keys=[*keys.domain_keys(domain), *extra_keys], args=[_b(a) for a in args]
        )
        if self.timer is not None:
            self.timer(name, time.perf_counter() - start)
        out, local = replies.local_hints(raw)
        if self._local_hints is not None:
            for message in local:
                self._local_hints(message)
        return out

    async def enqueue_operation(
        self,
        *,
        domain: str,
        config: str,
        opid: str,
        dedup_key: str,
        path: str,
        priority: str,
        executing: bytes,
        digest: str,
        digest_function: int,
        target_id: str = "",
        initial_size_class: int | None = None,
        largest_executing: bytes = b"",
        required: RequiredBlobs | None = None,
    ) -> replies.Enqueued | replies.EnqueueRefused | replies.BlobsMissing:
        """`initial_size_class`: the size class analyzer's choice (None: the smallest
        size class that has workers). `largest_executing`: when `executing` carries a
        shorter timeout for a smaller class, the Executing message a rerun on the largest
        class gets."""
        # The caller's frontend id (it watches the operation) is the config's last word.
        sc = "" if initial_size_class is None else keys.size_class_field(initial_size_class)
        args: list[str | bytes] = [
            config, opid, dedup_key, path, priority, executing, digest, str(digest_function),
            target_id, sc, largest_executing,
        ]  # fmt: skip
        if required is None:
            return replies.enqueue_operation(
                await self._run("enqueue_operation", domain, [*args, ""])
            )
        counts = [str(len(k)) for k in required.keys]
        extra = [key for blob_keys in required.keys for key in blob_keys]
        return replies.enqueue_operation(
            await self._run(
                "enqueue_operation", domain, [*args, str(required.ttl_ms), *counts], extra
            )
        )

    async def synchronize_worker(
        self,
        *,
        domain: str,
        config: str,
        wk: str,
        tokens: str,
        report: str,
        digest: str,
        result: bytes,
        failed: bool,
        prefer_idle: bool,
        gone_holder: str = "",
        mode: str = "",
    ) -> replies.SynchronizeReply:
        """`mode` (sharded queues): "" as usual, "n" never park, "l" leave after the
        report (see synchronize_worker.lua)."""
        reply = await self._run(
            "synchronize_worker",
            domain,
            [
                config,
                wk,
                tokens,
                report,
                digest,
                result,
                "1" if failed else "0",
                "1" if prefer_idle else "0",
                gone_holder,
                mode,
            ],
        )
        return replies.synchronize_worker(reply)

    async def unpark_worker(
        self, *, domain: str, config: str, wk: str
    ) -> replies.Assignment | replies.Idle:
        return replies.unpark_worker(await self._run("unpark_worker", domain, [config, wk]))

    async def wake_parked(self, *, domain: str, config: str, size_class: str) -> str | None:
        return replies.wake_parked(await self._run("wake_parked", domain, [config, size_class]))

    async def touch_operation(
        self, *, domain: str, config: str, opid: str, fid: str
    ) -> replies.OperationRead | None:
        return replies.touch_operation(
            await self._run("touch_operation", domain, [config, opid, fid])
        )

    async def reap_domain(self, *, domain: str, config: str, batch: int) -> replies.Reaped:
        return replies.reap_domain(await self._run("reap_domain", domain, [config, str(batch)]))

    async def kill_operation(
        self, *, domain: str, config: str, opid: str, result: bytes
    ) -> int | None:
        return replies.killed(await self._run("kill_operation", domain, [config, opid, result]))

    async def kill_queued(
        self, *, domain: str, config: str, size_class: str, result: bytes, batch: int
    ) -> replies.QueuedKilled:
        return replies.kill_queued(
            await self._run("kill_queued", domain, [config, size_class, result, str(batch)])
        )

    async def add_drain(
        self, *, domain: str, config: str, size_class: str, pattern_json: str, tokens: str
    ) -> bool:
        return replies.found(
            await self._run("add_drain", domain, [config, size_class, pattern_json, tokens])
        )

    async def remove_drain(
        self, *, domain: str, config: str, size_class: str, pattern_json: str
    ) -> bool:
        return replies.found(
            await self._run("remove_drain", domain, [config, size_class, pattern_json])
        )

    async def terminate_workers(
        self, *, domain: str, config: str, tokens: str
    ) -> replies.Terminated:
        return replies.terminate_workers(
            await self._run("terminate_workers", domain, [config, tokens])
        )

    async def declare_queue(
        self, *, domain: str, config: str, size_classes: str, stickiness_limits: str = ""
    ) -> int:
        return replies.declare_queue(
            await self._run("declare_queue", domain, [config, size_classes, stickiness_limits])
        )
