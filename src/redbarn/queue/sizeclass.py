"""Feedback-driven initial size classes: Buildbarn's InitialSizeClassFeedbackDrivenAnalyzer,
with its statistics in Redis.

With `--action-router`'s `initialSizeClassAnalyzer.feedbackDriven`, every Execute reads
the action's statistics (one GET), picks the size class to start on from them, and
every completion reported by a worker adds its outcome (a GET and a SET, in the
background). docs/size-classes.md has the whole story; in short:

- **Statistics** are Buildbarn's `PreviousExecutionStats` (`buildbarn.iscc`): per size
  class the last `history_size` outcomes (failed, timed out after T, succeeded in D)
  and a PageRank probability, plus when the action last failed on the largest class.
  One STRING per (instance name, digest function, reduced action digest), see
  `stats_key`; the reduced action digest is Buildbarn's: the digest of an Action that
  keeps only the command digest and the platform, so input changes do not split an
  action's history. Each write sets a TTL (`STATS_TTL`, a week), so statistics of
  actions no longer run go away. The key has no hash tag: it is read and written with
  plain commands, never inside a domain script.
- **The choice** (`select`) is Buildbarn's: an action that failed on the largest size
  class within `failure_cache_duration` starts there; otherwise a strategy calculator
  (`PageRank` with `pageRank`, else `SmallestSizeClass`) gives a probability per
  smaller size class and whether to run there in the foreground (a failure reruns on
  the largest) or to run on the largest first and on the smaller one afterwards, in the
  background, to learn; one uniform random draw picks.
- **The learner** (`sizeclass_pb2.Learner`) is what the choice leaves to learn from the
  outcome. The frontend that completes a task is often not the one that enqueued it,
  and tasks keep no per-analyzer state in Redis, so the learner rides with the task: in
  `DesiredState.Executing.auxiliary_metadata`, which workers copy into the result's
  `ExecutedActionMetadata.auxiliary_metadata` (bb_worker and redbarn's worker both
  do). A worker that does not echo it teaches nothing.
- **Background learning**: after a successful run on the largest class whose learner
  asks for it, a copy of the action (`do_not_cache`, its own timeout) is enqueued on
  the smaller class under the BackgroundLearning invocation ("/b"), with the platform
  queue's `background_learning_operation_priority`, while fewer than its
  `maximum_queued_background_learning_operations` are queued there (a platform queue
  that is not predeclared has none, as in Buildbarn). Its failure is recorded and never
  rerun on the largest class.

Where this differs from Buildbarn (each also in docs/size-classes.md):
- A read error never fails an Execute: it is logged and the action starts by the
  default rule (Buildbarn fails the Execute); a corrupt entry is logged and taken as
  no statistics (the next write replaces it).
- Statistics are read again when a completion is recorded (Buildbarn keeps the Execute
  time copy in memory), and the largest class's success of a run that asks for
  background learning is written at once, not when the background run ends.
- Timestamps (last failure) are this frontend's wall clock, not the Redis clock.
- The expected duration (Buildbarn's order within an invocation) is not computed.

(`stats_key` is not yet in the `keys` catalogue, where every key builder belongs; its
docstring and docs/size-classes.md describe it meanwhile.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError

from redbarn import digests
from redbarn.proto import iscc_pb2, scheduler_pb2, sizeclass_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import codec, keys, replies
from redbarn.queue.config import PredeclaredQueue, SchedulerConfig
from redbarn.queue.registry import Registry, instance_suffix, prefix_matches, remember
from redbarn.queue.scripts import Scripts

log = logging.getLogger(__name__)

Learner = sizeclass_pb2.Learner
LARGEST = Learner.LARGEST
SMALLER_FOREGROUND = Learner.SMALLER_FOREGROUND
LARGEST_BACKGROUND = Learner.LARGEST_BACKGROUND
SMALLER_BACKGROUND = Learner.SMALLER_BACKGROUND

# Statistics expire this long after their last write.
STATS_TTL = 7 * 24 * 3600.0
STATS_PREFIX = f"{keys.PREFIX}:iscc"
# Bounds of one entry beyond history_size: smaller-class outcomes waiting for their
# rerun on the largest class, and size classes.
MAX_PENDING = 16
MAX_SIZE_CLASSES = 64
# An entry larger than this is not read (a bounded entry is a few KiB at most).
MAX_ENTRY_BYTES = 1 << 20
# The BackgroundLearning invocation (Buildbarn's buildqueuestate.BackgroundLearning key):
# one level below the root of the size class queue.
BACKGROUND = "b"
BACKGROUND_PATH = codec.invocation_path([(BACKGROUND, "")])
# A background operation has no waiter; it stays this long (then it is cancelled like
# any operation whose waiters left), and is released once its run completes.
BACKGROUND_RETENTION = 24 * 3600.0
# Power iteration stops here even if it has not converged (Buildbarn has no bound; with
# valid settings it converges in a handful of steps).
MAX_ITERATIONS = 10_000

_LEARNER_URL = "type.googleapis.com/" + Learner.DESCRIPTOR.full_name
_DEADLINE_EXCEEDED = 4
_OPID = re.compile(r"^[0-9a-f]{32}$")
_MAX_DURATION = 2**63 - 1


def _duration(value: float) -> int:
    """Go's time.Duration(float64): nanoseconds truncated toward zero (clamped)."""
    if math.isnan(value):
        return 0
    return int(max(-_MAX_DURATION - 1, min(_MAX_DURATION, value)))


