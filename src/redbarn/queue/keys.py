"""The key catalogue: every Redis key the scheduler uses, with its type, writers and lifetime.

A *domain* is one platform queue: (instance-name prefix, canonical platform), with all
its size classes, so that the size-class fallback (fail on a small class, rerun once on
the largest) is one atomic script. Its id `P` is the first 16 hex digits of
sha256(prefix + "\\0" + platform-json). Every domain key is `redbarn:v1:{P}:<what>`: the
hash tag puts a domain in one Redis Cluster slot, and every script receives the same
fixed list of thirteen keys (`DOMAIN_KEYS`, in that order), so no script builds a key
name. Per-entity records (a task, an operation, a worker, an invocation node) are
fields of per-domain hashes or members of per-domain sorted sets, never keys of their
own. Records are short strings of fields joined by \\x1f (see `codec`); Lua compares
only those plain fields and scores. Protobuf payloads are opaque strings.

Deviation from DESIGN.md rule 1 ("a domain is ... size class"): the size class is a
prefix of members and fields inside the domain (`<sc>` = 10 digits) instead of a
separate hash tag; decided by the lead so the fallback analyzer stays atomic.

Other deviations from Buildbarn, deliberate or for now (each keeps the protocol intact):
- Executing counts per invocation node count executing *operations* in the subtree, not
  distinct workers; they differ only when one deduplicated task has operations in two
  sibling invocations.
- Idle workers park on the invocation of the task they last completed (R35) and direct
  assignment walks up from the task's invocations (R36); within the first subtree that
  has parked workers it takes the invocation's own, else the first below it in key
  order (not Buildbarn's lowest-utilisation child).
- Within an invocation: priority, then FIFO (expected_duration is not a sort key, R24).
- R18 holds for predeclared queues (`--platform-queue`): a worker of a size class above
  the largest declared one, or without one when they are used, is refused. On a queue
  that is not predeclared, a worker may still add any size class (Buildbarn refuses it).
- A drained worker that parks stays held but is not offered work; RemoveDrain makes it
  eligible again and hints it only if work is queued (else it sees work at its next poll).
- Operation names are "<P>.<32 hex>", not bare UUIDs, so that they route (DESIGN rule 2).
- The invocation tree's levels follow SchedulerConfig.invocation_keys (--action-router's
  invocation key extractors); by default, as in Buildbarn's example deployment, every
  operation sits two levels down ("/c<id>/t<id>").

Ids: a task id is `t<n>` (per domain counter); an operation id is 32 hex digits and
its public name is `<P>.<opid>`, so any frontend routes a name with no lookup. A
worker key is `<sc> <worker-id-json>` (Go json.Marshal form, sorted keys).
An invocation path is "" (root) or "/<el>/<el>" where an element is `c<id>` for a
correlated_invocations_id or `t<id>` for a tool_invocation_id, percent-escaped.

Global keys (no hash tag; touched by single small commands, never inside a script):

redbarn:v1:platforms  HASH  P -> json {"instance_name_prefix": ..., "platform": <jsonpb>}
    Written with HSETNX by a frontend the first time a worker synchronizes for a domain
    (HSET on every reaper tick for a predeclared queue); HDEL by the reaper when the
    domain is empty. Read (cached briefly) by Execute.
    redis-cli HGETALL redbarn:v1:platforms
redbarn:v1:started  STRING  server time (ms) of the first start (SET NX): start-up grace.
    redis-cli GET redbarn:v1:started
redbarn:v1:reaper  STRING  fid of the frontend whose reaper tick it is (SET NX PX the
    reaper interval): one reaper pass per interval for the whole cluster.
redbarn:v1:iscc:<digest function>:<reduced action digest>:<instance name>  STRING
    feedback-driven size class statistics of one action (redbarn.sizeclass.Entry:
    Buildbarn's PreviousExecutionStats and pending outcomes), 7-day TTL, any slot.
    Only with --action-router's feedbackDriven (redbarn.queue.sizeclass; docs/size-classes.md).
    redis-cli --scan --pattern 'redbarn:v1:iscc:*'

Domain keys (`redbarn:v1:{P}:<what>`; no TTL, bounded by the reaper; survive noeviction):

meta      HASH  scs = "<sc> <sc>..." size classes; pre = the predeclared ones (never
          removed; declare_queue.lua); w<sc> = worker count; z<sc> = removal
          time (ms) of a worker-less size class; seq = the order stamp of queued
          operations (FIFO), of invocation starts (ties, R33) and the task ids (t<seq>;
          tseq, the task counter of earlier versions, is no longer drawn). Writers: synchronize,
          enqueue, reap. Lifetime: the domain's.
          redis-cli HGETALL 'redbarn:v1:{P}:meta'
workers   HASH  <wk> -> "tid ep holder-fid terminating tokens last-invocation stickiness-starts"
          (last-invocation: the path of the task it last completed itself, R35;
          stickiness-starts: ms per stickiness level, R34). One per worker; removed by
          reap when its lease expires. Writers: synchronize, unpark, enqueue (direct
          assignment), reap, terminate. "who runs what":
          redis-cli HGETALL 'redbarn:v1:{P}:workers'
leases    ZSET  <wk> scored by deadline ms (last sync end + worker_timeout; while parked,
          park start + idle timeout + worker_timeout). Reaped when due.
          redis-cli ZRANGE 'redbarn:v1:{P}:leases' 0 -1 WITHSCORES
parked    ZSET(lex) "<sc> <last-invocation>/\x1f<worker-json>" of idle workers held in a
          Synchronize that may receive work directly (drained ones are held but not
          here); "<sc> <path>/" is every parked worker at or below an invocation.
          redis-cli ZRANGE 'redbarn:v1:{P}:parked' 0 -1
tasks     HASH  <tid> -> "stage sc epoch attempts rehands queued_ms digest fn dedup worker
          fallback ops"; <tid>|a = DesiredState.Executing bytes (dropped at completion); <tid>|A = the
          Executing bytes of a rerun on the largest size class when the analyzer gave the
          first class a shorter timeout (swapped in by the fallback);
          <tid>|s = worker stages of the current run, "<s|f|r|u><ms> ..." (assigned,
          fetching inputs, running, uploading outputs; streams show them as
          partial_execution_metadata);
          <tid>|r = result ("R"+ExecuteResponse or "E<code>\\x1f<message>"). Deleted with
          the task's last operation.
          redis-cli HGET 'redbarn:v1:{P}:tasks' t42
ops       HASH  <opid> -> "tid prio+seq path watcher-fids". Deleted by reap when the op's
          opgc deadline passes. redis-cli HGET 'redbarn:v1:{P}:ops' <opid>
queued    ZSET(lex, scores 0) "<sc> <path>\\x1f<prio+2^31:10><seq:16> <opid>": queued ops,
          priority then FIFO per invocation. "what is queued":
          redis-cli ZRANGE 'redbarn:v1:{P}:queued' 0 -1
pick      ZSET(lex) "<sc> <parent>\\x1f<log2 score:15><last-started stamp:15><child>": the
          children of every invocation node that have queued work, best first.
          redis-cli ZRANGE 'redbarn:v1:{P}:pick' 0 -1
inv       HASH  "<sc> <path>" -> "executing last-started-stamp first-prio pick-member":
          invocation nodes with queued or executing work (others are deleted).
          redis-cli HGETALL 'redbarn:v1:{P}:inv'
inflight  HASH  dedup-key (sha256 of fn-hash-size-instance, 32 hex) -> tid, while the
          task is queued or executing. redis-cli HGETALL 'redbarn:v1:{P}:inflight'
drains    HASH  "<sc> <pattern-json>" -> "created_ms\\x1ftokens".
          redis-cli HGETALL 'redbarn:v1:{P}:drains'
opgc      ZSET  <opid> scored by last waiter touch + operation_retention. "why is this
          stuck / when does it go": redis-cli ZRANGE 'redbarn:v1:{P}:opgc' 0 -1 WITHSCORES
opnames   ZSET  <opid>, every score 0: the operations in name order, so ListOperations
          pages with ZRANGEBYLEX. redis-cli ZRANGE 'redbarn:v1:{P}:opnames' 0 9

Shards (`--queue-shards K`, predeclared platform queues only): a platform queue P is K
domains, `shard_domains(P, K)`, each a complete set of the domain keys above
under its own hash tag, whose slots are spread evenly around the slot ring, so the
queue's load spreads over K slots (one per master when a cluster has K masters with
equal slot ranges). Shard 0 is P itself. The registry entry of P says `"shards": K`; the other
shards have no entry of their own. An action goes to shard `shard_of(digest, K)` (in-
flight dedup stays exact: the same action always meets itself there), and its operation
is named after its shard's domain, so names still route with no lookup. A worker parks
in its home shard `shard_of(worker-json, K)`; before it parks it looks for queued work
in the other shards and takes it there (its record in that shard is removed when it
reports the completion), and an Execute queued where no worker is parked wakes a worker
parked in another shard (wake_parked.lua). Redis:
    redis-cli HGET redbarn:v1:platforms P      # ... "shards": K
    python -c 'from redbarn.queue import keys; print(keys.shard_domains("P", K))'

Pub/sub (not keys): scripts PUBLISH hints to `redbarn:v1:fe:<fid>`: "w <P> <wk>" when
a parked worker got work, "o <P>.<opid>" when an operation changed stage. Each may be
followed by \x1f and the new state, so the waiter need not read it back: for "w", the
Redis time in us, then task id, epoch, queued ms, next-sync ms and the Executing
message (L.offer); for "o", the time in us, stage, worker stages, worker key and, once
done, the result (L.notify_task). A bare hint (drains, terminate) means "re-read".
Hints for the frontend making the call (its fid ends the config argument) are not
published: the script's reply carries them as a last, nested list (scripts.py).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
import zlib

from redis.crc import key_slot

PREFIX = "redbarn:v1"
PLATFORMS = f"{PREFIX}:platforms"
STARTED = f"{PREFIX}:started"
# STRING: the frontend id that runs the reaper's current tick (SET NX PX the interval),
# so the cluster reaps once per interval however many frontends there are.
REAPER_TURN = f"{PREFIX}:reaper"
CHANNEL_PREFIX = f"{PREFIX}:fe:"

DOMAIN_KEYS = (
    "meta",
    "workers",
    "leases",
    "parked",
    "tasks",
    "ops",
    "queued",
    "pick",
    "inv",
    "inflight",
    "drains",
    "opgc",
    "opnames",
)

_OP_NAME = re.compile(r"^([0-9a-f]{16})\.([0-9a-f]{32})$")


def domain_id(instance_name_prefix: str, platform_json: str) -> str:
    """The domain id P of a platform queue."""
    raw = f"{instance_name_prefix}\0{platform_json}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


SLOTS = 16384  # Redis Cluster's hash slots


def shard_domain(domain: str, shard: int, shards: int) -> str:
    """The domain id of shard `shard` of platform queue `domain` spread over `shards`
    (`--queue-shards`). Shard 0 is the queue's own domain, so one shard is exactly the
    unsharded queue. Shard i > 0 is a domain of its own, with its own hash tag: the
    first 16 hex digits of sha256("<P>#<i>#<n>") for the first n whose hash slot lies
    in the i-th of `shards` equal ranges of the 16,384 slots after the range holding
    P's. A cluster's masters own contiguous slot ranges (`redis-cli --cluster create`
    gives each an equal one), so K shards over K masters put one shard on each."""
    if shard == 0:
        return domain
    arc = SLOTS / shards
    want = (int(key_slot(domain.encode()) // arc) + shard) % shards
    for n in itertools.count():
        candidate = hashlib.sha256(f"{domain}#{shard}#{n}".encode()).hexdigest()[:16]
        if int(key_slot(candidate.encode()) // arc) == want:
            return candidate
    raise AssertionError("unreachable")


def shard_domains(domain: str, shards: int) -> list[str]:
    """Every shard's domain id of a platform queue spread over `shards` slots."""
    return _shard_domains(domain, max(1, shards))


