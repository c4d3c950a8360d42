"""Concurrent enqueue calls share publishes (nova/_coalesce.py), on SimBroker and a VirtualClock.

What every broker keeps is in conformance/test_coalesce.py; here what needs virtual time
or SimBroker's fault injection: which calls share a publish, that a lone call waits for
nothing, per-call errors, and cancellation while a publish is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import pytest

import nova
from nova._broker import Message, PublishEach
from nova.sim import SimBroker, VirtualClock

LATENCY = timedelta(milliseconds=10)
T = TypeVar("T")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def queue(clock: VirtualClock) -> AsyncIterator[nova.TaskQueue]:
    async with nova.TaskQueue(SimBroker(clock=clock), topic_prefix="co") as q:
        yield q


def sim(queue: nova.TaskQueue) -> SimBroker:
    assert isinstance(queue.broker, SimBroker)
    return queue.broker


async def stored(broker: SimBroker, topic: str = "co_default_normal") -> list[str]:
    """The ids of what the topic holds, in the broker's order (taken off it)."""
    sub = await broker.subscribe([topic], group="inspect", window=10_000)
    ids = []
    while (delivery := sub.take_nowait()) is not None:
        ids.append(delivery.headers["nova-id"])
        await delivery.ack()
    await sub.close()
    return ids


async def run(clock: VirtualClock, call: Awaitable[T]) -> T:
    """Await ``call``, moving the clock as far as it needs (at most a second)."""
    task = asyncio.ensure_future(call)
    assert await clock.run_until(task.done, within=timedelta(seconds=1))
    return task.result()


def tasks(name: str, n: int) -> list[nova.Task]:
    return [nova.Task("t", b"%d" % i, id=f"{name}{i}") for i in range(n)]


# -- who shares a publish ---------------------------------------------------------------


async def test_a_lone_enqueue_completes_without_the_clock_moving(clock: VirtualClock,
                                                                 queue: nova.TaskQueue) -> None:
    await queue.enqueue(nova.Task("t", b"first"))  # connects and learns the topics
    start = clock.time()
    call = asyncio.create_task(queue.enqueue(nova.Task("t", b"lone")))
    await clock.advance(timedelta(0))  # runs what is runnable; time stays where it is
    assert call.done(), "a lone enqueue waited for the clock"
    assert clock.time() == start
    assert sim(queue).depth("co_default_normal") == 2


async def test_a_lone_enqueue_takes_one_publish_latency(clock: VirtualClock) -> None:
    async with nova.TaskQueue(SimBroker(clock=clock, publish_latency=LATENCY), topic_prefix="co") as queue:
        await run(clock, queue.enqueue(nova.Task("t", b"first")))
        start = clock.time()
        await run(clock, queue.enqueue(nova.Task("t", b"lone")))  # jumps from deadline to deadline
        assert clock.time() - start == pytest.approx(LATENCY.total_seconds())


async def test_calls_of_one_loop_turn_share_one_publish_and_keep_their_order(queue: nova.TaskQueue) -> None:
    broker = sim(queue)
    await queue.enqueue(nova.Task("t", b"first"))
    before = broker.publishes
    singles = tasks("s", 20)
    batches = [tasks(f"b{k}-", 4) for k in range(3)]
    calls: list[Any] = [queue.enqueue(t) for t in singles[:10]]
    calls += [queue.enqueue_batch(b) for b in batches]
    calls += [queue.enqueue(t) for t in singles[10:]]
    results = await asyncio.gather(*calls)
    assert broker.publishes == before + 1
    assert [r.id for r in results[:10] + results[13:]] == [t.id for t in singles]
    for got, batch in zip(results[10:13], batches, strict=True):
        assert [r.id for r in got] == [t.id for t in batch]  # one Result per task, in order
    order = (await stored(broker))[1:]
    assert order == [t.id for t in singles[:10]] + [t.id for b in batches for t in b] + [t.id for t in singles[10:]]


