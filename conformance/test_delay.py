"""S5 delayed tasks: never early, on time, any length, durable."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen


def _eta(task: nova.Task) -> float:
    assert task.eta is not None
    return task.eta.timestamp()


async def test_s5_delayed_tasks_are_never_early_and_on_time(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    await queue.start(seen.handler)
    scale = 1.0 if backend.is_sim else 0.5
    delays = [timedelta(seconds=s * scale) for s in (3, 1, 2, 5, 0.25)]
    for i, d in enumerate(delays):
        result = await queue.enqueue(nova.Task("d", str(i).encode()), process_in=d)
        assert result.eta is not None
    await backend.wait_for(lambda: len(seen) == len(delays), within=timedelta(seconds=30))
    for task, at in zip(seen.tasks, seen.times, strict=True):
        assert at >= _eta(task), f"task {task.payload!r} ran {_eta(task) - at:.3f}s early"
        assert at - _eta(task) <= backend.lateness.total_seconds(), f"task {task.payload!r} ran late"
    # In eta order, by the etas the tasks got (each enqueue takes time on a real broker: on a
    # replicated cluster up to ~0.6 s, enough to bring two due times within the lateness allowed).
    etas = [_eta(t) for t in seen.tasks]
    assert all(b >= a - backend.lateness.total_seconds() for a, b in itertools.pairwise(etas)), seen.payloads
    if backend.is_sim:
        assert seen.payloads == [b"4", b"1", b"2", b"0", b"3"]


async def test_s5_process_at_uses_the_given_time(backend: Backend, make_queue: QueueFactory,
                                                 seen: Seen) -> None:
    queue = make_queue()
    at = backend.clock.now() + timedelta(seconds=2)
    result = await queue.enqueue(nova.Task("d", b"x"), process_at=at)
    assert result.eta is not None and abs(result.eta.timestamp() - at.timestamp()) < 0.001
    await queue.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 1)
    assert seen.times[0] >= at.timestamp()


@pytest.mark.sim_only
async def test_s5_exact_on_sim_for_long_delays_with_default_slots(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue(delay_slots=(24, timedelta(hours=1)))
    await queue.start(seen.handler)
    start = backend.clock.time()
    delays = [timedelta(days=30), timedelta(days=1, seconds=7), timedelta(hours=5, milliseconds=3),
              timedelta(minutes=5), timedelta(milliseconds=1)]
    for d in delays:
        await queue.enqueue(nova.Task("d", str(d).encode()), process_in=d)
    await backend.advance(timedelta(minutes=5) - timedelta(milliseconds=1))
    assert seen.payloads == [str(timedelta(milliseconds=1)).encode()]
    await backend.advance(timedelta(milliseconds=1))
    assert len(seen) == 2  # the 5-minute task, exactly at its eta
    await backend.advance(timedelta(days=31))
    assert len(seen) == 5
    for task, at in zip(seen.tasks, seen.times, strict=True):
        assert at == _eta(task), f"{task.payload!r}: ran at +{at - start}, due +{_eta(task) - start}"


async def test_s5_delays_survive_every_worker_and_forwarder_restarting(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    producer = make_queue()
    result = await producer.enqueue(nova.Task("d", b"x"), process_in=timedelta(seconds=3))
    # A worker (with its forwarder) runs a while, then everything stops.
    first = make_queue()
    await first.start(seen.handler)
    if backend.is_sim:
        await backend.advance(timedelta(seconds=1))
    await first.stop()
    await producer.stop()
    assert len(seen) == 0
    if backend.is_sim:
        await backend.advance(timedelta(seconds=5))  # nobody runs while it comes due
    second = make_queue()
    await second.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 1, within=timedelta(seconds=30))
    assert seen.ids == [result.id]
    assert seen.times[0] >= _eta(seen.tasks[0])


@pytest.mark.sim_only
async def test_s5_producer_only_delay_fires_at_once_when_a_worker_starts_overdue(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    producer = make_queue()
    await producer.enqueue(nova.Task("d", b"x"), process_in=timedelta(hours=2))
    await backend.advance(timedelta(hours=3))  # no worker anywhere
    worker = make_queue()
    await worker.start(seen.handler)
    await backend.settle()  # overdue: fires without any more time passing
    assert seen.payloads == [b"x"]


@pytest.mark.sim_only
async def test_s5_native_timers_are_used_when_the_broker_has_them(make_queue: QueueFactory) -> None:
    from nova.sim import SimBroker, VirtualClock

    clock = VirtualClock()
    broker = SimBroker(clock=clock, native_delay_max=timedelta(hours=1))
    queue = make_queue(broker=broker)
    seen = Seen(clock)
    await queue.start(seen.handler)
    await queue.enqueue(nova.Task("d", b"short"), process_in=timedelta(minutes=10))
    await queue.enqueue(nova.Task("d", b"long"), process_in=timedelta(hours=2, seconds=1))
    await clock.advance(timedelta(minutes=10))
    assert seen.payloads == [b"short"]
    assert queue._forwarder is not None and queue._forwarder.forwarded == 0  # no tier hop
    await clock.advance(timedelta(hours=1, minutes=50))
    assert seen.payloads == [b"short"]
    await clock.advance(timedelta(seconds=1))
    assert seen.payloads == [b"short", b"long"]
    assert seen.times == [t.eta.timestamp() for t in seen.tasks if t.eta]
    await broker.close()
