"""The event loop processes run on: uvloop where it is installed, else asyncio's own.

uvloop (libuv) runs the frontend's and the worker's callbacks, socket reads and writes
with less CPU per event than asyncio's selector loop; on the frontend's hot path (one
gRPC call and a few Redis round trips per action) that is about a sixth of the CPU.
`REDBARN_EVENT_LOOP=asyncio` forces the standard loop (to rule uvloop out when
debugging); the default, `auto`, takes uvloop when it imports.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from redbarn.config import ConfigError

T = TypeVar("T")

ENV = "REDBARN_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default loop."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f'{ENV} must be "auto", "uvloop" or "asyncio", not "{choice}"')
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(f"{ENV}=uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
