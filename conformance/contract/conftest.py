"""Fixtures of the broker-level contract suite: the ``nova._broker`` contract itself, on any backend.

The rest of ``conformance/`` checks what a TaskQueue promises; this folder checks what
every broker adapter promises the engine (publish confirmed, nack redelivers, close
returns unacked messages to the group, the per-topic window, backlog answers, idempotent
settles, ``deliver_at`` never early), written once and run on SimBroker and each real
broker with ``--broker``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest

from conformance.backends import Backend
from nova._broker import Broker, Delivery, Subscription
from nova.sim import SimBroker


class Collector:
    """Reads a subscription in the background; tests wait on what it saw (with the clock time of each)."""

    def __init__(self, sub: Subscription, backend: Backend, *, ack: bool) -> None:
        self.sub = sub
        self.backend = backend
        self.ack = ack
        self.deliveries: list[Delivery] = []
        self.times: list[float] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for delivery in self.sub:
            self.deliveries.append(delivery)
            self.times.append(self.backend.clock.time())
            if self.ack:
                await delivery.ack()

    def bodies(self, topic: str | None = None) -> list[bytes]:
        return [d.body for d in self.deliveries if topic is None or d.topic == topic]

    async def wait(self, predicate: Callable[[], bool], within: timedelta | None = None) -> None:
        def seen_or_failed() -> bool:
            if self.task.done():
                self.task.result()  # an iterator that failed fails the test with its error
            return predicate()

        await self.backend.wait_for(seen_or_failed, within)

    async def stop(self) -> None:
        await self.sub.close()
        await asyncio.wait_for(self.task, 30)


class Contract:
    """A test's view of one backend: brokers, fresh topic names, collectors and waits."""

    def __init__(self, backend: Backend, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix
        self._numbers = itertools.count()
        self.collectors: list[Collector] = []

    @property
    def name(self) -> str:
        return self.backend.name

    async def broker(self) -> Broker:
        """A connected broker of the backend (on SimBroker every call gives the test's one broker).

        The engine connects a broker before anything else (``connect`` is idempotent)."""
        broker = self.backend.broker()
        await broker.connect()
        return broker

    async def native_delay_broker(self) -> Broker:
        """A broker that keeps ``Message.deliver_at`` itself; skips on brokers without native delays."""
        if self.backend.is_sim:
            broker: Broker = SimBroker(clock=self.backend.clock, native_delay_max=timedelta(days=1))
            self.backend.brokers.append(broker)
        else:
            broker = self.backend.broker()
            if broker.native_delay_max is None:
                pytest.skip(f"{self.name} has no native delay (the engine's delay tiers do that work: test_delay.py)")
        await broker.connect()
        return broker

    def topic(self, level: str = "normal") -> str:
        """A fresh topic name of the engine's shape, valid on every broker."""
        return f"{self.prefix}_q{next(self._numbers)}_{level}"

    def group(self) -> str:
        return f"{self.prefix}_g"

    async def subscribe(self, broker: Broker, topics: list[str], *, window: int, ack: bool,
                        group: str | None = None) -> Collector:
        sub = await broker.subscribe(topics, group=group or self.group(), window=window)
        collector = Collector(sub, self.backend, ack=ack)
        self.collectors.append(collector)
        return collector

    async def eventually(self, check: Callable[[], Awaitable[bool]], what: str,
                         within: timedelta | None = None) -> None:
        """Until ``await check()`` holds. Real brokers answer some questions (backlog) a little
        later than the event that changes them, so this polls them against a deadline; on
        SimBroker it lets the program settle and asks once (its answers are exact)."""
        if self.backend.is_sim:
            await self.backend.settle()
            assert await check(), what
            return
        deadline = time.monotonic() + (within or self.backend.patience).total_seconds()
        while not await check():
            assert time.monotonic() < deadline, f"{what}: not within {within or self.backend.patience}"
            await asyncio.sleep(0.05)  # polling the broker's answer, not waiting for our code

    async def backlog_is(self, sub: Subscription, topic: str, expected: int) -> None:
        async def check() -> bool:
            return await sub.backlog(topic) == expected

        await self.eventually(check, f"backlog({topic}) == {expected} (last: {await sub.backlog(topic)})")


@pytest.fixture
async def contract(backend: Backend, prefix: str) -> AsyncIterator[Contract]:
    c = Contract(backend, prefix)
    yield c
    for collector in c.collectors:
        if not collector.task.done():
            await collector.stop()
