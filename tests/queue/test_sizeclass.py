"""Feedback-driven initial size classes (redbarn.queue.sizeclass): Buildbarn's
InitialSizeClassFeedbackDrivenAnalyzer and PageRank strategy calculator, and the
analyzer over Redis through the scheduler core.

The expected values of the algorithm's cases are what Buildbarn's algorithm gives for
the same inputs (bb-remote-execution pkg/scheduler/initialsizeclass); each docstring
states the rule. Probabilities are compared within 0.005.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format
from qhelpers import FAST, SHA256, action, assigned, execute, request, synchronize

from redbarn.proto import iscc_pb2, scheduler_pb2, sizeclass_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.queue import codec, keys
from redbarn.queue import sizeclass as sc
from redbarn.queue.config import SchedulerConfig, parse_predeclared
from redbarn.queue.scheduler import PollingHints, Scheduler

S = 1_000_000_000  # ns
MIN = 60 * S


def execs(*outcomes: str | int) -> list[iscc_pb2.PreviousExecution]:
    """ "f" failed, ("t", ns) timed out, an int: succeeded in that many ns."""
    out = []
    for o in outcomes:
        e = iscc_pb2.PreviousExecution()
        if o == "f":
            e.failed.SetInParent()
        elif isinstance(o, tuple):
            e.timed_out.FromNanoseconds(o[1])
        else:
            assert isinstance(o, int)
            e.succeeded.FromNanoseconds(o)
        out.append(e)
    return out


def timed_out(ns: int) -> Any:
    return ("t", ns)


def stats(**per_class: Sequence[Any]) -> iscc_pb2.PreviousExecutionStats:
    """stats(c1=[...], c8=[...]): executions per size class."""
    st = iscc_pb2.PreviousExecutionStats()
    for name, outcomes in per_class.items():
        st.size_classes[int(name[1:])].previous_executions.extend(execs(*outcomes))
    return st


def approx(strategies: list[sc.Strategy], expected: list[sc.Strategy]) -> None:
    assert len(strategies) == len(expected)
    for got, want in zip(strategies, expected, strict=True):
        assert got.probability == pytest.approx(want.probability, abs=0.005)
        assert (got.run_in_background, got.foreground_timeout) == (
            want.run_in_background,
            want.foreground_timeout,
        )


# Outcomes.is_faster --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # One success against nothing: the divisor is 2 + 1 + 0 + 2*1*0 = 3.
        (([S], 0), ([], 0), 1 / 3),
        (([], 0), ([S], 0), 2 / 3),
        # Ten successes against ten failures: divisor 2 + 10 + 10 + 2*10*10 = 222.
        (([S] * 10, 0), ([], 10), 211 / 222),
        (([], 10), ([S] * 10, 0), 11 / 222),
        # Both centred on 10 s, A spread wider: a tie.
        (([6, 8, 10, 10, 12, 14], 1), ([9, 9, 9, 11, 11, 11], 1), 0.5),
        # Alternating, A slightly faster each time.
        (([1, 3, 5, 7, 9, 11], 0), ([2, 4, 6, 8, 10, 12], 0), 49 / 86),
        (([2, 4, 6, 8, 10, 12], 0), ([1, 3, 5, 7, 9, 11], 0), 37 / 86),
        # One more (slowest) sample in A: B, the smaller set, is now slightly preferred.
        (([1, 3, 5, 7, 9, 11, 13], 0), ([2, 4, 6, 8, 10, 12], 0), 49 / 99),
        (([2, 4, 6, 8, 10, 12], 0), ([1, 3, 5, 7, 9, 11, 13], 0), 50 / 99),
    ],
)
def test_is_faster(a: tuple[list[int], int], b: tuple[list[int], int], expected: float) -> None:
    """Buildbarn's Outcomes.IsFaster: average rank of A's samples in B (failures slowest,
    tying with each other), 1+|B| and 1+|A| added to the scores."""
    assert sc.Outcomes(*a).is_faster(sc.Outcomes(*b)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "o", [([], 0), ([S], 0), ([S, S], 0), ([7 * S, 8 * S, 9 * S, 10 * S, 11 * S, 12 * S], 14)]
)
def test_is_faster_than_itself_is_a_coin_toss(o: tuple[list[int], int]) -> None:
    assert sc.Outcomes(*o).is_faster(sc.Outcomes(*o)) == 0.5


def test_median() -> None:
    """The middle success, or the mean of the two middle ones (integer ns)."""
    assert sc.Outcomes([]).median() is None
    assert sc.Outcomes([3, 1, 2]).median() == 2
    assert sc.Outcomes([4, 1, 2, 3]).median() == 2  # (2 + 3) // 2
    assert sc.successes_of(execs("f", 5, timed_out(9), 7)).successes == [5, 7]


# PageRank -------------------------------------------------------------------------------

# Buildbarn's test settings: 5 s minimum timeout, exponent 0.5, multiplier 1.5, 0.001.
PR = sc.PageRank(5 * S, 0.5, 1.5, 0.001)
CLASSES = [1, 2, 4, 8]


def test_page_rank_single_size_class() -> None:
    """With one size class there is nothing to choose."""
    assert PR.strategies(stats(), [8], 15 * MIN).strategies == []


@pytest.mark.parametrize(
    ("st", "expected"),
    [
        (stats(), [sc.Strategy(1.0, False, 5 * S)]),
        (stats(c1=[S]), [sc.Strategy(), sc.Strategy(1.0, False, 5 * S)]),
        (stats(c1=[S], c2=[S]), [sc.Strategy(), sc.Strategy(), sc.Strategy(1.0, False, 5 * S)]),
        # Every smaller class has samples: the largest, with the action's own timeout
        # (Buildbarn returns a strategy for the largest class itself here).
        (
            stats(c1=[S], c2=[S], c4=[S]),
            [sc.Strategy(), sc.Strategy(), sc.Strategy(), sc.Strategy(1.0, False, 15 * MIN)],
        ),
    ],
)
def test_page_rank_unknown_duration_tries_the_smallest_untried_class(
    st: iscc_pb2.PreviousExecutionStats, expected: list[sc.Strategy]
) -> None:
    """Never succeeded on the largest class: run on the smallest class that has no
    samples, with min(timeout, minimum_execution_timeout), rather than paying for the
    largest class on an action that may never come back."""
    got = PR.strategies(st, CLASSES, 15 * MIN)
    approx(got.strategies, expected)
    assert got.probabilities is None  # nothing computed, nothing saved


def test_page_rank_one_success_on_smallest_and_largest() -> None:
    """Succeeded once on the smallest and on the largest class: every class may run it
    in the foreground; the untried ones get more probability, so they get tried."""
    got = PR.strategies(stats(c1=[S], c8=[S]), CLASSES, 15 * MIN)
    approx(
        got.strategies,
        [
            sc.Strategy(0.19, False, 5 * S),
            sc.Strategy(0.33, False, 5 * S),
            sc.Strategy(0.33, False, 5 * S),
        ],
    )
    assert got.probabilities is not None and set(got.probabilities) == set(CLASSES)
    assert sum(got.probabilities.values()) == pytest.approx(1.0)


def test_page_rank_one_failure_on_smallest() -> None:
    """Failed on the smallest, succeeded on the largest: one background run on size
    class 2; if that succeeds, size class 4 needs no background run."""
    got = PR.strategies(stats(c1=["f"], c8=[S]), CLASSES, 15 * MIN)
    approx(got.strategies, [sc.Strategy(0.0, True), sc.Strategy(1.0, True)])


def test_page_rank_close_to_the_timeout() -> None:
    """A 900 s timeout and ~640 s on the largest class: even the largest class is barely
    acceptable, so it gets most of the probability and the others run in the background."""
    on_4 = [744745171748, 736585305066, 786526637558, timed_out(900 * S), 773860202581]
    on_8 = [652236376306, 624011911117, 630320095712, 627102638899, 651795797310,
            655097161482, 649054963830, 653183883239, 648783209241, 666485370182,
            640917318827, 636910996040, 669358977129, 638876466482, 667615625730,
            639109428595, 645421212352, 659724568628, 645199012224, 623819328226,
            642084340620, 633645871363, 692204251786]  # fmt: skip
    st = stats(
        c1=[timed_out(7_500_000_000)] + [timed_out(900 * S)] * 6,
        c2=[timed_out(900 * S)] * 7,
        c4=on_4,
        c8=on_8,
    )
    got = PR.strategies(st, CLASSES, 15 * MIN)
    approx(
        got.strategies, [sc.Strategy(0.07, True), sc.Strategy(0.06, True), sc.Strategy(0.07, True)]
    )


def test_page_rank_untested_size_class_gets_a_high_probability() -> None:
    """Size class 2 has no samples: it gets the highest probability, so it is tested."""
    on_1 = [19941089, 20017118, 21509286, 31062553, 32028792, 56637488, 20011641,
            32338320, 21190311, 19520433, 19496810, 34248944, 39543182, 21466694,
            20287814, 20572146, 20582404, 21701414, 21688507, 20296545, 19621454,
            41513823, 22492816, 20089137, 36233309, 21063001, 37055862, 18909835]  # fmt: skip
    st = stats(c1=on_1, c4=[19648577, 26058621], c8=[21127338])
    got = PR.strategies(st, CLASSES, 15 * MIN)
    approx(
        got.strategies,
        [
            sc.Strategy(0.14, False, 5 * S),
            sc.Strategy(0.56, False, 5 * S),
            sc.Strategy(0.15, False, 5 * S),
        ],
    )


def test_page_rank_always_failing_below_the_largest() -> None:
    """Thirty failures on every class but the largest (exponent 1.0): tiny probabilities."""
    calc = sc.PageRank(5 * S, 1.0, 1.5, 0.001)
    thirty = ["f"] * 30
    st = stats(c1=thirty, c2=thirty, c4=thirty, c8=[14 * S] * 10 + [15 * S] * 10 + [16 * S] * 10)
    got = calc.strategies(st, CLASSES, 15 * MIN)
    approx(got.strategies, [sc.Strategy(0.02, True)] * 3)


def test_page_rank_execution_times_above_the_timeout() -> None:
    """151 s on the largest class with a 150 s timeout (measurement slack): still a
    background run on the smallest class, whose timeout is capped at the action's."""
    calc = sc.PageRank(5 * S, 1.0, 1.5, 0.001)
    st = stats(c8=[151 * S])
    approx(calc.strategies(st, CLASSES, 150 * S).strategies, [sc.Strategy(1.0, True)])
    assert calc.background_timeout(st, CLASSES, 0, 150 * S) == 150 * S


