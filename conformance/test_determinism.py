"""S18 the same scenario with the same seed gives the same handler calls (sim)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import nova
from nova.sim import SimBroker, VirtualClock


async def scenario(seed: int) -> list[tuple[str, bytes, int, int, float]]:
    clock = VirtualClock()
    broker = SimBroker(clock=clock, seed=seed, duplicate_rate=0.05)
    calls: list[tuple[str, bytes, int, int, float]] = []
    queues = [nova.TaskQueue(broker, group_id="g", retry=nova.RetryPolicy(
        max_retries=2, backoff=nova.ExponentialBackoff(base=timedelta(seconds=1)))) for _ in range(2)]

    def make_handler(worker: int) -> nova._worker.Handler:
        async def handle(task: nova.Task) -> None:
            calls.append((task.type, task.payload, task.attempt, worker, clock.time()))
            await clock.sleep(0.1 * (task.payload[0] % 3))
            if task.payload[0] % 5 == 0 and task.attempt < 2:
                raise RuntimeError("planned failure")
        return handle

    for i, q in enumerate(queues):
        await q.start(make_handler(i), concurrency=3)
    producer = queues[0]
    for i in range(60):
        await producer.enqueue(nova.Task(f"t{i % 4}", bytes([i])), priority=nova.Priority(1 + i % 3),
                               process_in=timedelta(seconds=i % 7))
    await clock.advance(timedelta(minutes=5))
    for q in queues:
        await q.stop()
    await broker.close()
    return calls


@pytest.mark.sim_only
async def test_s18_same_seed_same_handler_calls() -> None:
    first = await scenario(seed=7)
    second = await scenario(seed=7)
    assert len(first) >= 60
    assert first == second
