"""S3 at-least-once, S4 competing consumers, S8 named queues, S14 stop, S15 concurrency."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen
from nova.sim import SimBroker


async def test_s3_ungraceful_stop_redelivers_in_flight_tasks_to_another_worker(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    producer = make_queue()
    result = await producer.enqueue(nova.Task("slow", b"1"))
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(task: nova.Task) -> None:
        started.set()
        await never.wait()

    first = make_queue()
    await first.start(stuck)
    await backend.wait_for(started.is_set)
    await first.stop(graceful=False)  # acks nothing
    second = make_queue()
    await second.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 1, within=timedelta(seconds=60))
    assert seen.ids == [result.id]


@pytest.mark.sim_only
async def test_s3_crashed_worker_tasks_come_back_after_the_session_timeout(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    producer = make_queue()
    await producer.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(5)])
    never = asyncio.Event()

    async def stuck(task: nova.Task) -> None:
        await never.wait()

    doomed = make_queue()
    await doomed.start(stuck)
    await backend.settle()
    broker = doomed.broker
    assert isinstance(broker, SimBroker)
    assert doomed.worker is not None and doomed.worker.sub is not None
    broker.crash(doomed.worker.sub)  # type: ignore[arg-type]
    survivor = make_queue()
    await survivor.start(seen.handler)
    await backend.advance(broker.session_timeout - timedelta(seconds=1))
    assert len(seen) == 0  # not before the session timed out
    await backend.advance(timedelta(seconds=1))
    assert sorted(seen.payloads) == [str(i).encode() for i in range(5)]


async def test_s4_competing_workers_share_the_work_exactly_once(
    backend: Backend, make_queue: QueueFactory
) -> None:
    producer = make_queue()
    results = await producer.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(60)])
    a, b = Seen(backend.clock), Seen(backend.clock)
    b_working = asyncio.Event()

    async def handle_a(task: nova.Task) -> None:
        if backend.shares_work:
            # The first worker holds its window until the second has work, so sharing is
            # tested without depending on which worker is faster to start.
            await b_working.wait()
        a.add(task)

    async def handle_b(task: nova.Task) -> None:
        b.add(task)
        b_working.set()

    wa, wb = make_queue(), make_queue()
    await wa.start(handle_a, prefetch=4, concurrency=2)
    await wb.start(handle_b, prefetch=4, concurrency=2)
    await backend.wait_for(lambda: len(a) + len(b) == 60)
    handled = a.ids + b.ids
    assert sorted(handled) == sorted(r.id for r in results)  # each exactly once
    if backend.shares_work:
        assert len(a) > 0 and len(b) > 0


async def test_s8_named_queues_route_and_start_consumes_exactly_those(
    backend: Backend, make_queue: QueueFactory
) -> None:
    queue = make_queue()
    await queue.enqueue(nova.Task("a", b"to-x"), queue="x")
    await queue.enqueue(nova.Task("a", b"to-y"), queue="y")
    await queue.enqueue(nova.Task("a", b"to-default"))
    only_x, rest = Seen(backend.clock), Seen(backend.clock)
    wx = make_queue()
    await wx.start(only_x.handler, queues=["x"])
    await backend.wait_for(lambda: len(only_x) == 1)
    wrest = make_queue()
    await wrest.start(rest.handler, queues=["y", "default"])
    await backend.wait_for(lambda: len(rest) == 2)
    assert only_x.payloads == [b"to-x"]
    assert sorted(rest.payloads) == [b"to-default", b"to-y"]
    assert {t.queue for t in rest.tasks} == {"y", "default"}


async def test_s8_prefixes_isolate_task_queues_on_one_broker(
    backend: Backend, make_queue: QueueFactory, prefix: str
) -> None:
    a, b = Seen(backend.clock), Seen(backend.clock)
    qa = make_queue(topic_prefix=prefix + "-a")
    qb = make_queue(topic_prefix=prefix + "-b")
    await qa.enqueue(nova.Task("t", b"for-a"))
    await qb.enqueue(nova.Task("t", b"for-b"))
    await qa.start(a.handler)
    await qb.start(b.handler)
    await backend.wait_for(lambda: len(a) == 1 and len(b) == 1)
    await backend.settle()
    assert a.payloads == [b"for-a"] and b.payloads == [b"for-b"]


async def test_s14_graceful_stop_waits_for_running_handlers_and_acks(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    await queue.enqueue(nova.Task("t", b"1"))
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(task: nova.Task) -> None:
        seen.add(task)
        await release.wait()
        finished.append(task.id or "")

    await queue.start(slow)
    await backend.wait_for(lambda: len(seen) == 1)
    stopping = asyncio.ensure_future(queue.stop())
    await asyncio.sleep(0)
    assert not stopping.done()  # waits for the running handler
    release.set()
    await stopping
    assert len(finished) == 1
    # Acked: a new worker gets nothing.
    again = Seen(backend.clock)
    later = make_queue()
    await later.enqueue(nova.Task("t", b"2"))
    await later.start(again.handler)
    await backend.wait_for(lambda: len(again) >= 1)
    await backend.settle()
    assert again.payloads == [b"2"]


async def test_s14_stop_timeout_cancels_handlers_unacked_and_no_handler_runs_after(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(3)])
    calls_after_stop: list[nova.Task] = []
    stopped = False
    never = asyncio.Event()

    async def stuck(task: nova.Task) -> None:
        if stopped:
            calls_after_stop.append(task)
        seen.add(task)
        await never.wait()

    await queue.start(stuck, concurrency=1)
    await backend.wait_for(lambda: len(seen) == 1)
    stop = asyncio.ensure_future(queue.stop(timeout=timedelta(seconds=2)))
    if backend.is_sim:
        await backend.advance(timedelta(seconds=2))
    await stop
    stopped = True
    assert calls_after_stop == []
    # Cancelled unacked: all three come back to the next worker.
    again = Seen(backend.clock)
    worker = make_queue()
    await worker.start(again.handler)
    await backend.wait_for(lambda: len(again) == 3, within=timedelta(seconds=60))


async def test_s15_concurrency_limit_is_reached_and_never_exceeded(
    backend: Backend, make_queue: QueueFactory
) -> None:
    queue = make_queue()
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(12)])
    running = 0
    peak = 0
    gate = asyncio.Event()
    done = 0

    async def handler(task: nova.Task) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        done += 1

    await queue.start(handler, concurrency=4)
    await backend.wait_for(lambda: running == 4)
    await backend.settle()
    assert running == 4
    gate.set()
    await backend.wait_for(lambda: done == 12)
    assert peak == 4


async def test_s15_concurrent_enqueue_from_many_coroutines(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    results = await asyncio.gather(*(queue.enqueue(nova.Task("t", str(i).encode())) for i in range(100)))
    assert len({r.id for r in results}) == 100
    await queue.start(seen.handler, concurrency=8)
    await backend.wait_for(lambda: len(seen) == 100)
    assert sorted(seen.ids) == sorted(r.id for r in results)


async def test_s15_sync_handlers_run_in_threads(backend: Backend, make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.enqueue_batch([nova.Task("t", str(i).encode()) for i in range(4)])
    threads: set[int] = set()
    main = threading.get_ident()
    handled: list[bytes] = []

    def blocking(task: nova.Task) -> None:  # a plain function: runs off the event loop
        threads.add(threading.get_ident())
        handled.append(task.payload)

    await queue.start(blocking, concurrency=2)
    await backend.wait_for(lambda: len(handled) == 4)
    assert main not in threads


async def test_s15_enqueue_from_other_threads(backend: Backend, make_queue: QueueFactory, seen: Seen) -> None:
    queue = make_queue()
    await queue.start(seen.handler)

    def producer(n: int) -> list[str]:
        return [queue.enqueue_from_thread(nova.Task("t", f"{n}-{i}".encode())).id for i in range(10)]

    results = await asyncio.gather(*(asyncio.to_thread(producer, n) for n in range(4)))
    ids = [i for r in results for i in r]
    assert len(set(ids)) == 40
    await backend.wait_for(lambda: len(seen) == 40)
    assert sorted(seen.ids) == sorted(ids)
    with pytest.raises(nova.StateError, match="block the event loop"):
        queue.enqueue_from_thread(nova.Task("t", b""))
