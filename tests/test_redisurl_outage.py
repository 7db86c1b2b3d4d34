"""One outage line per Redis failover (issue 19): OutageLog's `settle`, and the frontend
giving it to cluster and sentinel URLs only. The clock is stepped by hand."""

from __future__ import annotations

import logging

import pytest
import redis.exceptions

from redbarn.frontend.server import FAILOVER_SETTLE, redis_outage_log
from redbarn.runtime.outage import OutageLog

REFUSED = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:7000.")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.outage"]


def test_a_flapping_failover_is_one_outage(caplog: pytest.LogCaptureFixture) -> None:
    """Loops on the surviving masters succeed while those on the dead one fail: with
    settle, those successes do not end the outage; the first success after a quiet
    `settle` does, and the line counts up to the success that ended it."""
    caplog.set_level(logging.INFO, logger="test.outage")
    clock = Clock()
    log = OutageLog(
        "Redis at redis+cluster://r:7000", clock=clock, settle=5.0,
        logger=logging.getLogger("test.outage"),
    )  # fmt: skip
    log.failed(REFUSED, "hint channel lost")
    for step in range(6):  # 3 s of alternating results, as in a failover
        clock.now += 0.5
        if step % 2:
            log.failed(REFUSED, "reaper tick failed")
        else:
            log.ok()
    clock.now += 0.5
    log.ok()  # the last failure was at +3.0 s; recovered from +3.5 s
    clock.now += 4.0
    log.ok()  # still inside settle: nothing yet
    assert len(lines(caplog)) == 1
    clock.now += 1.5
    log.ok()  # 5.5 s of quiet
    assert lines(caplog) == [
        "Redis at redis+cluster://r:7000 is unreachable (hint channel lost: Error 111 "
        "connecting to 127.0.0.1:7000.); calls that need it fail with UNAVAILABLE until "
        "it is back",
        "Redis at redis+cluster://r:7000 is reachable again after 3.5 s (4 failed attempts)",
    ]
    assert not log.down
    log.failed(REFUSED, "health check failed")  # a new outage is a new line
    assert len(lines(caplog)) == 3


def test_without_settle_each_success_ends_the_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.outage")
    clock = Clock()
    log = OutageLog("Redis", clock=clock, logger=logging.getLogger("test.outage"))
    log.failed(REFUSED)
    clock.now += 0.5
    log.ok()
    log.failed(REFUSED)
    assert len(lines(caplog)) == 3


def test_the_frontend_settles_cluster_and_sentinel_outages_only() -> None:
    assert FAILOVER_SETTLE > 0
    for url, settle in (
        ("redis://r:6379/0", 0.0),
        ("unix:///run/r.sock", 0.0),
        ("redis+cluster://:pw@r:7000", FAILOVER_SETTLE),
        ("redis+sentinel://s:26379/m", FAILOVER_SETTLE),
    ):
        log = redis_outage_log(url)
        assert log._settle == settle, url
        assert "pw" not in log.what
    assert redis_outage_log("redis+cluster://r:7000", "CAS Redis").what == (
        "CAS Redis at redis+cluster://r:7000"
    )


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("CLUSTERDOWN The cluster is down", "the Redis Cluster is down (a failover under way?); retry"),
        ("TRYAGAIN Multiple keys request during rehashing of slot", "a Redis Cluster slot is being migrated; retry"),
    ],
)  # fmt: skip
def test_cluster_refusals_are_unavailable(reply: str, message: str) -> None:
    """A cluster mid-failover or mid-migration answers CLUSTERDOWN or TRYAGAIN: clients
    get UNAVAILABLE (retry), not INTERNAL, whichever client read the reply."""
    import hiredis

    from redbarn import errors
    from redbarn.runtime import fastredis, redis_refusals

    err = fastredis._error(hiredis.ReplyError(reply))
    for exc in (err, redis.exceptions.ResponseError(reply)):
        got = redis_refusals.refusal(exc)
        assert isinstance(got, errors.Unavailable), exc
        assert str(got) == message