def _ns(d: duration_pb2.Duration) -> int:
    return d.seconds * 1_000_000_000 + d.nanos


def _pb_duration(ns: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)
    return d


# Outcomes ----------------------------------------------------------------------------


class Outcomes:
    """Outcomes of previous executions on one size class: successful execution times
    (ns, ascending) and a count of failures, which rank behind every success."""

    __slots__ = ("failures", "successes")

    def __init__(self, successes: Iterable[int] = (), failures: int = 0) -> None:
        self.successes = sorted(successes)
        self.failures = failures

    def median(self) -> int | None:
        """The median execution time of the successes (None without any)."""
        s = self.successes
        if not s:
            return None
        middle = len(s) // 2
        if len(s) % 2 == 0:
            return (s[middle - 1] + s[middle]) // 2
        return s[middle]

    def is_faster(self, other: Outcomes) -> float:
        """The probability, in (0, 1), that these outcomes are faster than `other`'s:
        the average rank in `other` of each of ours (as in a Mann-Whitney U test), with
        1 + len(other) and 1 + len(ours) added to the scores so that small or empty
        sets give moderate probabilities, never 0 or 1. x.is_faster(x) == 0.5 and
        x.is_faster(y) + y.is_faster(x) == 1."""
        a, b = self.successes, other.successes
        count_a, count_b = len(a) + self.failures, len(b) + other.failures
        score = 1 + count_b
        remaining_b = count_b
        i = j = 0
        while i < len(a) and j < len(b):
            if a[i] < b[j]:
                score += 2 * remaining_b  # faster than every remaining one of theirs
                i += 1
            elif a[i] > b[j]:
                j += 1
                remaining_b -= 1
            else:  # a run of equal times: half points for the whole run
                current = a[i]
                equal_a = equal_b = 0
                while i < len(a) and a[i] == current:
                    i += 1
                    equal_a += 1
                while j < len(b) and b[j] == current:
                    j += 1
                    equal_b += 1
                score += equal_a * (2 * remaining_b - equal_b)
                remaining_b -= equal_b
        score += 2 * (len(a) - i) * remaining_b
        score += self.failures * other.failures  # failures tie with failures
        return score / (2 + count_a + count_b + 2 * count_a * count_b)


def successes_of(executions: Iterable[iscc_pb2.PreviousExecution]) -> Outcomes:
    """The successful execution times among `executions` (failures left out)."""
    return Outcomes(_ns(e.succeeded) for e in executions if e.WhichOneof("outcome") == "succeeded")


def _executions(
    stats: iscc_pb2.PreviousExecutionStats, size_class: int
) -> Sequence[iscc_pb2.PreviousExecution]:
    per = stats.size_classes.get(size_class)
    return per.previous_executions if per is not None else ()


# Strategy calculators -----------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    """How to run an action on one size class other than the largest."""

    probability: float = 0.0
    # Likely to fail there: run on the largest class first, then there in the background.
    run_in_background: bool = False
    # The timeout of a foreground run there (ns).
    foreground_timeout: int = 0


@dataclass(frozen=True)
class Strategies:
    """A calculator's answer: one Strategy per size class from the smallest up (fewer
    when the rest have probability 0; the largest class takes what remains of 1), and
    the PageRank probability of every size class to save, when it computed them."""

    strategies: list[Strategy]
    probabilities: dict[int, float] | None = None