def test_page_rank_background_timeout() -> None:
    """The timeout of a smaller class: median on the largest x (largest/smaller)^exponent
    x multiplier, at least the minimum and at most the action's timeout."""
    st = stats(c4=[8 * S, 12 * S])  # median 10 s
    calc = sc.PageRank(5 * S, 0.5, 1.5, 0.001)
    assert calc.background_timeout(st, [1, 4], 0, 30 * MIN) == 30 * S  # 10 x 2 x 1.5
    assert calc.background_timeout(st, [1, 4], 0, 20 * S) == 20 * S
    assert sc.PageRank(60 * S, 0.5, 1.5, 0.001).background_timeout(st, [1, 4], 0, MIN) == MIN


def test_page_rank_starts_from_saved_probabilities() -> None:
    """Saved probabilities in (0, 1) are the starting point; the result is the same
    eigenvector (within the convergence error)."""
    st = stats(c1=[S], c8=[S])
    first = PR.strategies(st, CLASSES, 15 * MIN)
    assert first.probabilities is not None
    sc.save_probabilities(st, first.probabilities)
    again = PR.strategies(st, CLASSES, 15 * MIN)
    approx(again.strategies, first.strategies)


def test_smallest_size_class() -> None:
    """Without pageRank: always the smallest class with the action's own timeout."""
    calc = sc.SmallestSizeClass()
    assert calc.strategies(stats(), [4], MIN).strategies == []
    assert calc.strategies(stats(c4=["f"]), [1, 4], MIN).strategies == [
        sc.Strategy(1.0, False, MIN)
    ]


