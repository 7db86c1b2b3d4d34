"""Wake-up hints: how a frontend's waiters learn that Redis state changed.

Scripts publish a hint to the frontend that holds a waiter (an Execute or WaitExecution
stream, a parked Synchronize) whenever what it waits for changes, and carry the new
state in it (`replies.operation_hint`, `replies.worker_hint`), so a woken waiter usually
needs no Redis call. Hints for the calling frontend come back in the script's reply
(`Scripts`, `deliver`). Redis state stays the truth: every waiter also re-reads on a
bounded timer, so a lost hint costs a read, never a hung client.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol


class Hints(Protocol):
    """Wake-up hints for this frontend (implemented by `redbarn.frontend.hub.Hub`).

    `fid` names the frontend's channel (`keys.CHANNEL_PREFIX` + fid); `wait(topic,
    timeout)` returns the payload published with the topic (b"" when there was none), or
    None on timeout. `closing` turns true when the frontend shuts down (every wait then
    returns at once).
    """

    fid: str
    closing: bool

    async def wait(self, topic: str, timeout: float) -> bytes | None: ...

    def deliver(self, message: bytes) -> None:
        """A hint for this frontend that came back in a script's reply instead of over
        pub/sub ("<topic>\x1f<payload>", as published)."""

    async def alive(self, fid: str) -> bool:
        """Whether frontend `fid` is still running (it listens on its channel). True
        when this cannot be told: the caller then keeps its state."""


class PollingHints:
    """No pub/sub: every wait just sleeps (the waiter then re-reads state)."""

    closing = False
    polling = True  # no hint ever comes: a waiter must re-read Redis to learn anything

    def __init__(self, fid: str | None = None, step: float = 0.05) -> None:
        self.fid = fid or uuid.uuid4().hex[:12]
        self._step = step

    async def wait(self, topic: str, timeout: float) -> bytes | None:
        await asyncio.sleep(max(0.0, min(timeout, self._step)))
        return None

    def deliver(self, message: bytes) -> None:
        """Dropped: polling waiters re-read state anyway."""

    async def alive(self, fid: str) -> bool:
        """Unknown without pub/sub: taken as alive."""
        return True
