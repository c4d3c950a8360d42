"""S9 retries with backoff then the dead-letter queue; S10 poison messages."""

from __future__ import annotations

from datetime import timedelta

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen
from nova._broker import Message
from nova._naming import ready_topic


async def test_s9_failing_task_is_retried_with_backoff_then_dead_lettered(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    recorder = nova.MemoryTaskRecorder()
    queue = make_queue(recorder=recorder, retry=nova.RetryPolicy(
        max_retries=2, backoff=nova.ConstantBackoff(timedelta(seconds=1))))
    result = await queue.enqueue(nova.Task("flaky", b"x"))

    async def always_fails(task: nova.Task) -> None:
        seen.add(task)
        raise RuntimeError(f"boom on attempt {task.attempt}")

    await queue.start(always_fails)
    dead = Seen(backend.clock)
    dlq_worker = make_queue()
    await dlq_worker.start(dead.handler, queues=[nova.dead_letter_queue("default")])
    await backend.wait_for(lambda: len(dead) == 1, within=timedelta(seconds=30))
    assert [t.attempt for t in seen.tasks] == [1, 2, 3]
    assert all(t.id == result.id for t in seen.tasks)
    gaps = [b - a for a, b in zip(seen.times, seen.times[1:], strict=False)]
    assert all(g >= 1.0 for g in gaps), gaps  # backoff waited (through the delay tiers)
    letter = dead.tasks[0]
    assert letter.id == result.id and letter.payload == b"x" and letter.type == "flaky"
    assert letter.attempt == 3
    assert letter.error == "RuntimeError: boom on attempt 3"
    assert letter.queue == nova.dead_letter_queue("default")
    await queue.stop()
    record = await recorder.get(result.id)
    assert record is not None and record.status is nova.TaskStatus.FAILED
    assert record.retry_count == 2 and record.error == "RuntimeError: boom on attempt 3"
    if backend.is_sim:
        await backend.advance(timedelta(hours=1))
    assert len(seen) == 3  # never retried again


async def test_s9_task_that_succeeds_on_retry_completes(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    recorder = nova.MemoryTaskRecorder()
    queue = make_queue(recorder=recorder)
    result = await queue.enqueue(nova.Task("flaky", b"x"))

    async def second_time_lucky(task: nova.Task) -> None:
        seen.add(task)
        if task.attempt == 1:
            raise ValueError("transient")

    await queue.start(second_time_lucky)
    await backend.wait_for(lambda: len(seen) == 2)
    await queue.stop()
    record = await recorder.get(result.id)
    assert record is not None and record.status is nova.TaskStatus.COMPLETED and record.retry_count == 1


async def test_s9_zero_retries_dead_letters_at_once(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue(retry=nova.RetryPolicy(max_retries=0))

    async def fails(task: nova.Task) -> None:
        seen.add(task)
        raise KeyError("missing")

    await queue.enqueue(nova.Task("t", b"x"))
    await queue.start(fails)
    dead = Seen(backend.clock)
    await make_queue().start(dead.handler, queues=[nova.dead_letter_queue("default")])
    await backend.wait_for(lambda: len(dead) == 1)
    assert len(seen) == 1 and dead.tasks[0].attempt == 1 and dead.tasks[0].error == "KeyError: 'missing'"


async def test_s10_poison_messages_go_to_the_dead_letter_queue_and_the_worker_keeps_going(
    backend: Backend, make_queue: QueueFactory, prefix: str, seen: Seen
) -> None:
    queue = make_queue()
    await queue.start(seen.handler)
    topic = ready_topic(prefix, "default", nova.Priority.NORMAL)
    await queue.broker.publish([
        Message(topic, b"\xff\x00 not json", {"nova-id": "poison-1", "nova-content-type": "application/json"}),
        Message(topic, b'{"type": "x"}', {"nova-content-type": "application/x-unknown"}),
    ])
    await queue.enqueue(nova.Task("good", b"still works"))
    dead = Seen(backend.clock)
    await make_queue().start(dead.handler, queues=[nova.dead_letter_queue("default")])
    await backend.wait_for(lambda: len(seen) == 1 and len(dead) == 2)
    assert seen.payloads == [b"still works"]
    # Dead-letter consumers get the raw bytes and the decode error, as a task.
    letters = sorted(dead.tasks, key=lambda t: t.payload)
    assert [t.payload for t in letters] == [b'{"type": "x"}', b"\xff\x00 not json"]
    assert all(t.error is not None and t.error.startswith("DecodeError") for t in letters)
    assert letters[1].id == "poison-1"
    assert {t.type for t in letters} == {"nova.undecodable"}
