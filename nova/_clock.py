"""Clocks. Every wait in nova's engine goes through one, so a virtual clock
(``nova.sim.VirtualClock``) can drive delays, backoffs, windows and timeouts
deterministically.

    clock = SystemClock()
    clock.time()            # epoch seconds (float)
    clock.now()             # aware UTC datetime
    await clock.sleep(0.5)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Clock", "SystemClock", "wait_with_timeout"]

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    """What the engine needs of time."""

    def time(self) -> float:
        """Current time, epoch seconds."""
        ...

    def now(self) -> datetime:
        """Current time as an aware UTC datetime."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``time() >= deadline`` (epoch seconds)."""
        ...

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a worker thread (a virtual clock counts it as busy)."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(deadline - time.time(), 0.0))

    async def run_sync(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def __repr__(self) -> str:
        return "SystemClock()"


async def wait_with_timeout(clock: Clock, awaitable: Awaitable[T], timeout: float) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds of ``clock`` time.

    Raises TimeoutError (and cancels the awaitable) when the time runs out.
    """
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        timer.cancel()
        raise
    timer.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    raise TimeoutError(f"timed out after {timeout} s")