# select ---------------------------------------------------------------------------------


class Fixed:
    """A strategy calculator with a fixed answer (Buildbarn's analyzer tests mock it)."""

    def __init__(self, strategies: list[sc.Strategy], background: int = 0) -> None:
        self.answer = sc.Strategies(strategies, {1: 0.5, 8: 0.5})
        self.background = background
        self.calls = 0

    def strategies(
        self, stats: Any, size_classes: Sequence[int], original_timeout: int
    ) -> sc.Strategies:
        self.calls += 1
        return self.answer

    def background_timeout(
        self, stats: Any, size_classes: Sequence[int], index: int, original: int
    ) -> int:
        return self.background


def pick(
    calc: Any,
    r: float,
    st: iscc_pb2.PreviousExecutionStats | None = None,
    now: float = 1620242374.0,
) -> sc.Selection:
    return sc.select(
        st or stats(),
        CLASSES,
        30 * MIN,
        calculator=calc,
        failure_cache_duration=24 * 3600.0,
        now=now,
        rand=lambda: r,
    )


@pytest.mark.parametrize(
    ("r", "index", "timeout"),
    [(0.1, 0, 15 * S), (0.4, 1, 15 * S), (0.74, 2, 15 * S)],
)
def test_select_draws_a_smaller_class_in_the_foreground(r: float, index: int, timeout: int) -> None:
    """One uniform draw against the strategies' probabilities, smallest class first."""
    uniform = Fixed([sc.Strategy(0.25, False, 15 * S)] * 3)
    chosen = pick(uniform, r)
    assert (chosen.index, chosen.kind, chosen.timeout) == (index, sc.SMALLER_FOREGROUND, timeout)
    assert chosen.smaller_size_class == CLASSES[index]
    assert chosen.probabilities == {1: 0.5, 8: 0.5}