class StrategyCalculator(Protocol):
    def strategies(
        self,
        stats: iscc_pb2.PreviousExecutionStats,
        size_classes: Sequence[int],
        original_timeout: int,
    ) -> Strategies:
        """Strategies for `size_classes` (increasing) given the action's statistics and
        its own timeout (ns). Never modifies `stats`."""
        ...

    def background_timeout(
        self,
        stats: iscc_pb2.PreviousExecutionStats,
        size_classes: Sequence[int],
        index: int,
        original_timeout: int,
    ) -> int:
        """The timeout (ns) of a background run on `size_classes[index]`, from the
        statistics as they are after the foreground run on the largest class."""
        ...


class SmallestSizeClass:
    """Always the smallest size class, with the action's own timeout (Buildbarn's
    calculator without `pageRank`: the fallback rule, with statistics still kept)."""

    def strategies(
        self,
        stats: iscc_pb2.PreviousExecutionStats,
        size_classes: Sequence[int],
        original_timeout: int,
    ) -> Strategies:
        if len(size_classes) <= 1:
            return Strategies([])
        return Strategies([Strategy(1.0, False, original_timeout)])

    def background_timeout(
        self,
        stats: iscc_pb2.PreviousExecutionStats,
        size_classes: Sequence[int],
        index: int,
        original_timeout: int,
    ) -> int:
        raise RuntimeError("the smallest size class strategy never runs in the background")


@dataclass(frozen=True)
class PageRank:
    """Buildbarn's PageRank strategy calculator: the probabilities of the size classes
    are the eigenvector of a stochastic matrix whose cells say how likely one size class
    is faster than another, given their outcomes normalised to the largest class."""

    minimum_execution_timeout: int  # ns
    acceptable_execution_time_increase_exponent: float
    smaller_size_class_execution_timeout_multiplier: float
    maximum_convergence_error: float

    def _parameters(
        self, smaller: int, largest: int, median_on_largest: int, original_timeout: int
    ) -> tuple[float, int, int]:
        """(factor, maximum acceptable execution time, timeout) on a smaller class."""
        multiplier = self.smaller_size_class_execution_timeout_multiplier
        factor = math.pow(largest / smaller, self.acceptable_execution_time_increase_exponent)
        acceptable = _duration(median_on_largest * factor)
        timeout = _duration(acceptable * multiplier)
        timeout = min(max(timeout, self.minimum_execution_timeout), original_timeout)
        # Keep the acceptable time clear of the timeout.
        acceptable = min(acceptable, _duration(timeout / multiplier))
        return factor, acceptable, timeout

    def strategies(
        self,
        stats: iscc_pb2.PreviousExecutionStats,
        size_classes: Sequence[int],
        original_timeout: int,
    ) -> Strategies:
        n = len(size_classes)
        if n <= 1:
            return Strategies([])
        histories = [_executions(stats, sc) for sc in size_classes]
        on_largest = successes_of(histories[-1])
        median = on_largest.median()
        if median is None:
            # Never succeeded on the largest class, so nothing to compare with: try the
            # smallest class without samples, briefly; with none left, the largest.
            for i in range(n - 1):
                if not histories[i]:
                    first = Strategy(
                        1.0, False, min(original_timeout, self.minimum_execution_timeout)
                    )
                    return Strategies([Strategy()] * i + [first])
            return Strategies([Strategy()] * (n - 1) + [Strategy(1.0, False, original_timeout)])

        largest = size_classes[-1]
        outcomes: list[Outcomes] = []
        strategies: list[Strategy] = []
        in_background = True
        for i, sc in enumerate(size_classes[:-1]):
            # Normalise to the largest class; unacceptably slow runs count as failures.
            factor, acceptable, timeout = self._parameters(sc, largest, median, original_timeout)
            normalized: list[int] = []
            failures = 0
            for e in histories[i]:
                kind = e.WhichOneof("outcome")
                if kind == "failed":
                    failures += 1
                elif kind == "timed_out":
                    if _ns(e.timed_out) >= acceptable:
                        failures += 1
                elif kind == "succeeded":
                    d = _ns(e.succeeded)
                    if d < acceptable:
                        normalized.append(_duration(d / factor))
                    else:
                        failures += 1
            outcomes.append(Outcomes(normalized, failures))
            if failures == 0 and not normalized:
                if in_background:
                    # Untried, and the class below fails: one background run here tells
                    # where failure turns into success.
                    strategies.append(Strategy(1.0, True))
                    return Strategies(strategies)
            else:
                # Mostly failing here: run on the largest first, keeping builds fast.
                in_background = failures > len(normalized)
            strategies.append(
                Strategy(0.0, True) if in_background else Strategy(0.0, False, timeout)
            )
        outcomes.append(on_largest)
        strategies.append(Strategy())

        # m[j][i]: how likely i beats j, spread so that every row sums to 1.
        m = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
        for i in range(1, n):
            for j in range(i):
                p = outcomes[i].is_faster(outcomes[j])
                p1 = p / (n - 1)
                m[j][i] = p1
                m[j][j] -= p1
                p2 = (1.0 - p) / (n - 1)
                m[i][j] = p2
                m[i][i] -= p2

        # Start from the probabilities saved last time (those in range), the smallest
        # class's inferred from the others so rounding errors do not pile up.
        probabilities = [0.0] * n
        total = 0.0
        for i in range(1, n):
            per = stats.size_classes.get(size_classes[i])
            restored = per.initial_page_rank_probability if per is not None else 0.0
            probabilities[i] = restored if 0.0 < restored < 1.0 else 0.5
            total += probabilities[i]
        probabilities[0] = 1.0 - total

        # Power iteration until the probabilities settle.
        for _ in range(MAX_ITERATIONS):
            new = [0.0] * n
            for i, row in enumerate(m):
                for j, v in enumerate(row):
                    new[j] += probabilities[i] * v
            error = 0.0
            for i in range(n):
                error += abs(probabilities[i] - new[i])
            probabilities = new
            if error < self.maximum_convergence_error:
                break
        return Strategies(
            [
                dataclasses.replace(strategies[i], probability=probabilities[i])
                for i in range(n - 1)
            ],
            {sc: probabilities[i] for i, sc in enumerate(size_classes)},
        )

    def background_timeout(
        self,
        stats: iscc_pb2.PreviousExecutionStats,
        size_classes: Sequence[int],
        index: int,
        original_timeout: int,
    ) -> int:
        median = successes_of(_executions(stats, size_classes[-1])).median()
        if median is None:  # not after a success on the largest class
            return original_timeout
        return self._parameters(size_classes[index], size_classes[-1], median, original_timeout)[2]