@functools.lru_cache(maxsize=4096)
def _shard_domains(domain: str, shards: int) -> list[str]:
    return [shard_domain(domain, i, shards) for i in range(shards)]


def shard_of(text: str, shards: int) -> int:
    """Which of `shards` shards `text` (an action digest "hash-size", a worker id JSON)
    belongs to: CRC-32 modulo the count, the same on every frontend."""
    return zlib.crc32(text.encode()) % shards if shards > 1 else 0


def domain_key(domain: str, what: str) -> str:
    return f"{PREFIX}:{{{domain}}}:{what}"


def domain_keys(domain: str) -> list[str]:
    """KEYS[1..13] of every script, in the fixed order of DOMAIN_KEYS."""
    return [domain_key(domain, what) for what in DOMAIN_KEYS]


def channel(fid: str) -> str:
    return CHANNEL_PREFIX + fid


def size_class_field(size_class: int) -> str:
    return f"{size_class:010d}"


def worker_key(size_class: int, worker_json: str) -> str:
    return f"{size_class_field(size_class)} {worker_json}"


def size_class_of(wk: str) -> str:
    """The size class field (10 digits) of a worker key."""
    return wk[:10]


def worker_json_of(wk: str) -> str:
    """The worker-id JSON of a worker key (`worker_key`'s inverse, less the size class)."""
    return wk[11:]


def operation_name(domain: str, opid: str) -> str:
    return f"{domain}.{opid}"


def parse_operation_name(name: str) -> tuple[str, str] | None:
    """(P, opid) of a routable operation name, or None if it is not one of ours."""
    m = _OP_NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def release_topic(domain: str, wk: str) -> str:
    """The hint asking the frontend that holds worker `wk`'s park to release it if the
    worker is not in a Synchronize there (it came back through another frontend)."""
    return f"r {domain} {wk}"


def worker_topic(domain: str, wk: str) -> str:
    """The hint published when parked worker `wk` of `domain` was given work."""
    return f"w {domain} {wk}"


def operation_topic(name: str) -> str:
    """The hint published when operation `name` changed stage."""
    return f"o {name}"