async def test_calls_made_while_a_publish_is_in_flight_go_out_together_in_the_next(clock: VirtualClock) -> None:
    broker = SimBroker(clock=clock, publish_latency=LATENCY)
    async with nova.TaskQueue(broker, topic_prefix="co") as queue:
        await run(clock, queue.enqueue(nova.Task("t", b"first")))
        before = broker.publishes
        first = asyncio.create_task(queue.enqueue(nova.Task("t", b"x", id="lead")))
        await clock.advance(timedelta(0))  # its publish is in flight
        later = []
        for i in range(5):  # each in a loop turn of its own, all while the first is in flight
            later.append(asyncio.create_task(queue.enqueue(nova.Task("t", b"y", id=f"later{i}"))))
            await clock.advance(timedelta(milliseconds=1))
        assert not first.done() and not any(c.done() for c in later)
        await clock.advance(LATENCY)  # the first is confirmed; the five are in flight
        assert first.done() and not any(c.done() for c in later)
        await clock.advance(LATENCY)
        assert [c.result().id for c in later] == [f"later{i}" for i in range(5)]
        assert broker.publishes == before + 2
        assert (await stored(broker))[1:] == ["lead"] + [f"later{i}" for i in range(5)]


# -- errors -------------------------------------------------------------------------------


async def test_a_refused_task_fails_only_its_own_call(queue: nova.TaskQueue) -> None:
    broker = sim(queue)
    await queue.enqueue(nova.Task("t", b"first"))
    broker.refuse_message(3)  # the third message of the next publish
    outcomes = await asyncio.gather(*(queue.enqueue(t) for t in tasks("s", 5)), return_exceptions=True)
    assert [type(o).__name__ for o in outcomes] == ["Result", "Result", "EnqueueError", "Result", "Result"]
    assert "refused message" in str(outcomes[2])
    assert (await stored(broker))[1:] == ["s0", "s1", "s3", "s4"]


async def test_a_batch_call_with_a_refused_task_says_how_many_of_its_tasks_failed(queue: nova.TaskQueue) -> None:
    broker = sim(queue)
    await queue.enqueue(nova.Task("t", b"first"))
    broker.refuse_message(3)  # the second task of the batch below
    single, batch, other = await asyncio.gather(
        queue.enqueue(nova.Task("t", b"", id="alone")), queue.enqueue_batch(tasks("b", 3)),
        queue.enqueue(nova.Task("t", b"", id="after")), return_exceptions=True,
    )
    assert isinstance(single, nova.Result) and isinstance(other, nova.Result)
    assert isinstance(batch, nova.EnqueueError)
    assert "1 of 3 task(s)" in str(batch)
    assert (await stored(broker))[1:] == ["alone", "b0", "b2", "after"]  # none, some or all may be stored