def test_select_remaining_probability_is_the_largest() -> None:
    """What the strategies leave of 1 is the largest class, with the action's timeout."""
    chosen = pick(Fixed([sc.Strategy(0.6, False, 40 * S), sc.Strategy(0.2, False, 30 * S)]), 0.85)
    assert (chosen.index, chosen.kind, chosen.timeout) == (3, sc.LARGEST, 30 * MIN)
    assert chosen.probabilities == {1: 0.5, 8: 0.5}  # still saved with the outcome


def test_select_background() -> None:
    """A strategy that runs in the background: the largest class first (action's
    timeout), the smaller one later, to learn."""
    chosen = pick(Fixed([sc.Strategy(1.0, True)]), 0.32)
    assert (chosen.index, chosen.kind, chosen.timeout) == (3, sc.LARGEST_BACKGROUND, 30 * MIN)
    assert chosen.smaller_size_class == 1


def test_select_after_a_recent_failure_is_the_largest() -> None:
    """Failed on the largest class 6.7 h ago, failure cache 24 h: the largest class,
    without consulting the strategies (so no probabilities are saved either)."""
    st = stats(c8=[10 * S])
    st.last_seen_failure.seconds = 1620218381
    calc = Fixed([sc.Strategy(1.0, False, 15 * S)])
    chosen = pick(calc, 0.0, st)
    assert (chosen.index, chosen.kind, chosen.timeout) == (3, sc.LARGEST, 30 * MIN)
    assert chosen.probabilities is None and calc.calls == 0
    # A day and a bit later it is forgotten.
    assert pick(calc, 0.0, st, now=1620218381 + 24 * 3600 + 1).index == 0


# learn ----------------------------------------------------------------------------------


def learner(
    kind: int, smaller: int = 0, timeout: int = 30 * MIN, **kw: Any
) -> sizeclass_pb2.Learner:
    out = sizeclass_pb2.Learner(kind=kind, smaller_size_class=smaller, **kw)  # type: ignore[arg-type]
    out.timeout.FromNanoseconds(timeout)
    out.original_timeout.FromNanoseconds(30 * MIN)
    return out


def run(
    entry: sizeclass_pb2.Entry,
    lr: sizeclass_pb2.Learner,
    size_class: int,
    outcome: sc.Outcome,
    *,
    fallback: bool = False,
    history: int = 5,
) -> bool:
    return sc.learn(
        entry,
        lr,
        size_class=size_class,
        outcome=outcome,
        fallback=fallback,
        task="ab-3",
        now=1620242374.5,
        history_size=history,
    )


OK = sc.Outcome(True, MIN)
FAILED = sc.Outcome(False)
TIMED_OUT = sc.Outcome(False, 0, True)


def test_learn_success_on_a_smaller_class() -> None:
    """A foreground run on size class 2 succeeded in 60 s: that is recorded."""
    entry = sizeclass_pb2.Entry()
    assert not run(entry, learner(sc.SMALLER_FOREGROUND, 2), 2, OK)
    assert entry.stats == stats(c2=[MIN])


def test_learn_success_after_failure() -> None:
    """Failed on size class 1, rerun on the largest (8), which succeeded in 12 s: both
    outcomes are recorded, the first only once the rerun succeeded."""
    entry = sizeclass_pb2.Entry(stats=stats(c8=[10 * S]))
    lr = learner(sc.SMALLER_FOREGROUND, 1)
    assert not run(entry, lr, 1, FAILED, fallback=True)
    assert entry.stats == stats(c8=[10 * S]) and len(entry.pending) == 1
    assert not run(entry, lr, 8, sc.Outcome(True, 12 * S))
    assert entry.stats == stats(c1=["f"], c8=[10 * S, 12 * S])
    assert len(entry.pending) == 0


def test_learn_timeout_on_a_smaller_class_records_its_timeout() -> None:
    entry = sizeclass_pb2.Entry()
    lr = learner(sc.SMALLER_FOREGROUND, 1, timeout=40 * S)
    run(entry, lr, 1, TIMED_OUT, fallback=True)
    run(entry, lr, 8, OK)
    assert entry.stats == stats(c1=[timed_out(40 * S)], c8=[MIN])