# The choice -------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Where to run (an index into the size classes), with which timeout (ns,
    Buildbarn's), and what to learn afterwards."""

    index: int
    kind: int  # a Learner.Kind
    timeout: int
    smaller_size_class: int = 0
    probabilities: dict[int, float] | None = None


def failed_recently(
    stats: iscc_pb2.PreviousExecutionStats, now: float, failure_cache_duration: float
) -> bool:
    """Whether the action failed on the largest class within the failure cache."""
    if not stats.HasField("last_seen_failure"):
        return False
    t = stats.last_seen_failure
    # An invalid Timestamp counts as none (Buildbarn's CheckValid).
    if not (-62135596800 <= t.seconds <= 253402300799 and 0 <= t.nanos < 1_000_000_000):
        return False
    return t.seconds + t.nanos / 1e9 >= now - failure_cache_duration


def save_probabilities(
    stats: iscc_pb2.PreviousExecutionStats, probabilities: dict[int, float]
) -> None:
    """Store PageRank probabilities: 0 for size classes not computed, as Buildbarn does."""
    for per in stats.size_classes.values():
        per.initial_page_rank_probability = 0.0
    for sc, p in probabilities.items():
        stats.size_classes[sc].initial_page_rank_probability = p


def select(
    stats: iscc_pb2.PreviousExecutionStats,
    size_classes: Sequence[int],
    original_timeout: int,
    *,
    calculator: StrategyCalculator,
    failure_cache_duration: float,
    now: float,
    rand: Callable[[], float],
) -> Selection:
    """Buildbarn's Select: the size class to start on (`size_classes` increasing)."""
    last = len(size_classes) - 1
    if not failed_recently(stats, now, failure_cache_duration):
        result = calculator.strategies(stats, size_classes, original_timeout)
        r = rand()
        for i, strategy in enumerate(result.strategies):
            if r < strategy.probability:
                if strategy.run_in_background:
                    # Prone to failing there: largest class first, that one afterwards.
                    return Selection(
                        last,
                        LARGEST_BACKGROUND,
                        original_timeout,
                        size_classes[i],
                        result.probabilities,
                    )
                return Selection(
                    i,
                    SMALLER_FOREGROUND,
                    strategy.foreground_timeout,
                    size_classes[i],
                    result.probabilities,
                )
            r -= strategy.probability
        return Selection(last, LARGEST, original_timeout, 0, result.probabilities)
    return Selection(last, LARGEST, original_timeout)


# Learning from an outcome -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A completed run as the analyzer sees it."""

    succeeded: bool
    duration: int = 0  # ns, the virtual execution duration of a success
    timed_out: bool = False

    @classmethod
    def of(cls, response: re_pb2.ExecuteResponse) -> Outcome:
        """Buildbarn's test: status OK and exit code 0 succeed; DEADLINE_EXCEEDED is a
        timeout. A success's time is its virtual_execution_duration (0 if unset)."""
        code = response.status.code
        if code == 0 and response.result.exit_code == 0:
            md = response.result.execution_metadata
            return cls(True, _ns(md.virtual_execution_duration))
        return cls(False, 0, code == _DEADLINE_EXCEEDED)


