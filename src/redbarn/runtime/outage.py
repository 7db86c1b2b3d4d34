"""One log of a backend's outage per process: once when it starts, reminders with back-off,
once when it ends.

A frontend has several loops that touch Redis on their own (the health check, the hint
channel's subscription, the reaper). While Redis is down each of them fails every tick;
logging each failure wrote about 50 lines a second, with a traceback every second. They
now share one `OutageLog` per backend and report to it instead of logging:

    outage = OutageLog(f"Redis at {redact_url(url)}")
    try:
        await tick()
    except UNREACHABLE as err:
        outage.failed(err, "reaper tick failed")
    else:
        outage.ok()

The first failure logs `Redis at redis://10.0.0.5:6379/0 is unreachable (reaper tick
failed: Error 111 connecting to 10.0.0.5:6379. Connection refused.)` at WARNING, without
a traceback. Later failures log nothing but a reminder when one is due: the first
`first_reminder` seconds into the outage, then at doubling intervals of at most
`max_reminder` (10 s, 30 s, 70 s, 150 s, 310 s, then every 5 min). The first success
after that logs `... is reachable again after 42.0 s (17 failed attempts)` at INFO.
Only the logging is throttled: callers still fail their requests (UNAVAILABLE) at once.

A backend that is only partly down (a Redis Cluster or Sentinel failover, where the
loops touching the dead master's slots fail while the others succeed) would make every
success end the outage and the next failure start another. With `settle` seconds, a
success only ends the outage once no failure has followed it for that long (the
"reachable again" line comes with the first success after that, and counts the
outage up to the success that ended it); a failure within it continues the outage,
unlogged. The frontend sets it for `redis+cluster://` and `redis+sentinel://`.
The clock is injected, so tests step through the schedule without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.exceptions

log = logging.getLogger(__name__)

# What a background loop counts as "the backend is unreachable" (reported to an
# OutageLog) rather than a bug (logged with its traceback): lost or refused connections,
# timeouts, a server still loading its data, a wrong password.
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # also AuthenticationError, BusyLoadingError
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def describe(err: BaseException) -> str:
    """`err` in one line: its message, or its class when it has none (a bare timeout)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


class OutageLog:
    """Logs the outages of one backend (`what`, e.g. "Redis at redis://r:6379/0"; `impact`
    tells the reader of the first line what fails meanwhile).

    `failed(err, where)` after a failed attempt, `ok()` after a successful one; any
    number of loops may report to the same object. Not thread-safe: one event loop.
    """

    def __init__(
        self,
        what: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        first_reminder: float = 10.0,
        max_reminder: float = 300.0,
        impact: str = "calls that need it fail with UNAVAILABLE until it is back",
        logger: logging.Logger = log,
        settle: float = 0.0,
    ) -> None:
        self.what = what
        self.impact = impact
        self._clock = clock
        self._first_reminder = first_reminder
        self._max_reminder = max_reminder
        self._log = logger
        self.since: float | None = None  # clock() at the first failure of this outage
        self.failures = 0  # failed attempts in this outage
        self._gap = first_reminder  # seconds from the last line to the next reminder
        self._next_reminder = 0.0
        self._settle = settle
        self._recovered: float | None = None  # clock() at the success that may end it

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, err: BaseException, where: str = "") -> None:
        """An attempt failed with `err`; `where` says which ("health check redis failed")."""
        now = self._clock()
        self.failures += 1
        self._recovered = None
        cause = f"{where}: {describe(err)}" if where else describe(err)
        if self.since is None:
            self.since = now
            self._gap = self._first_reminder
            self._next_reminder = now + self._gap
            self._log.warning("%s is unreachable (%s); %s", self.what, cause, self.impact)
            return
        if now >= self._next_reminder:
            self._log.warning(
                "%s is still unreachable after %.0f s (%d failed attempts; last: %s)",
                self.what,
                now - self.since,
                self.failures,
                cause,
            )
            self._gap = min(self._gap * 2, self._max_reminder)
            self._next_reminder = now + self._gap

    def ok(self) -> None:
        """An attempt succeeded: ends the outage, if there was one."""
        if self.since is None:
            return
        now = self._clock()
        if self._settle > 0:
            if self._recovered is None:
                self._recovered = now
            if now - self._recovered < self._settle:
                return
            now = self._recovered
        self._log.info(
            "%s is reachable again after %.1f s (%d failed attempts)",
            self.what,
            now - self.since,
            self.failures,
        )
        self.since = None
        self.failures = 0
        self._recovered = None