def test_learn_failure_on_the_rerun_too() -> None:
    """Failed on the smaller class and on the largest: only the time of the failure is
    kept (the smaller class is not blamed), and it starts on the largest for a while."""
    entry = sizeclass_pb2.Entry()
    lr = learner(sc.SMALLER_FOREGROUND, 1)
    run(entry, lr, 1, FAILED, fallback=True)
    run(entry, lr, 8, FAILED)
    assert len(entry.pending) == 0 and not entry.stats.size_classes
    assert entry.stats.last_seen_failure.ToNanoseconds() == 1620242374_500000000


def test_learn_background_run() -> None:
    """Run on the largest class first (42 s): a background run on size class 1 follows;
    its success (72 s) is recorded beside the first."""
    entry = sizeclass_pb2.Entry()
    assert run(entry, learner(sc.LARGEST_BACKGROUND, 1), 8, sc.Outcome(True, 42 * S))
    assert entry.stats == stats(c8=[42 * S])
    assert not run(
        entry, learner(sc.SMALLER_BACKGROUND, 1, timeout=80 * S), 1, sc.Outcome(True, 72 * S)
    )
    assert entry.stats == stats(c1=[72 * S], c8=[42 * S])


def test_learn_background_failures() -> None:
    """A background run's failure is recorded on its class (timeouts with its timeout);
    the largest class's failure of a run that asked for one: no background run."""
    entry = sizeclass_pb2.Entry()
    run(entry, learner(sc.SMALLER_BACKGROUND, 1, timeout=80 * S), 1, TIMED_OUT)
    run(entry, learner(sc.SMALLER_BACKGROUND, 1, timeout=80 * S), 1, FAILED)
    assert entry.stats == stats(c1=[timed_out(80 * S), "f"])
    assert not entry.stats.HasField("last_seen_failure")
    assert not run(entry, learner(sc.LARGEST_BACKGROUND, 1), 8, FAILED)
    assert entry.stats.HasField("last_seen_failure")


def test_learn_keeps_history_size_outcomes_and_saves_probabilities() -> None:
    entry = sizeclass_pb2.Entry(stats=stats(c4=[S]))
    entry.stats.size_classes[4].initial_page_rank_probability = 0.3
    lr = learner(sc.LARGEST)
    lr.initial_page_rank_probabilities.update({1: 0.25, 8: 0.75})
    for i in range(7):
        run(entry, lr, 8, sc.Outcome(True, i * S))
    assert entry.stats.size_classes[8].previous_executions == execs(
        2 * S, 3 * S, 4 * S, 5 * S, 6 * S
    )
    probabilities = {
        k: v.initial_page_rank_probability for k, v in entry.stats.size_classes.items()
    }
    assert probabilities == {1: 0.25, 4: 0.0, 8: 0.75}


def test_entry_bounds() -> None:
    entry = sizeclass_pb2.Entry()
    lr = learner(sc.SMALLER_FOREGROUND, 1)
    for i in range(sc.MAX_PENDING + 3):
        sc.learn(
            entry,
            lr,
            size_class=1,
            outcome=FAILED,
            fallback=True,
            task=f"t{i}-1",
            now=0.0,
            history_size=5,
        )
    assert len(entry.pending) == sc.MAX_PENDING and entry.pending[0].action_digest == "t3-1"
    for c in range(sc.MAX_SIZE_CLASSES + 5):
        entry.stats.size_classes[c + 1].SetInParent()
    sc.bound(entry, keep=[1])
    assert len(entry.stats.size_classes) == sc.MAX_SIZE_CLASSES and 1 in entry.stats.size_classes


def test_outcome_of_a_response() -> None:
    """Buildbarn's success test (status OK and exit code 0), its timeout test
    (DEADLINE_EXCEEDED) and its duration (virtual_execution_duration)."""
    ok = re_pb2.ExecuteResponse()
    ok.result.execution_metadata.virtual_execution_duration.FromNanoseconds(3 * S)
    assert sc.Outcome.of(ok) == sc.Outcome(True, 3 * S)
    assert sc.Outcome.of(re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=1))) == FAILED
    late = re_pb2.ExecuteResponse()
    late.status.code = 4
    assert sc.Outcome.of(late) == TIMED_OUT


# Storage --------------------------------------------------------------------------------