def _succeeded(duration: int) -> iscc_pb2.PreviousExecution:
    return iscc_pb2.PreviousExecution(succeeded=_pb_duration(duration))


def _failure(timed_out: bool, timeout: duration_pb2.Duration) -> iscc_pb2.PreviousExecution:
    if timed_out:
        return iscc_pb2.PreviousExecution(timed_out=timeout)
    e = iscc_pb2.PreviousExecution()
    e.failed.SetInParent()
    return e


def add_execution(
    stats: iscc_pb2.PreviousExecutionStats,
    size_class: int,
    execution: iscc_pb2.PreviousExecution,
    history_size: int,
) -> None:
    """Append an outcome to a size class, keeping its latest `history_size`."""
    executions = stats.size_classes[size_class].previous_executions
    executions.append(execution)
    if len(executions) > history_size:
        del executions[: len(executions) - history_size]


def learn(
    entry: sizeclass_pb2.Entry,
    learner: sizeclass_pb2.Learner,
    *,
    size_class: int,
    outcome: Outcome,
    fallback: bool,
    task: str,
    now: float,
    history_size: int,
) -> bool:
    """Record in `entry` what a run on `size_class` teaches (Buildbarn's learners).
    `fallback`: it failed on a smaller class and reruns on the largest; `task`: its
    action digest ("hash-size"). Returns whether a background run should follow."""
    stats = entry.stats
    kind = learner.kind
    if fallback:
        if kind == SMALLER_FOREGROUND:
            # Kept aside until the rerun on the largest class ends.
            pending = entry.pending.add(action_digest=task, size_class=size_class)
            pending.outcome.CopyFrom(_failure(outcome.timed_out, learner.timeout))
            if len(entry.pending) > MAX_PENDING:
                del entry.pending[: len(entry.pending) - MAX_PENDING]
        return False
    waiting = [i for i, p in enumerate(entry.pending) if p.action_digest == task]
    if kind == SMALLER_FOREGROUND and size_class != learner.smaller_size_class and waiting:
        # The rerun on the largest class of a run that failed on the smaller one.
        first = entry.pending[waiting[0]]
        if outcome.succeeded:
            add_execution(stats, first.size_class, first.outcome, history_size)
        for i in reversed(waiting):
            del entry.pending[i]
    if learner.initial_page_rank_probabilities and kind != SMALLER_BACKGROUND:
        save_probabilities(stats, dict(learner.initial_page_rank_probabilities))
    if outcome.succeeded:
        add_execution(stats, size_class, _succeeded(outcome.duration), history_size)
        return kind == LARGEST_BACKGROUND
    if kind == SMALLER_BACKGROUND:
        add_execution(stats, size_class, _failure(outcome.timed_out, learner.timeout), history_size)
    else:
        # A failure on the largest class (foreground): start there for a while.
        stats.last_seen_failure.FromNanoseconds(int(now * 1e9))
    return False


def bound(entry: sizeclass_pb2.Entry, keep: Iterable[int] = ()) -> None:
    """Cap the number of size classes an entry remembers (the smallest go first, never
    one of `keep`)."""
    classes = entry.stats.size_classes
    if len(classes) <= MAX_SIZE_CLASSES:
        return
    kept = set(keep)
    for sc in sorted(classes.keys()):
        if len(classes) <= MAX_SIZE_CLASSES:
            break
        if sc not in kept:
            del classes[sc]


# Storage ------------------------------------------------------------------------------


def reduced_action_digest(action: re_pb2.Action, digest_function: int) -> re_pb2.Digest:
    """Buildbarn's reduced action digest: that of an Action with only the command
    digest and the platform, so runs over other inputs share statistics."""
    reduced = re_pb2.Action()
    if action.HasField("command_digest"):
        reduced.command_digest.CopyFrom(action.command_digest)
    if action.HasField("platform"):
        reduced.platform.CopyFrom(action.platform)
    return digests.of_bytes(reduced.SerializeToString(), digest_function)