async def test_a_failed_publish_gives_every_call_in_it_an_error_of_its_own(queue: nova.TaskQueue) -> None:
    broker = sim(queue)
    await queue.enqueue(nova.Task("t", b"first"))
    broker.fail_publishes(1)
    outcomes = await asyncio.gather(*(queue.enqueue(t) for t in tasks("s", 4)), return_exceptions=True)
    assert all(isinstance(o, nova.EnqueueError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 4, "one exception instance raised in several tasks"
    assert {str(o) for o in outcomes} == {"SimBroker refused the publish (injected fault)"}
    assert all(o is outcomes[0] or o.__cause__ is outcomes[0] for o in outcomes)  # type: ignore[union-attr]
    assert broker.depth("co_default_normal") == 1
    await queue.enqueue(nova.Task("t", b"next"))  # the next publish goes through
    assert broker.depth("co_default_normal") == 2


class WholeCallSimBroker(SimBroker):
    """A broker that only says whether a whole publish failed (no per-message outcomes)."""

    publish_each = None  # type: ignore[assignment]

    async def publish(self, messages: Sequence[Message]) -> None:
        for outcome in await SimBroker.publish_each(self, messages):
            if outcome is not None:
                raise outcome


async def test_a_broker_without_per_message_outcomes_fails_every_call_of_a_refused_publish(
    clock: VirtualClock,
) -> None:
    broker = WholeCallSimBroker(clock=clock)
    assert not isinstance(broker, PublishEach)
    async with nova.TaskQueue(broker, topic_prefix="co") as queue:
        await run(clock, queue.enqueue(nova.Task("t", b"first")))
        broker.refuse_message(2)
        outcomes = await asyncio.gather(*(queue.enqueue(t) for t in tasks("s", 3)), return_exceptions=True)
        assert all(isinstance(o, nova.EnqueueError) for o in outcomes)
        assert broker.depth("co_default_normal") == 3  # s0 and s2 were stored: "some may have been"


async def test_an_invalid_task_fails_its_own_call_before_anything_is_sent(queue: nova.TaskQueue) -> None:
    broker = sim(queue)
    await queue.enqueue(nova.Task("t", b"first"))
    outcomes = await asyncio.gather(queue.enqueue(nova.Task("t", b"ok", id="good")),
                                    queue.enqueue(nova.Task("", b"bad")),
                                    queue.enqueue_batch([nova.Task("t", b""), nova.Task("t", "text")]),  # type: ignore[arg-type]
                                    return_exceptions=True)
    assert isinstance(outcomes[0], nova.Result)
    assert isinstance(outcomes[1], nova.ValidationError) and isinstance(outcomes[2], nova.ValidationError)
    assert (await stored(broker))[1:] == ["good"]


async def test_closing_the_broker_under_waiting_calls_gives_each_a_closed_error(clock: VirtualClock) -> None:
    broker = SimBroker(clock=clock, publish_latency=LATENCY)
    queue = nova.TaskQueue(broker, topic_prefix="co")
    await run(clock, queue.enqueue(nova.Task("t", b"first")))
    calls = [asyncio.create_task(queue.enqueue(t)) for t in tasks("s", 3)]
    await clock.advance(timedelta(0))
    await broker.close()
    await clock.advance(LATENCY)
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, nova.ClosedError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3


# -- cancellation -------------------------------------------------------------------------


async def test_cancelling_a_caller_while_its_publish_is_in_flight_cancels_no_publish(clock: VirtualClock) -> None:
    broker = SimBroker(clock=clock, publish_latency=LATENCY)
    async with nova.TaskQueue(broker, topic_prefix="co") as queue:
        await run(clock, queue.enqueue(nova.Task("t", b"first")))
        calls = [asyncio.create_task(queue.enqueue(t)) for t in tasks("s", 4)]
        await clock.advance(timedelta(0))  # one publish of the four is in flight
        calls[0].cancel()  # the call whose arrival started the publish
        calls[2].cancel()
        await clock.advance(LATENCY)
        assert calls[0].cancelled() and calls[2].cancelled()
        assert [calls[i].result().id for i in (1, 3)] == ["s1", "s3"]
        # The publish had begun: the cancelled callers' tasks were stored too (as documented).
        assert (await stored(broker))[1:] == ["s0", "s1", "s2", "s3"]


async def test_a_call_cancelled_before_its_publish_began_is_not_sent(clock: VirtualClock) -> None:
    broker = SimBroker(clock=clock, publish_latency=LATENCY)
    async with nova.TaskQueue(broker, topic_prefix="co") as queue:
        await run(clock, queue.enqueue(nova.Task("t", b"first")))
        lead = asyncio.create_task(queue.enqueue(nova.Task("t", b"", id="lead")))
        await clock.advance(timedelta(0))
        waiting = [asyncio.create_task(queue.enqueue(t)) for t in tasks("w", 3)]
        await clock.advance(timedelta(0))  # they wait for the publish in flight
        waiting[1].cancel()
        await clock.advance(LATENCY * 2)
        assert lead.result().id == "lead"
        assert waiting[1].cancelled()
        assert [waiting[i].result().id for i in (0, 2)] == ["w0", "w2"]
        assert (await stored(broker))[1:] == ["lead", "w0", "w2"]


async def test_a_queue_used_on_a_second_event_loop_publishes_there() -> None:
    broker = SimBroker(clock=nova.SystemClock())
    queue = nova.TaskQueue(broker, topic_prefix="co")

    def in_a_new_loop() -> list[nova.Result]:
        async def run() -> list[nova.Result]:
            return list(await asyncio.gather(*(queue.enqueue(nova.Task("t", b"")) for _ in range(3))))

        return asyncio.run(run())

    assert len(await asyncio.to_thread(in_a_new_loop)) == 3
    assert len(await asyncio.to_thread(in_a_new_loop)) == 3
    assert broker.depth("co_default_normal") == 6