def test_reduced_action_digest_and_key() -> None:
    """Buildbarn's reduced action digest keeps only the command digest and the platform
    (this Action and digest function give Buildbarn's 5057a5db...-39)."""
    a = re_pb2.Action(
        command_digest=re_pb2.Digest(hash="bf4d2b56ee892c3fc862cdb863a6c2f4", size_bytes=720),
        input_root_digest=re_pb2.Digest(hash="9a0be105e682022830da33578b909521", size_bytes=951),
    )
    reduced = sc.reduced_action_digest(a, re_pb2.DigestFunction.MD5)
    assert (reduced.hash, reduced.size_bytes) == ("5057a5db1b97ee73b2466f60e781d607", 39)
    a.timeout.seconds = 5
    a.do_not_cache = True
    assert sc.reduced_action_digest(a, re_pb2.DigestFunction.MD5) == reduced
    assert (
        sc.stats_key("hello", re_pb2.DigestFunction.MD5, reduced)
        == "redbarn:v1:iscc:md5:5057a5db1b97ee73b2466f60e781d607-39:hello"
    )


def test_decode_entry() -> None:
    assert sc.decode_entry(None) == sizeclass_pb2.Entry()
    entry = sizeclass_pb2.Entry(stats=stats(c1=["f"]))
    assert sc.decode_entry(entry.SerializeToString()) == entry
    with pytest.raises(sc.CorruptEntry):
        sc.decode_entry(b"\xff\xff\xff")


# The analyzer through the scheduler core --------------------------------------------------

FEEDBACK = json_format.Parse(
    """{"failureCacheDuration": "3600s", "historySize": 8,
        "pageRank": {"acceptableExecutionTimeIncreaseExponent": 0.5,
                     "smallerSizeClassExecutionTimeoutMultiplier": 1.5,
                     "minimumExecutionTimeout": "10s", "maximumConvergenceError": 0.002}}""",
    scheduler_pb2.InitialSizeClassFeedbackDrivenAnalyzerConfiguration(),
)
PREDECLARED = parse_predeclared(
    '{"platform": {}, "sizeClasses": [1, 4], "maximumQueuedBackgroundLearningOperations": 1,'
    ' "backgroundLearningOperationPriority": 7}'
)


async def scheduler(
    redis: Any, rand: float, *, config: SchedulerConfig = FAST, feedback: Any = FEEDBACK
) -> Scheduler:
    s = Scheduler(redis, config, hints=PollingHints(), feedback_driven=feedback)
    if s.size_classes is not None:
        s.size_classes.rand = lambda: rand
    await s.start()
    for worker, size_class in (("small", 1), ("big", 4)):
        await synchronize(s, request(worker, size_class=size_class, prefer_idle=True))
    return s


def echo(
    ex: rw_pb2.DesiredState.Executing, response: re_pb2.ExecuteResponse
) -> re_pb2.ExecuteResponse:
    """The worker's result with the assignment's auxiliary metadata, as bb_worker's
    NewDefaultExecuteResponse (and redbarn's worker) put it there."""
    out = re_pb2.ExecuteResponse()
    out.CopyFrom(response)
    out.result.execution_metadata.auxiliary_metadata.extend(ex.auxiliary_metadata)
    return out


def ok(seconds: float) -> re_pb2.ExecuteResponse:
    r = re_pb2.ExecuteResponse()
    r.result.execution_metadata.virtual_execution_duration.FromNanoseconds(round(seconds * S))
    return r


FAIL = re_pb2.ExecuteResponse(result=re_pb2.ActionResult(exit_code=1))


async def work(
    s: Scheduler,
    worker: str,
    size_class: int,
    result: Callable[[rw_pb2.DesiredState.Executing], Any],
) -> rw_pb2.DesiredState.Executing | None:
    """One assignment for `worker`, completed with `result(executing)`, and its outcome
    recorded. None when it had nothing to do."""
    reply = await synchronize(s, request(worker, size_class=size_class, prefer_idle=False))
    if assigned(reply) is None:
        return None
    ex = reply.desired_state.executing
    await synchronize(
        s,
        request(
            worker,
            "completed",
            ex.action_digest,
            response=echo(ex, result(ex)),
            size_class=size_class,
            prefer_idle=True,
        ),
    )
    assert s.size_classes is not None
    await s.size_classes.settle()
    return ex


async def entry_of(redis: Any, a: re_pb2.Action) -> sizeclass_pb2.Entry:
    key = sc.stats_key("", SHA256, sc.reduced_action_digest(a, SHA256))
    assert await redis.ttl(key) > 6 * 24 * 3600
    return sc.decode_entry(await redis.get(key))