def stats_key(instance_name: str, digest_function: int, reduced: re_pb2.Digest) -> str:
    """redbarn:v1:iscc:<function>:<hash>-<size>:<instance name>, a STRING holding a
    `sizeclass_pb2.Entry`; expires STATS_TTL after its last write. No hash tag.
    redis-cli --raw GET 'redbarn:v1:iscc:sha256:<hash>-<size>:<instance>' | protoc
    --decode=redbarn.sizeclass.Entry -I src src/redbarn/proto/sizeclass.proto"""
    fn = digests.function_component(digest_function)
    return f"{STATS_PREFIX}:{fn}:{reduced.hash}-{reduced.size_bytes}:{instance_name}"


class CorruptEntry(ValueError):
    pass


def decode_entry(raw: bytes | None) -> sizeclass_pb2.Entry:
    """A stored entry (an empty one for None); CorruptEntry when it cannot be one."""
    entry = sizeclass_pb2.Entry()
    if raw is None:
        return entry
    if len(raw) > MAX_ENTRY_BYTES:
        raise CorruptEntry(f"{len(raw)} bytes, more than {MAX_ENTRY_BYTES}")
    try:
        entry.ParseFromString(raw)
    except DecodeError as err:
        raise CorruptEntry(str(err)) from None
    return entry


def learner_of(response: re_pb2.ExecuteResponse) -> sizeclass_pb2.Learner | None:
    """The learner a worker echoed back in its result, if any."""
    for a in response.result.execution_metadata.auxiliary_metadata:
        if a.type_url == _LEARNER_URL:
            learner = Learner()
            try:
                learner.ParseFromString(a.value)
            except DecodeError:
                return None
            return learner
    return None


def _pack(learner: sizeclass_pb2.Learner) -> any_pb2.Any:
    return any_pb2.Any(type_url=_LEARNER_URL, value=learner.SerializeToString())


# The analyzer -------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """InitialSizeClassFeedbackDrivenAnalyzerConfiguration, as the analyzer uses it
    (validated by redbarn.router)."""

    failure_cache_duration: float  # seconds
    history_size: int
    calculator: StrategyCalculator

    @classmethod
    def of(
        cls, config: scheduler_pb2.InitialSizeClassFeedbackDrivenAnalyzerConfiguration
    ) -> Settings:
        calculator: StrategyCalculator = SmallestSizeClass()
        if config.HasField("page_rank"):
            pr = config.page_rank
            calculator = PageRank(
                minimum_execution_timeout=_ns(pr.minimum_execution_timeout),
                acceptable_execution_time_increase_exponent=pr.acceptable_execution_time_increase_exponent,
                smaller_size_class_execution_timeout_multiplier=pr.smaller_size_class_execution_timeout_multiplier,
                maximum_convergence_error=pr.maximum_convergence_error,
            )
        return cls(_ns(config.failure_cache_duration) / 1e9, config.history_size, calculator)


@dataclass(frozen=True)
class Choice:
    """The analyzer's answer for one Execute: the size class to start on, and the
    learner to put in the Executing message's auxiliary metadata."""

    size_class: int
    learner: any_pb2.Any
    # A foreground run on a smaller class: PageRank's shortened timeout (seconds) for
    # it; a failure there reruns on the largest class with the action's own.
    timeout: float | None = None


