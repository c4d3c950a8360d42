"""S11 batch processing and S12 aggregators."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory
from nova._worker import BatchWorker
from nova.sim import SimBroker


class Batches:
    def __init__(self, clock: nova.Clock) -> None:
        self.clock = clock
        self.batches: list[list[nova.Task]] = []
        self.times: list[float] = []

    async def handler(self, tasks: list[nova.Task]) -> None:
        self.batches.append(list(tasks))
        self.times.append(self.clock.time())

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


async def test_s11_count_batches_and_nothing_acked_before_the_handler_returns(
    backend: Backend, make_queue: QueueFactory
) -> None:
    queue = make_queue()
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(10)])
    release = asyncio.Event()
    got: list[list[nova.Task]] = []

    async def handler(tasks: list[nova.Task]) -> None:
        got.append(tasks)
        await release.wait()

    await queue.start_batch(handler, nova.CountAggregator(5))
    await backend.wait_for(lambda: len(got) == 1)
    assert len(got[0]) == 5
    if isinstance(queue.broker, SimBroker):
        assert sum(queue.broker.depth(t) for t in queue.broker.topics()) == 10  # none acked yet
    # Crash the batch consumer mid-batch: every task comes back.
    await queue.stop(graceful=False)
    again = Batches(backend.clock)
    worker = make_queue()
    await worker.start_batch(again.handler, nova.CountAggregator(5))
    await backend.wait_for(lambda: again.count == 10)
    assert sorted(t.payload for b in again.batches for t in b) == sorted(str(i).encode() for i in range(10))


async def test_s11_failed_batch_retries_every_task(backend: Backend, make_queue: QueueFactory) -> None:
    queue = make_queue(retry=nova.RetryPolicy(max_retries=1, backoff=nova.ConstantBackoff(timedelta(seconds=1))))
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(4)])
    attempts: list[list[int]] = []

    async def handler(tasks: list[nova.Task]) -> None:
        attempts.append([t.attempt for t in tasks])
        if tasks[0].attempt == 1:
            raise RuntimeError("batch failed")

    await queue.start_batch(handler, nova.CountAggregator(4))
    await backend.wait_for(lambda: sum(len(a) for a in attempts) == 8)
    assert attempts == [[1, 1, 1, 1], [2, 2, 2, 2]]


async def test_s11_stop_hands_the_partial_batch_to_the_handler(
    backend: Backend, make_queue: QueueFactory
) -> None:
    queue = make_queue()
    got = Batches(backend.clock)
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(3)])
    await queue.start_batch(got.handler, nova.CountAggregator(100))
    await backend.wait_for(lambda: queue.worker is not None and len(queue.worker.buffer) == 3)  # type: ignore[union-attr]
    assert got.batches == []
    await queue.stop()
    assert [len(b) for b in got.batches] == [3]


async def test_s11_window_is_never_smaller_than_the_batch(
    backend: Backend, make_queue: QueueFactory
) -> None:
    queue = make_queue()
    got = Batches(backend.clock)
    await queue.enqueue_batch([nova.Task("t", b"") for _ in range(200)])
    await queue.start_batch(got.handler, nova.CountAggregator(200))
    await backend.wait_for(lambda: got.count == 200)  # one full batch: no deadlock
    assert [len(b) for b in got.batches] == [200]


@pytest.mark.sim_only
async def test_s12_time_aggregator_flushes_window_after_first_task(
    backend: Backend, make_queue: QueueFactory
) -> None:
    queue = make_queue()
    got = Batches(backend.clock)
    await queue.start_batch(got.handler, nova.TimeAggregator(timedelta(seconds=10)))
    await backend.advance(timedelta(seconds=3))  # an idle buffer never flushes
    first = backend.clock.time()
    await queue.enqueue(nova.Task("t", b"1"))
    await backend.advance(timedelta(seconds=4))
    await queue.enqueue(nova.Task("t", b"2"))
    await backend.advance(timedelta(seconds=6) - timedelta(milliseconds=1))
    assert got.batches == []
    await backend.advance(timedelta(milliseconds=1))
    assert [[t.payload for t in b] for b in got.batches] == [[b"1", b"2"]]
    assert got.times == [first + 10]
    await backend.advance(timedelta(minutes=5))
    assert len(got.batches) == 1  # nothing more to flush, no empty batches


@pytest.mark.sim_only
async def test_s12_time_count_aggregator_whichever_first(backend: Backend, make_queue: QueueFactory) -> None:
    queue = make_queue()
    got = Batches(backend.clock)
    await queue.start_batch(got.handler, nova.TimeCountAggregator(3, timedelta(seconds=10)))
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(4)])
    await backend.settle()
    assert [len(b) for b in got.batches] == [3]  # count first
    await backend.advance(timedelta(seconds=10))
    assert [len(b) for b in got.batches] == [3, 1]  # then time, for the rest: nothing dropped
    assert got.times[1] - got.times[0] == 10


async def test_s12_count_aggregator_flushes_at_exactly_n(backend: Backend, make_queue: QueueFactory) -> None:
    queue = make_queue()
    got = Batches(backend.clock)
    await queue.start_batch(got.handler, nova.CountAggregator(4))
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(10)])
    await backend.wait_for(lambda: got.count == 8)
    worker = queue.worker
    assert isinstance(worker, BatchWorker)
    await backend.wait_for(lambda: len(worker.buffer) == 2)
    if backend.is_sim:
        await backend.advance(timedelta(hours=1))
    assert [len(b) for b in got.batches] == [4, 4]  # 2 wait for more (or for stop)
    await queue.stop()
    assert [len(b) for b in got.batches] == [4, 4, 2]
