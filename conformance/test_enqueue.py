"""S1 confirmed enqueue, S2 ids, S6 immediate/invalid schedules, S17 bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen
from nova.sim import SimBroker


async def test_s1_enqueued_task_is_held_by_the_broker_until_a_worker_comes(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    producer = make_queue()
    result = await producer.enqueue(nova.Task("email", b"hello"))
    await producer.stop()  # the producer is gone: only the broker has the task now
    worker = make_queue()
    await worker.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 1)
    assert seen.ids == [result.id]
    assert seen.tasks[0].payload == b"hello"


@pytest.mark.sim_only
async def test_s1_refused_publish_raises_enqueue_error(backend: Backend, make_queue: QueueFactory) -> None:
    queue = make_queue()
    broker = queue.broker
    assert isinstance(broker, SimBroker)
    broker.fail_publishes(1)
    with pytest.raises(nova.EnqueueError):
        await queue.enqueue(nova.Task("email", b"x"))
    assert all(broker.depth(t) == 0 for t in broker.topics())
    await queue.enqueue(nova.Task("email", b"x"))  # the next one goes through
    assert sum(broker.depth(t) for t in broker.topics()) == 1


async def test_s2_ids_are_unique_and_match_what_handlers_see(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    single = await queue.enqueue(nova.Task("a", b"0"))
    batch = await queue.enqueue_batch([nova.Task("b", str(i).encode()) for i in range(1, 6)])
    assert [r.queue for r in batch] == ["default"] * 5
    ids = [single.id] + [r.id for r in batch]
    assert len(set(ids)) == 6
    await queue.start(seen.handler, concurrency=1)
    await backend.wait_for(lambda: len(seen) == 6)
    by_payload = {t.payload: t.id for t in seen.tasks}
    assert [by_payload[str(i).encode()] for i in range(6)] == ids  # same ids, same order


async def test_s2_custom_task_id_is_kept(backend: Backend, make_queue: QueueFactory, seen: Seen) -> None:
    queue = make_queue()
    result = await queue.enqueue(nova.Task("a", b"", id="order-42"))
    assert result.id == "order-42"
    await queue.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 1)
    assert seen.ids == ["order-42"]


async def test_s6_past_or_zero_schedule_is_immediate(backend: Backend, make_queue: QueueFactory,
                                                     seen: Seen) -> None:
    queue = make_queue()
    past = backend.clock.now() - timedelta(hours=1)
    r1 = await queue.enqueue(nova.Task("a", b"1"), process_at=past)
    r2 = await queue.enqueue(nova.Task("a", b"2"), process_in=timedelta(0))
    r3 = await queue.enqueue(nova.Task("a", b"3"), process_in=timedelta(seconds=-5))
    assert r1.eta is None and r2.eta is None and r3.eta is None
    await queue.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 3, within=timedelta(seconds=10))


async def test_s6_both_schedules_or_naive_datetime_are_rejected(make_queue: QueueFactory) -> None:
    queue = make_queue()
    task = nova.Task("a", b"")
    with pytest.raises(ValueError, match="not both"):
        await queue.enqueue(task, process_in=timedelta(seconds=1), process_at=datetime.now(UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        await queue.enqueue(task, process_at=datetime(2030, 1, 1))


BAD_INPUT = [
    pytest.param(lambda: nova.Task("", b"x"), {}, "non-empty str", id="empty-type"),
    pytest.param(lambda: nova.Task(5, b"x"), {}, "non-empty str", id="non-str-type"),  # type: ignore[arg-type]
    pytest.param(lambda: nova.Task("a", "text"), {}, "must be bytes", id="str-payload"),  # type: ignore[arg-type]
    pytest.param(lambda: nova.Task("a", b""), {"priority": 7}, "1 \\(LOW\\)", id="priority-7"),
    pytest.param(lambda: nova.Task("a", b""), {"priority": 0}, "1 \\(LOW\\)", id="priority-0"),
    pytest.param(lambda: nova.Task("a", b""), {"queue": "has space"}, "queue name", id="queue-space"),
    pytest.param(lambda: nova.Task("a", b""), {"queue": ""}, "queue name", id="queue-empty"),
    pytest.param(lambda: nova.Task("a", b""), {"queue": "x" * 101}, "queue name", id="queue-long"),
    pytest.param(lambda: nova.Task("a", b"", headers={"nova-id": "1"}), {}, "reserved", id="reserved-header"),
    pytest.param(lambda: nova.Task("a", b"", headers={"n": 1}), {}, "str value", id="non-str-header"),
]


@pytest.mark.parametrize(("make_task", "kwargs", "message"), BAD_INPUT)
async def test_s17_bad_input_is_rejected_before_publishing(
    backend: Backend, make_queue: QueueFactory, make_task: object, kwargs: dict[str, object], message: str
) -> None:
    queue = make_queue()
    with pytest.raises(nova.ValidationError, match=message):
        await queue.enqueue(make_task(), **kwargs)  # type: ignore[operator, arg-type]
    if isinstance(queue.broker, SimBroker):
        assert queue.broker.published == 0


async def test_s17_batch_with_one_bad_task_publishes_nothing(make_queue: QueueFactory) -> None:
    queue = make_queue()
    with pytest.raises(nova.ValidationError):
        await queue.enqueue_batch([nova.Task("ok", b""), nova.Task("", b"")])
    if isinstance(queue.broker, SimBroker):
        assert queue.broker.published == 0


async def test_s17_payload_over_the_limit(make_queue: QueueFactory) -> None:
    queue = make_queue(message_format=nova.MessageFormat.BLOB)
    with pytest.raises(nova.PayloadTooLarge, match="over the limit of 1048576 bytes"):
        await queue.enqueue(nova.Task("big", b"x" * (1024 * 1024 + 1)))
    small = make_queue(max_payload_size=10, message_format=nova.MessageFormat.BLOB)
    with pytest.raises(nova.PayloadTooLarge):
        await small.enqueue(nova.Task("big", b"x" * 11))
    await small.enqueue(nova.Task("fits", b"x" * 10))


async def test_s17_start_twice_and_start_after_stop(make_queue: QueueFactory, seen: Seen) -> None:
    queue = make_queue()
    await queue.start(seen.handler)
    with pytest.raises(nova.StateError, match="already consuming"):
        await queue.start(seen.handler)
    await queue.stop()
    with pytest.raises(nova.StateError, match="stopped"):
        await queue.start(seen.handler)
    with pytest.raises(nova.ClosedError):
        await queue.enqueue(nova.Task("a", b""))


async def test_s17_bad_options_are_rejected(make_queue: QueueFactory, seen: Seen) -> None:
    with pytest.raises(nova.ConfigurationError, match="topic_prefix"):
        make_queue(topic_prefix="has_underscore")
    with pytest.raises(nova.ConfigurationError, match="delay_slots"):
        make_queue(delay_slots=(0, timedelta(hours=1)))
    queue = make_queue()
    with pytest.raises(nova.ValidationError, match="concurrency"):
        await queue.start(seen.handler, concurrency=0)
    with pytest.raises(nova.ValidationError, match="queues"):
        await queue.start(seen.handler, queues="default")