class Analysis:
    """One Execute's analysis: the statistics read starts at once (`start`), the choice
    is made once the platform queue is known."""

    def __init__(
        self,
        analyzer: SizeClassAnalyzer,
        instance_name: str,
        digest_function: int,
        action: re_pb2.Action,
    ) -> None:
        self._analyzer = analyzer
        self._instance_name = instance_name
        self._digest_function = digest_function
        self._action = action
        self._read: asyncio.Future[Any] | None = None
        try:
            self._reduced = reduced_action_digest(action, digest_function)
        except Exception as err:  # a digest function this frontend cannot hash
            log.warning("size class analysis skipped: no reduced action digest: %s", err)
            return
        key = stats_key(instance_name, digest_function, self._reduced)
        self._read = asyncio.ensure_future(analyzer.redis.get(key))

    def cancel(self) -> None:
        """The Execute ended before a choice (no workers, say)."""
        if self._read is not None and not self._read.done():
            self._read.cancel()
        elif self._read is not None and not self._read.cancelled():
            self._read.exception()  # retrieved: not logged as never retrieved

    async def choose(self, domain: str, timeout: float) -> Choice | None:
        """The size class to start on and its learner; None (the default rule: the
        smallest size class that has workers) when the analysis cannot be made."""
        if self._read is None:
            return None
        a = self._analyzer
        try:
            raw = await self._read
            size_classes = await a.size_classes(domain)
        except Exception as err:
            log.warning("size class analysis failed, starting by the default rule: %s", err)
            return None
        if not size_classes or (len(size_classes) > 1 and size_classes[0] == 0):
            return None  # size class 0 beside others: nothing to compare it with
        try:
            entry = decode_entry(raw)
        except CorruptEntry as err:
            log.warning(
                "size class statistics of %s are corrupt (%s); starting afresh",
                digests.key(self._reduced),
                err,
            )
            entry = sizeclass_pb2.Entry()
        original = round(timeout * 1e9)
        s = a.settings
        try:
            chosen = select(
                entry.stats,
                size_classes,
                original,
                calculator=s.calculator,
                failure_cache_duration=s.failure_cache_duration,
                now=a.clock(),
                rand=a.rand,
            )
        except (ArithmeticError, ValueError) as err:  # e.g. an overflowing exponent
            log.warning("size class analysis failed, starting by the default rule: %s", err)
            return None
        learner = Learner(
            kind=chosen.kind,  # type: ignore[arg-type]
            instance_name=self._instance_name,
            digest_function=self._digest_function,  # type: ignore[arg-type]
            reduced_action_digest=self._reduced,
            smaller_size_class=chosen.smaller_size_class,
            # The timeout of this run (a smaller class's may be shortened).
            timeout=_pb_duration(chosen.timeout),
            original_timeout=_pb_duration(original),
            initial_page_rank_probabilities=chosen.probabilities or {},
        )
        if chosen.kind == LARGEST_BACKGROUND:
            learner.action = self._action.SerializeToString()
        shorter = None
        if chosen.kind == SMALLER_FOREGROUND and 0 < chosen.timeout < original:
            shorter = chosen.timeout / 1e9
        return Choice(size_classes[chosen.index], _pack(learner), shorter)


