"""OutageLog (redbarn.runtime.outage): an outage logged once, reminders with back-off, the
recovery once; and the frontend's Redis loops sharing one (issue 14, item 7). Also the
start-up line naming the Redis in use (item 8a).

The schedule is stepped with an injected clock; the shared-loop test runs the health
check, the hint hub and the reaper for real against a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from grpc_health.v1._async import HealthServicer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.health import HealthReporter
from redbarn.frontend.hub import Hub, new_frontend_id
from redbarn.frontend.server import startup_line
from redbarn.queue.config import SchedulerConfig
from redbarn.queue.scheduler import Scheduler
from redbarn.runtime.outage import OutageLog
from redbarn.runtime.outage import describe as describe_error
from redbarn.runtime.redisserver import free_port

REFUSED = redis.exceptions.ConnectionError("Error 111 connecting to r:6379. Connection refused.")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@dataclass
class Stepped:
    """An OutageLog on a fake clock, logging into `records`."""

    now: float = 1000.0
    records: Records = field(default_factory=Records)
    log: OutageLog = field(init=False)

    def __post_init__(self) -> None:
        logger = logging.getLogger(f"test.outage.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.records)
        self.log = OutageLog("Redis at redis://r:6379/0", clock=lambda: self.now, logger=logger)

    def fail_for(self, seconds: int, every: float = 1.0) -> list[int]:
        """Fail every `every` s for `seconds` s: the seconds into the outage at which a
        line was logged."""
        logged = []
        for _ in range(round(seconds / every) + 1):
            before = len(self.records.records)
            self.log.failed(REFUSED, "reaper tick failed")
            if len(self.records.records) > before:
                assert self.log.since is not None
                logged.append(round(self.now - self.log.since))
            self.now += every
        return logged


def test_backoff_schedule() -> None:
    """Failing 64 times a second (the old flood was ~50 lines a second) for 15 min: one
    line at once, reminders at 10, 30, 70, 150, 310 s (the gap doubles), then every 5 min."""
    s = Stepped()
    assert s.fail_for(900, every=1 / 64) == [0, 10, 30, 70, 150, 310, 610]
    first, reminder = s.records.lines[:2]
    assert first == (
        "Redis at redis://r:6379/0 is unreachable (reaper tick failed: Error 111 connecting "
        "to r:6379. Connection refused.); calls that need it fail with UNAVAILABLE until it "
        "is back"
    )
    assert reminder == (
        "Redis at redis://r:6379/0 is still unreachable after 10 s (641 failed attempts; "
        "last: reaper tick failed: Error 111 connecting to r:6379. Connection refused.)"
    )
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in s.records.records)


def test_recovery_logged_once_and_next_outage_starts_afresh() -> None:
    s = Stepped()
    s.log.ok()  # healthy: nothing to say
    assert s.records.lines == []
    assert s.fail_for(40) == [0, 10, 30]
    s.log.ok()
    s.log.ok()
    assert s.records.lines[-1] == (
        "Redis at redis://r:6379/0 is reachable again after 41.0 s (41 failed attempts)"
    )
    assert s.records.records[-1].levelno == logging.INFO
    assert len(s.records.lines) == 4
    assert not s.log.down
    # The next outage is announced at once, and its reminders start over at 10 s.
    s.now += 3600
    assert s.fail_for(12) == [0, 10]
    assert "is unreachable" in s.records.lines[-2]


def test_failures_of_any_loop_share_the_outage() -> None:
    """Whichever loop fails first announces it; the others' failures are counted."""
    s = Stepped()
    s.log.failed(REFUSED, "hint channel redbarn:v1:fe:abc lost")
    s.log.failed(REFUSED, "health check redis failed")
    s.log.failed(REFUSED, "reaper tick failed")
    assert len(s.records.lines) == 1
    assert "(hint channel redbarn:v1:fe:abc lost: Error 111" in s.records.lines[0]
    assert s.log.failures == 3


def test_error_without_message_is_named_by_its_class() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(RuntimeError("two\n  lines")) == "two lines"


async def test_frontend_loops_log_one_outage(caplog: pytest.LogCaptureFixture) -> None:
    """The health check, the hint hub and the reaper, all failing many times a second
    against a port nothing listens on, log one line between them, with no traceback."""
    caplog.set_level(logging.DEBUG)
    port = free_port()
    client = aioredis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    outage = OutageLog(f"Redis at redis://127.0.0.1:{port}/0")
    health = HealthReporter(HealthServicer(), [("redis", client.ping, outage)], interval=0.05)
    hub = Hub(client, new_frontend_id(), retry_delay=0.02, outage=outage)
    scheduler = Scheduler(client, SchedulerConfig(), hints=hub)
    tasks = [
        asyncio.create_task(health.run()),
        asyncio.create_task(hub.run()),
        asyncio.create_task(scheduler.run_reaper(0.02, outage=outage)),
    ]
    try:
        await asyncio.sleep(1.0)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()
    assert outage.failures > 30  # every loop kept trying...
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in lines] == ["redbarn.runtime.outage"], caplog.text  # ...one line
    assert lines[0].exc_info is None
    assert f"Redis at redis://127.0.0.1:{port}/0 is unreachable (" in lines[0].getMessage()
    assert "Connect" in lines[0].getMessage()  # the error itself


async def test_health_check_reports_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    up = False

    async def ping() -> None:
        if not up:
            raise redis.exceptions.ConnectionError("Connection refused")

    outage = OutageLog("Redis at redis://r:6379/0")
    health = HealthReporter(HealthServicer(), [("redis", ping, outage)], interval=0.5)
    for _ in range(5):
        assert not await health.check_once()
    up = True
    assert await health.check_once()
    assert await health.check_once()
    assert [r.getMessage().split(" after ")[0] for r in caplog.records] == [
        "Redis at redis://r:6379/0 is unreachable (health check redis failed: Connection "
        "refused); calls that need it fail with UNAVAILABLE until it is back",
        "Redis at redis://r:6379/0 is reachable again",
    ]


def test_start_up_line_names_redis() -> None:
    """`redbarn frontend` without --redis uses 127.0.0.1:6379 and says so; passwords masked."""
    default = startup_line(FrontendConfig(listen="127.0.0.1:8980"), 8980)
    assert "redis redis://127.0.0.1:6379/0 (the default; --redis or REDBARN_REDIS" in default
    given = FrontendConfig(redis_url="redis://app:s3cret@r:6380/1", cas_redis_url="redis://c/2")
    line = startup_line(given, 8980)
    assert "redis redis://app:***@r:6380/1, storage redis redis://c/2" in line
    assert "s3cret" not in line and "default" not in line