async def test_an_action_that_needs_the_large_class_learns_to_start_there(
    any_redis: aioredis.Redis,
) -> None:
    """Buildbarn's feedback-driven analyzer with PageRank: a new action starts on the
    smallest class; failing there, it reruns on the largest, and both outcomes are
    stored. From then on its smaller class fails more often than it succeeds, so the
    strategy there is a background run: every start is on the largest class (here the
    draw falls past that strategy's probability, 1/3, so no background run)."""
    s = await scheduler(any_redis, rand=0.9)
    digest, a = action(1)
    first = await execute(s, 1)
    assert first.size_class == 1
    small = await work(s, "small", 1, lambda ex: FAIL)
    # The first (unknown) run on a smaller class: min(timeout, minimumExecutionTimeout)
    # as in Buildbarn; the rerun on the largest class has the action's own timeout back.
    assert small is not None and small.action.timeout.seconds == 10
    big = await work(s, "big", 4, lambda ex: ok(2))
    assert big is not None and big.action.timeout.seconds == 1800
    entry = await entry_of(any_redis, a)
    assert entry.stats == stats(c1=["f"], c4=[2 * S]) and not entry.pending
    for _ in range(3):
        again = await execute(s, 1)
        assert again.size_class == 4
        assert await work(s, "small", 1, lambda ex: FAIL) is None
        assert await work(s, "big", 4, lambda ex: ok(2)) is not None
    entry = await entry_of(any_redis, a)
    assert entry.stats.size_classes[4].previous_executions == execs(*[2 * S] * 4)
    assert entry.stats.size_classes[1].initial_page_rank_probability == pytest.approx(
        1 / 3, abs=0.005
    )
    assert entry.stats.size_classes[4].initial_page_rank_probability == pytest.approx(
        2 / 3, abs=0.005
    )
    assert digest == first.action_digest


async def test_background_learning_run(any_redis: aioredis.Redis) -> None:
    """Buildbarn's background learning on a predeclared queue with
    maximumQueuedBackgroundLearningOperations 1: after a successful run on the largest
    class whose strategy was a background run, a copy (do_not_cache, the timeout
    GetBackgroundExecutionTimeout gives: median 2 s x (4/1)^0.5 x 1.5 = 6 s, raised to
    the 10 s minimum) runs on the smaller class under the BackgroundLearning invocation
    with the queue's priority; its failure is recorded and not rerun on the largest."""
    s = await scheduler(
        any_redis, rand=0.1, config=dataclasses.replace(FAST, predeclared=(PREDECLARED,))
    )
    _, a = action(1)
    await execute(s, 1)
    await work(s, "small", 1, lambda ex: FAIL)
    await work(s, "big", 4, lambda ex: ok(2))
    second = await execute(s, 1)
    assert second.size_class == 4  # 0.1 < 1/3: the background strategy
    assert await work(s, "big", 4, lambda ex: ok(2)) is not None
    queued = await any_redis.zrange(keys.domain_key(PREDECLARED.domain, "queued"), 0, -1)
    assert [m.split(codec.SEP.encode())[0] for m in queued] == [b"0000000001 /b"]
    assert queued[0].split(codec.SEP.encode())[1][:10] == codec.priority_field(7).encode()
    background = await work(s, "small", 1, lambda ex: FAIL)
    assert background is not None
    assert background.action.do_not_cache and background.action.timeout.seconds == 10
    assert await work(s, "big", 4, lambda ex: ok(2)) is None  # not rerun on the largest
    entry = await entry_of(any_redis, a)
    assert entry.stats.size_classes[1].previous_executions == execs("f", "f")
    assert entry.stats.size_classes[4].previous_executions == execs(2 * S, 2 * S)


async def test_a_recent_failure_on_the_largest_starts_there(any_redis: aioredis.Redis) -> None:
    """Failed on both classes: for failureCacheDuration it starts on the largest."""
    s = await scheduler(any_redis, rand=0.0)
    _, a = action(1)
    assert (await execute(s, 1)).size_class == 1
    await work(s, "small", 1, lambda ex: FAIL)
    await work(s, "big", 4, lambda ex: FAIL)
    entry = await entry_of(any_redis, a)
    assert entry.stats.HasField("last_seen_failure") and not entry.stats.size_classes
    assert (await execute(s, 1)).size_class == 4


