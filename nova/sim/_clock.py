"""VirtualClock: time that moves only when you say so.

    clock = VirtualClock()                    # starts at 2030-01-01T00:00:00Z
    await clock.advance(timedelta(minutes=5)) # run everything due in those 5 minutes, in order
    await clock.advance(timedelta(0))         # let everything runnable now finish

``advance`` steps from one sleeper's deadline to the next; at each step it
wakes the sleepers that are due and waits until the program is quiet (no
runnable asyncio callbacks, no thread started through ``run_sync`` still
running) before moving on. So a handler that ``await clock.sleep(60)`` takes
no wall time, and a delayed task fires at the exact virtual instant it is due.
Code under a VirtualClock must wait through the clock (``sleep``,
``sleep_until``), asyncio primitives or queues — never ``asyncio.sleep(n > 0)``.
Advance one VirtualClock at a time per event loop: two clocks advancing at
once each see the other as runnable work and never settle.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from nova._errors import ConfigurationError, StateError, ValidationError
from nova.sim._asyncio_internals import runnable_callbacks

__all__ = ["VirtualClock"]

T = TypeVar("T")

DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)


class VirtualClock:
    """A deterministic clock for tests and simulation (see module docstring)."""

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        if start.tzinfo is None:
            raise ConfigurationError("VirtualClock start must be an aware datetime (e.g. tzinfo=timezone.utc)")
        self._now = start.timestamp()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._threads = 0
        self._threads_done: asyncio.Event | None = None
        self._advancing = False

    # -- the Clock protocol -------------------------------------------------
    def time(self) -> float:
        return self._now

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._now, UTC)

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut  # a cancelled future is skipped when its deadline comes

    async def run_sync(self, fn: Callable[[], T]) -> T:
        self._threads += 1
        try:
            return await asyncio.to_thread(fn)
        finally:
            self._threads -= 1
            if self._threads == 0 and self._threads_done is not None:
                self._threads_done.set()

    # -- driving time -------------------------------------------------------
    async def advance(self, delta: timedelta | float) -> None:
        """Move time forward by ``delta``, running everything that falls due, in order."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValidationError("a VirtualClock never goes backwards")
        await self.advance_to(self._now + seconds)

    async def advance_to(self, deadline: float) -> None:
        """Move time forward to ``deadline`` (epoch seconds)."""
        if self._advancing:
            raise StateError("VirtualClock.advance is already running in another task")
        self._advancing = True
        try:
            await self.settle()
            while self._sleepers:
                due = self._sleepers[0][0]
                if due > deadline:
                    break
                self._now = max(self._now, due)
                while self._sleepers and self._sleepers[0][0] <= self._now:
                    _, _, fut = heapq.heappop(self._sleepers)
                    if not fut.done():
                        fut.set_result(None)
                await self.settle()
            self._now = max(self._now, deadline)
            await self.settle()
        finally:
            self._advancing = False

    async def run_until(
        self, predicate: Callable[[], bool], *, within: timedelta, step: timedelta | None = None
    ) -> bool:
        """Advance until ``predicate()`` holds, at most ``within`` of virtual time.

        With ``step`` None it jumps from deadline to deadline (exact); returns
        whether the predicate became true.
        """
        limit = self._now + within.total_seconds()
        await self.advance(0)
        while not predicate():
            if self._now >= limit:
                return False
            if step is not None:
                await self.advance_to(min(self._now + step.total_seconds(), limit))
                continue
            nxt = self.next_deadline()
            await self.advance_to(limit if nxt is None or nxt > limit else nxt)
        return True

    def next_deadline(self) -> float | None:
        """Earliest pending sleeper deadline, if any."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def settle(self, *, max_rounds: int = 1_000_000) -> None:
        """Return when nothing is runnable at the current virtual time.

        Raises StateError if the program is still busy after ``max_rounds``
        event-loop turns without time moving (a livelock), instead of hanging.
        """
        loop = asyncio.get_running_loop()
        quiet_rounds = 0
        rounds = 0
        while quiet_rounds < 2:
            await asyncio.sleep(0)
            rounds += 1
            if rounds > max_rounds:
                raise StateError(
                    f"the program never went quiet at {self.now().isoformat()} after {max_rounds} "
                    "event-loop turns: something loops without waiting on the clock (livelock)"
                )
            if self._threads:
                self._threads_done = asyncio.Event()
                await self._threads_done.wait()
                quiet_rounds = 0
                continue
            ready = runnable_callbacks(loop)
            if ready is None:  # a loop that does not say: fall back to many yields
                quiet_rounds = 2 if rounds > 200 else 0
            elif ready == 0:
                quiet_rounds += 1
            else:
                quiet_rounds = 0

    def __repr__(self) -> str:
        return f"VirtualClock(now={self.now().isoformat()})"
