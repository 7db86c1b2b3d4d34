"""Invariants of a run, checked at its end from Redis and from what the clients saw.

Used by the soak test (and usable after any system test):

- every Execute got exactly one final result (`check_results`);
- no operation is left queued or executing (`check_no_work_left`);
- no worker lease is left behind, once workers are stopped and the worker timeout has
  passed (`check_no_workers_left`);
- after the retention window the scheduler's key count is back to its baseline
  (`scheduler_keys` before the run, `check_baseline` after).

Each check returns a list of violations (empty = holds), so a test can report them all
at once. Key names are those of src/redbarn/queue/keys.py; CAS, AC and upload keys
(src/redbarn/frontend/storage/redis.py) are storage with their own TTLs, not scheduler
state, and are left out of the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import redis

from redbarn.queue import keys
from redbarn.queue.codec import SEP

STORAGE_PREFIXES = (f"{keys.PREFIX}:cas:", f"{keys.PREFIX}:ac:", f"{keys.PREFIX}:upload:")
# Keys that come and go on their own: the reaper's turn lives for one reaper interval.
TRANSIENT = {keys.REAPER_TURN}


def scheduler_keys(r: redis.Redis) -> set[str]:
    """Every redbarn key that is not CAS/AC/upload storage (nor transient)."""
    out = set()
    for k in r.scan_iter(f"{keys.PREFIX}:*", count=1000):
        name = k.decode() if isinstance(k, bytes) else k
        if not name.startswith(STORAGE_PREFIXES) and name not in TRANSIENT:
            out.add(name)
    return out


def domains(r: redis.Redis) -> set[str]:
    """Domain ids P seen in any domain key (registered or not)."""
    out = set()
    for name in scheduler_keys(r):
        rest = name[len(keys.PREFIX) + 1 :]
        if rest.startswith("{") and "}" in rest:
            out.add(rest[1 : rest.index("}")])
    return out


@dataclass
class ActionResult:
    """What the clients saw for one action: each final result, and errors."""

    finals: list[object] = field(default_factory=list)  # ExecuteResponse per final result
    errors: list[str] = field(default_factory=list)  # Execute calls that ended without one


def check_results(
    results: Mapping[int, ActionResult],
    expected: Iterable[int],
    is_correct: Callable[[int, object], str | None],
) -> list[str]:
    """Every action got exactly one final result, and `is_correct(i, response)` returns
    None for it (else a description of what is wrong)."""
    violations = []
    for i in expected:
        res = results.get(i)
        if res is None or not res.finals:
            errs = res.errors if res else []
            violations.append(f"action {i}: no final result (errors: {errs[-3:]})")
            continue
        if len(res.finals) != 1:
            violations.append(f"action {i}: {len(res.finals)} final results")
        wrong = is_correct(i, res.finals[0])
        if wrong:
            violations.append(f"action {i}: {wrong}")
    return violations


def check_no_work_left(r: redis.Redis) -> list[str]:
    """No task queued or executing, no queued operation, no in-flight dedup entry, no
    invocation node still counting executing work."""
    violations = []
    for p in domains(r):
        tasks = r.hgetall(keys.domain_key(p, "tasks"))
        for tid, raw in tasks.items():
            if b"|" in tid:
                continue
            f = raw.decode().split(SEP)  # stage sc epoch attempts rehands queued_ms ... worker
            if f[0] in ("q", "x"):
                stage = "queued" if f[0] == "q" else f"executing on {f[9] or '?'}"
                violations.append(f"domain {p}: task {tid.decode()} still {stage}")
        queued = r.zrange(keys.domain_key(p, "queued"), 0, -1)
        if queued:
            violations.append(f"domain {p}: {len(queued)} operations queued, e.g. {queued[:3]}")
        inflight = r.hlen(keys.domain_key(p, "inflight"))
        if inflight:
            violations.append(f"domain {p}: {inflight} in-flight dedup entries left")
        for path, raw in r.hgetall(keys.domain_key(p, "inv")).items():
            executing = raw.decode().split(SEP)[0]
            if executing not in ("", "0"):
                violations.append(f"domain {p}: invocation {path!r} counts {executing} executing")
    return violations


def seconds_to_last_lease(r: redis.Redis) -> float:
    """How long until the last worker lease in any domain runs out (Redis clock). A
    worker parked on a frontend that was killed keeps its park's lease (idle timeout
    times park holds, plus the worker timeout) if it stopped before coming back."""
    last = 0.0
    for p in domains(r):
        top = r.zrange(keys.domain_key(p, "leases"), -1, -1, withscores=True)
        if top:
            last = max(last, float(top[0][1]))
    sec, usec = r.time()
    return max(0.0, last / 1000 - (sec + usec / 1e6))


def check_no_workers_left(r: redis.Redis) -> list[str]:
    """After every worker stopped and the worker timeout passed: no worker record, no
    lease, no parked worker."""
    violations = []
    for p in domains(r):
        for what in ("workers", "leases", "parked"):
            key = keys.domain_key(p, what)
            n = r.hlen(key) if what == "workers" else r.zcard(key)
            if n:
                violations.append(f"domain {p}: {n} {what} left")
    return violations


def check_baseline(r: redis.Redis, baseline: set[str]) -> list[str]:
    """The scheduler key set is the baseline again."""
    now = scheduler_keys(r)
    violations = []
    extra, missing = sorted(now - baseline), sorted(baseline - now)
    if extra:
        sizes = {k: _size(r, k) for k in extra[:20]}
        violations.append(f"{len(extra)} keys beyond the baseline: {sizes}")
    if missing:
        violations.append(f"baseline keys gone: {missing[:20]}")
    return violations


def _size(r: redis.Redis, key: str) -> str:
    kind = r.type(key).decode()
    if kind == "hash":
        return f"hash[{r.hlen(key)}]"
    if kind == "zset":
        return f"zset[{r.zcard(key)}]"
    return kind
