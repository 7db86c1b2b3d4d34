"""gRPC health: SERVING while every backend answers, NOT_SERVING while one does not.

A background task runs each check (a Redis PING, an upstream storage probe) every
`interval` seconds with a timeout of the same length, and sets the status of the
overall service ("") and of every registered service name. Each check reports to the
`OutageLog` of its backend (`redbarn.runtime.outage`), which the frontend's other loops
share: an outage is logged once, with reminders, and its end once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from redbarn.runtime.outage import OutageLog

Check = Callable[[], Awaitable[object]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    def __init__(
        self,
        servicer: HealthServicer,
        checks: Sequence[tuple[str, Check, OutageLog]],
        *,
        interval: float = 1.0,
    ) -> None:
        self.servicer = servicer
        self.checks = list(checks)
        self.services: list[str] = [""]
        self.interval = interval
        self.healthy: bool | None = None

    async def check_once(self) -> bool:
        ok = True
        timeout = max(self.interval, 0.5)
        for name, check, outage in self.checks:
            try:
                await asyncio.wait_for(check(), timeout=timeout)
            except Exception as exc:  # any failure means not serving
                if isinstance(exc, TimeoutError) and not str(exc):
                    exc = TimeoutError(f"no answer within {timeout:g} s")
                outage.failed(exc, f"health check {name} failed")
                ok = False
            else:
                outage.ok()
        if ok != self.healthy:
            self.healthy = ok
            for service in self.services:
                await self.servicer.set(service, SERVING if ok else NOT_SERVING)
        return ok

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)
