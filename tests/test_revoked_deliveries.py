"""Deliveries the broker took back while they waited in a worker are dropped, not run.

A RabbitMQ channel that closes (a broker restart) returns its unacked deliveries to their
queues; the copies still waiting in a worker's buffer, in a batch being gathered or in a
delay-forwarder lane would only run their tasks a second time. Here a SimBroker whose
subscriptions report deliveries of task type "gone" as revoked stands for that broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import pytest

import nova
from nova._broker import Delivery
from nova._envelope import H
from nova.sim import SimBroker, SimSubscription, VirtualClock


class RevokingBroker(SimBroker):
    """Reports every delivery of task type "gone" as taken back by the broker."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock=clock)
        self.asked = 0

    async def subscribe(self, topics: Sequence[str], *, group: str, window: int) -> SimSubscription:
        sub = await super().subscribe(topics, group=group, window=window)

        def revoked(delivery: Delivery) -> bool:
            self.asked += 1
            return delivery.headers.get(H.TYPE) == "gone"

        sub.revoked = revoked  # type: ignore[attr-defined]
        return sub


def _recording_queue(prefix: str) -> tuple[VirtualClock, RevokingBroker, nova.TaskQueue, list[str],
                                            Callable[[nova.Task], Awaitable[None]]]:
    """A queue on a RevokingBroker, and a handler that records the type of each task it runs."""
    clock = VirtualClock()
    broker = RevokingBroker(clock)
    ran: list[str] = []

    async def handler(task: nova.Task) -> None:
        ran.append(task.type)

    return clock, broker, nova.TaskQueue(broker, topic_prefix=prefix), ran, handler


async def test_a_worker_drops_revoked_deliveries_and_runs_the_rest() -> None:
    clock, broker, queue, ran, handler = _recording_queue("r")
    for kind in ("kept", "gone", "kept", "gone"):
        await queue.enqueue(nova.Task(kind, b""))
    await queue.start(handler, concurrency=2)
    worker = queue._worker
    assert worker is not None
    assert await clock.run_until(lambda: len(ran) == 2 and worker.revoked == 2, within=timedelta(seconds=5))
    await clock.advance(timedelta(seconds=5))
    assert ran == ["kept", "kept"]
    assert broker.asked >= 4
    await queue.stop()


@pytest.mark.parametrize(("kinds", "expected"), [
    (("kept", "gone", "kept"), [["kept", "kept"]]),
    (("gone",), []),  # a batch of only revoked deliveries calls no handler
])
async def test_a_batch_worker_leaves_revoked_deliveries_out_of_the_batch(
    kinds: tuple[str, ...], expected: list[list[str]]
) -> None:
    clock = VirtualClock()
    broker = RevokingBroker(clock)
    queue = nova.TaskQueue(broker, topic_prefix="b")
    batches: list[list[str]] = []

    async def handler(tasks: list[nova.Task]) -> None:
        batches.append([t.type for t in tasks])

    await queue.enqueue_batch([nova.Task(k, b"") for k in kinds])
    await queue.start_batch(handler, nova.TimeCountAggregator(10, timedelta(seconds=1)))
    await clock.advance(timedelta(seconds=2))
    assert batches == expected
    assert queue._worker is not None and queue._worker.revoked == kinds.count("gone")
    await queue.stop()


async def test_the_delay_forwarder_does_not_forward_a_revoked_hop() -> None:
    clock, _, queue, ran, handler = _recording_queue("d")
    await queue.start(handler)
    await queue.enqueue(nova.Task("gone", b""), process_in=timedelta(seconds=5))
    await queue.enqueue(nova.Task("kept", b""), process_in=timedelta(seconds=5))
    await clock.advance(timedelta(seconds=10))
    assert ran == ["kept"]
    assert queue._forwarder is not None and queue._forwarder.forwarded >= 1
    await queue.stop()