class SizeClassAnalyzer:
    """The feedback-driven analyzer of one frontend: Execute asks it where to start
    (`start`, then `Analysis.choose`); Synchronize tells it what completed (`observe`),
    and asks it whether a failure may rerun on the largest class (`may_fall_back`)."""

    def __init__(
        self,
        redis: Any,
        registry: Registry,
        scripts: Scripts,
        config: SchedulerConfig,
        settings: Settings,
        *,
        ttl: float = STATS_TTL,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.scripts = scripts
        self.config = config
        self.settings = settings
        self.ttl = ttl
        self.rand = rand
        self.clock = clock
        self._queues = {q.domain: q for q in config.predeclared}
        self._classes: dict[str, tuple[float, tuple[int, ...]]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._background_config = dataclasses.replace(
            config, operation_retention=max(config.operation_retention, BACKGROUND_RETENTION)
        )

    def start(self, *, instance_name: str, digest_function: int, action: re_pb2.Action) -> Analysis:
        """Begin an Execute's analysis (reads the statistics in the background)."""
        return Analysis(self, instance_name, digest_function, action)

    async def size_classes(self, domain: str, *, fresh: bool = False) -> tuple[int, ...]:
        """The size classes of a platform queue, increasing (a short cache per frontend,
        like the platform registry's)."""
        now = time.monotonic()
        cached = self._classes.get(domain)
        if cached is not None and not fresh and now - cached[0] <= self.config.platform_cache_ttl:
            return cached[1]
        raw = await self.redis.hget(keys.domain_key(domain, "meta"), "scs")
        text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        classes = tuple(sorted(int(sc) for sc in text.split()))
        remember(self._classes, domain, (now, classes))
        return classes

    def may_fall_back(self, response: re_pb2.ExecuteResponse) -> bool:
        """Whether a failed run may rerun on the largest class: not a background run."""
        learner = learner_of(response)
        return learner is None or learner.kind != SMALLER_BACKGROUND

    def observe(
        self,
        *,
        domain: str,
        prefix: str,
        size_class: int,
        action_digest: re_pb2.Digest,
        response: re_pb2.ExecuteResponse,
        fallback: bool,
    ) -> None:
        """A worker completed a run (`fallback`: it failed on a smaller class and reruns
        on the largest): record its outcome in the background. Never raises."""
        learner = learner_of(response)
        if learner is None:
            return
        task = asyncio.ensure_future(
            self._learn(domain, prefix, size_class, action_digest, response, fallback, learner)
        )
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("recording a size class outcome failed: %s", task.exception())

    async def settle(self) -> None:
        """Wait for the outcomes being recorded (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _learn(
        self,
        domain: str,
        prefix: str,
        size_class: int,
        action_digest: re_pb2.Digest,
        response: re_pb2.ExecuteResponse,
        fallback: bool,
        learner: sizeclass_pb2.Learner,
    ) -> None:
        # The learner came back through a worker: it may only name statistics of this
        # platform queue's instance names.
        reduced = learner.reduced_action_digest
        if not prefix_matches(prefix, learner.instance_name):
            log.warning(
                "size class learner names instance %r outside prefix %r; ignored",
                learner.instance_name,
                prefix,
            )
            return
        try:
            digests.validate(reduced, learner.digest_function)
        except Exception as err:
            log.warning("size class learner has a bad reduced action digest: %s", err)
            return
        key = stats_key(learner.instance_name, learner.digest_function, reduced)
        try:
            entry = decode_entry(await self.redis.get(key))
        except CorruptEntry as err:
            log.warning("size class statistics %s are corrupt (%s); starting afresh", key, err)
            entry = sizeclass_pb2.Entry()
        background = learn(
            entry,
            learner,
            size_class=size_class,
            outcome=Outcome.of(response),
            fallback=fallback,
            task=digests.key(action_digest),
            now=self.clock(),
            history_size=self.settings.history_size,
        )
        bound(entry, learner.initial_page_rank_probabilities.keys())
        await self.redis.set(key, entry.SerializeToString(), px=max(1, round(self.ttl * 1000)))
        if learner.kind == SMALLER_BACKGROUND and _OPID.match(learner.background_operation):
            # Its run is over: from now on it goes the way of any operation nobody watches.
            await self.scripts.touch_operation(
                domain=domain,
                config=self.registry.script_config(domain),
                opid=learner.background_operation,
                fid=self.registry.fid,
            )
        if background:
            await self._learn_in_background(domain, prefix, learner, entry.stats, action_digest)

    async def _learn_in_background(
        self,
        domain: str,
        prefix: str,
        learner: sizeclass_pb2.Learner,
        stats: iscc_pb2.PreviousExecutionStats,
        action_digest: re_pb2.Digest,
    ) -> None:
        """Buildbarn's background learning run, after a success on the largest class."""
        queue: PredeclaredQueue | None = self._queues.get(domain)
        if queue is None or queue.max_background_learning <= 0:
            return  # a platform queue that is not predeclared allows none (Buildbarn)
        size_classes = await self.size_classes(domain)
        smaller = learner.smaller_size_class
        if smaller not in size_classes:
            return  # that size class is gone
        fn = learner.digest_function
        action_bytes = learner.action
        try:
            same = digests.of_bytes(action_bytes, fn)
            action = re_pb2.Action.FromString(action_bytes)
        except Exception as err:
            log.warning("background learning skipped: unusable action: %s", err)
            return
        if (same.hash, same.size_bytes) != (action_digest.hash, action_digest.size_bytes):
            # Not the Action of the task that completed (a client whose Action bytes are
            # not canonical, or a worker that forged the learner).
            log.info("background learning skipped: action %s does not match", digests.key(same))
            return
        field_ = keys.size_class_field(smaller)
        member = f"{field_} {BACKGROUND_PATH}{codec.SEP}".encode()
        queued = await self.redis.zlexcount(
            keys.domain_key(domain, "queued"), b"[" + member, b"[" + member + b"\xff"
        )
        if queued >= queue.max_background_learning:
            return
        timeout = self.settings.calculator.background_timeout(
            stats, size_classes, size_classes.index(smaller), _ns(learner.original_timeout)
        )
        action.do_not_cache = True
        action.timeout.CopyFrom(_pb_duration(timeout))
        opid = uuid.uuid4().hex
        background = Learner(
            kind=SMALLER_BACKGROUND,
            instance_name=learner.instance_name,
            digest_function=fn,
            reduced_action_digest=learner.reduced_action_digest,
            smaller_size_class=smaller,
            timeout=_pb_duration(timeout),
            original_timeout=learner.original_timeout,
            background_operation=opid,
        )
        executing = rw_pb2.DesiredState.Executing(
            action_digest=action_digest,
            action=action,
            auxiliary_metadata=[_pack(background)],
            instance_name_suffix=instance_suffix(learner.instance_name, prefix),
            digest_function=fn,
        )
        reply = await self.scripts.enqueue_operation(
            domain=domain,
            # No watcher, and kept for BACKGROUND_RETENTION: nobody waits for it.
            config=self._background_config.script_config(domain),
            opid=opid,
            dedup_key="",
            path=BACKGROUND_PATH,
            priority=codec.priority_field(queue.background_learning_priority),
            executing=executing.SerializeToString(),
            digest=digests.key(action_digest),
            digest_function=fn,
            initial_size_class=smaller,
        )
        if not isinstance(reply, replies.Enqueued):
            log.info(
                "background learning run of %s not queued: %s", digests.key(action_digest), reply
            )