async def test_without_feedback_driven_nothing_is_read_or_written(
    any_redis: aioredis.Redis,
) -> None:
    s = await scheduler(any_redis, rand=0.0, feedback=None)
    assert s.size_classes is None and s.operations.size_classes is None
    assert (await execute(s, 1)).size_class == 1
    reply = await synchronize(s, request("small", size_class=1))
    assert not reply.desired_state.executing.auxiliary_metadata
    assert await any_redis.keys(f"{sc.STATS_PREFIX}:*") == []


class Broken:
    """A Redis client whose GET fails."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def get(self, key: str) -> bytes:
        raise ConnectionError("Redis is down")


async def test_analysis_failures_fall_back_to_the_default_rule(
    fake_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed read: logged, the default rule (smallest class with workers), no
    learner. A corrupt entry: logged, analysed as if there were no statistics."""
    s = await scheduler(fake_redis, rand=0.9)
    assert s.size_classes is not None
    _, a = action(1)
    analyzer = s.size_classes
    domain = keys.domain_id("", codec.platform_json(re_pb2.Platform()))
    analyzer.redis = Broken(fake_redis)
    with caplog.at_level(logging.WARNING):
        choice = await analyzer.start(instance_name="", digest_function=SHA256, action=a).choose(
            domain, 1800
        )
    assert choice is None and "Redis is down" in caplog.text
    analyzer.redis = fake_redis
    await fake_redis.set(sc.stats_key("", SHA256, sc.reduced_action_digest(a, SHA256)), b"\xff\xff")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        choice = await analyzer.start(instance_name="", digest_function=SHA256, action=a).choose(
            domain, 1800
        )
    assert choice is not None and choice.size_class == 1 and "corrupt" in caplog.text


class BrokenWrites(Broken):
    """A Redis client whose GET works and SET fails."""

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)  # type: ignore[no-any-return]

    async def set(self, *args: Any, **kw: Any) -> None:
        raise ConnectionError("Redis refuses writes")


async def test_a_failed_write_is_logged_and_the_worker_goes_on(
    fake_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Recording an outcome is fire-and-forget: its failure is logged, never the
    worker's Synchronize's."""
    s = await scheduler(fake_redis, rand=0.9)
    assert s.size_classes is not None
    s.size_classes.redis = BrokenWrites(fake_redis)
    await execute(s, 1)
    with caplog.at_level(logging.WARNING):
        assert await work(s, "small", 1, lambda ex: FAIL) is not None
        assert await work(s, "big", 4, lambda ex: ok(2)) is not None  # the rerun
    assert "Redis refuses writes" in caplog.text
    assert await fake_redis.keys(f"{sc.STATS_PREFIX}:*") == []


async def test_a_learner_naming_another_instance_is_ignored(
    fake_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A learner comes back through a worker: one naming statistics outside the
    platform queue's instance name prefix is not recorded."""
    s = Scheduler(fake_redis, FAST, hints=PollingHints(), feedback_driven=FEEDBACK)
    assert s.size_classes is not None
    _, a = action(1)
    forged = learner(sc.LARGEST, instance_name="other-tenant")
    forged.reduced_action_digest.CopyFrom(sc.reduced_action_digest(a, SHA256))
    response = ok(1)
    response.result.execution_metadata.auxiliary_metadata.append(sc._pack(forged))
    with caplog.at_level(logging.WARNING):
        s.size_classes.observe(
            domain="d",
            prefix="main",
            size_class=4,
            action_digest=action(1)[0],
            response=response,
            fallback=False,
        )
        await s.size_classes.settle()
    assert "outside prefix 'main'" in caplog.text
    assert await fake_redis.keys(f"{sc.STATS_PREFIX}:*") == []


async def test_an_exponent_that_overflows_falls_back_to_the_default_rule(
    fake_redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    feedback = scheduler_pb2.InitialSizeClassFeedbackDrivenAnalyzerConfiguration()
    feedback.CopyFrom(FEEDBACK)
    feedback.page_rank.acceptable_execution_time_increase_exponent = 1e6
    s = await scheduler(fake_redis, rand=0.9, feedback=feedback)
    assert s.size_classes is not None
    _, a = action(1)
    entry = sizeclass_pb2.Entry(stats=stats(c1=["f"], c4=[S]))
    await fake_redis.set(
        sc.stats_key("", SHA256, sc.reduced_action_digest(a, SHA256)), entry.SerializeToString()
    )
    domain = keys.domain_id("", codec.platform_json(re_pb2.Platform()))
    with caplog.at_level(logging.WARNING):
        choice = await s.size_classes.start(
            instance_name="", digest_function=SHA256, action=a
        ).choose(domain, 1800)
    assert choice is None and "size class analysis failed" in caplog.text
