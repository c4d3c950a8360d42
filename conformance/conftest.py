"""Fixtures of the conformance suite: one suite, any backend (``--broker``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

import nova
from conformance.backends import Backend, make_backend

QueueFactory = Callable[..., nova.TaskQueue]


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    b = make_backend(request.config.getoption("--broker"))
    yield b
    for broker in b.brokers:
        await broker.close()


@pytest.fixture
def prefix() -> str:
    """A fresh topic prefix per test, so tests never see each other's tasks."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def make_queue(backend: Backend, prefix: str) -> AsyncIterator[QueueFactory]:
    made: list[nova.TaskQueue] = []
    broker = backend.broker()

    def factory(**options: Any) -> nova.TaskQueue:
        options.setdefault("topic_prefix", prefix)
        options.setdefault("group_id", "g")
        options.setdefault("delay_slots", backend.delay_slots)
        options.setdefault("retry", nova.RetryPolicy(max_retries=2,
                                                     backoff=nova.ConstantBackoff(timedelta(seconds=1))))
        options.setdefault("stop_timeout", timedelta(seconds=5))
        q = nova.TaskQueue(options.pop("broker", broker), **options)
        made.append(q)
        return q

    yield factory
    for q in made:
        await q.stop(graceful=False)


class Seen:
    """What handlers saw, with the clock time of each call."""

    def __init__(self, clock: nova.Clock) -> None:
        self.clock = clock
        self.tasks: list[nova.Task] = []
        self.times: list[float] = []

    def add(self, task: nova.Task) -> None:
        self.tasks.append(task)
        self.times.append(self.clock.time())

    async def handler(self, task: nova.Task) -> None:
        self.add(task)

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def ids(self) -> list[str | None]:
        return [t.id for t in self.tasks]

    @property
    def payloads(self) -> list[bytes]:
        return [t.payload for t in self.tasks]


@pytest.fixture
def seen(backend: Backend) -> Seen:
    return Seen(backend.clock)
