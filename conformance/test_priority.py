"""S7 priority: strict by default, weighted on request, FIFO within a level."""

from __future__ import annotations

from collections import Counter

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen

P = nova.Priority


async def test_s7_strict_priority_with_concurrency_one(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    order = [P.LOW, P.NORMAL, P.HIGH] * 10
    for i, level in enumerate(order):
        await queue.enqueue(nova.Task("t", f"{level.name}-{i}".encode()), priority=level)
    await queue.start(seen.handler, concurrency=1)
    await backend.wait_for(lambda: len(seen) == 30)
    levels = [t.priority for t in seen.tasks]
    assert levels == [P.HIGH] * 10 + [P.NORMAL] * 10 + [P.LOW] * 10
    # FIFO within a level
    for level in P:
        mine = [int(t.payload.split(b"-")[1]) for t in seen.tasks if t.priority is level]
        assert mine == sorted(mine)


async def test_s7_a_new_high_task_overtakes_queued_low_ones(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    await queue.enqueue_batch([nova.Task("t", b"low") for _ in range(5)], priority=P.LOW)
    first = True

    async def handler(task: nova.Task) -> None:
        nonlocal first
        seen.add(task)
        if first:  # while the first LOW runs, a HIGH arrives
            first = False
            await queue.enqueue(nova.Task("t", b"high"), priority=P.HIGH)

    await queue.start(handler, concurrency=1)
    await backend.wait_for(lambda: len(seen) == 6)
    assert seen.payloads[:2] == [b"low", b"high"]


async def test_s7_weighted_priority_serves_levels_in_proportion(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue(priority_policy=nova.WeightedPriority(high=6, normal=3, low=1))
    for level in P:
        await queue.enqueue_batch([nova.Task("t", b"") for _ in range(1000)], priority=level)
    stop_at = 1000

    async def handler(task: nova.Task) -> None:
        if len(seen) < stop_at:
            seen.add(task)

    await queue.start(handler, concurrency=1)
    await backend.wait_for(lambda: len(seen) >= stop_at, within=None)
    counts = Counter(t.priority for t in seen.tasks[:stop_at])
    for level, share in ((P.HIGH, 0.6), (P.NORMAL, 0.3), (P.LOW, 0.1)):
        assert abs(counts[level] - share * stop_at) <= 0.1 * share * stop_at, counts
