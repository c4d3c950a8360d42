"""Property tests: aggregator bounds and strict priority order on SimBroker."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

import nova
from nova.sim import SimBroker, VirtualClock
from tests.fuzzing import FUZZ_SCALE


@given(
    arrivals=st.lists(st.tuples(st.floats(0, 30), st.integers(1, 7)), min_size=1, max_size=12),
    size=st.integers(1, 10),
    window=st.sampled_from([None, 1.0, 5.0]),
)
@settings(max_examples=60 * FUZZ_SCALE, deadline=None)
def test_aggregator_bounds_and_nothing_dropped(
    arrivals: list[tuple[float, int]], size: int, window: float | None
) -> None:
    aggregator: nova.Aggregator = (
        nova.CountAggregator(size) if window is None
        else nova.TimeCountAggregator(size, timedelta(seconds=window))
    )

    async def scenario() -> None:
        clock = VirtualClock()
        broker = SimBroker(clock=clock)
        queue = nova.TaskQueue(broker)
        batches: list[tuple[float, list[bytes]]] = []
        firsts: dict[bytes, float] = {}

        async def handle(tasks: list[nova.Task]) -> None:
            batches.append((clock.time(), [t.payload for t in tasks]))

        await queue.start_batch(handle, aggregator)
        n = 0
        for gap, count in arrivals:
            await clock.advance(timedelta(seconds=gap))
            for _ in range(count):
                payload = str(n).encode()
                firsts[payload] = clock.time()
                await queue.enqueue(nova.Task("t", payload))
                n += 1
        await clock.advance(timedelta(0))
        for at, payloads in batches:
            assert 1 <= len(payloads) <= size
            if len(payloads) < size:  # flushed by time: exactly when the window of its oldest ran out
                assert window is not None
                assert at == min(firsts[p] for p in payloads) + window
        await clock.advance(timedelta(minutes=1))
        await queue.stop()
        handled = [p for _, ps in batches for p in ps]
        assert sorted(handled, key=int) == [str(i).encode() for i in range(n)]  # nothing lost, no dupes
        await broker.close()

    asyncio.run(scenario())


@given(levels=st.lists(st.sampled_from(list(nova.Priority)), min_size=1, max_size=40),
       queue_names=st.lists(st.sampled_from(["a", "b"]), min_size=40, max_size=40))
@settings(max_examples=60 * FUZZ_SCALE, deadline=None)
def test_strict_priority_order_with_one_handler(levels: list[nova.Priority], queue_names: list[str]) -> None:
    async def scenario() -> None:
        clock = VirtualClock()
        broker = SimBroker(clock=clock)
        queue = nova.TaskQueue(broker)
        seen: list[nova.Task] = []

        async def handle(task: nova.Task) -> None:
            seen.append(task)

        for i, level in enumerate(levels):
            await queue.enqueue(nova.Task("t", str(i).encode()), priority=level, queue=queue_names[i])
        await queue.start(handle, queues=["a", "b"], concurrency=1, prefetch=3)
        await clock.advance(timedelta(0))
        assert [t.priority for t in seen] == sorted(levels, reverse=True)
        for name in ("a", "b"):
            for level in nova.Priority:
                order = [int(t.payload) for t in seen if t.queue == name and t.priority is level]
                assert order == sorted(order)  # FIFO within a level of a queue
        await queue.stop()
        await broker.close()

    asyncio.run(scenario())
