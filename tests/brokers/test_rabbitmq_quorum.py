"""``RabbitMQBroker(queue_type="quorum")``: every queue nova declares is a quorum queue.

The option's checks run without a broker; the rest against the harness's RabbitMQ
(``--broker rabbitmq``; quorum queues work on a single node too):

    eval "$(python tools/brokers.py env rabbitmq)"
    pytest tests/brokers/test_rabbitmq_quorum.py --broker rabbitmq

What RabbitMQ declared is read back by declaring the queue again with the arguments
expected: RabbitMQ accepts a declare only when every argument it compares (type,
TTL, dead-letter target and strategy, overflow) is the same, and answers 406
otherwise. Every test deletes its queues: on RabbitMQ 3.10 each quorum queue holds
file handles, and a node out of them stops taking connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

import nova
import nova._errors as errors
from nova._broker import Message
from nova.brokers.rabbitmq import RabbitMQBroker
from tests.brokers._rabbitmq_queues import Queues, made_queues
from tests.brokers.test_rabbitmq import PATIENCE, Collector, _require

QUORUM = {"x-queue-type": "quorum"}

# -- the option, without a broker ---------------------------------------------------


def test_classic_stays_the_default() -> None:
    broker = RabbitMQBroker()
    assert broker.queue_type == "classic"
    assert broker._queue_arguments() is None  # as before: queues declared earlier still match
    assert repr(broker) == "RabbitMQBroker('amqp://guest:***@127.0.0.1:5672/', exchange='nova')"


def test_quorum_from_the_keyword_or_the_url() -> None:
    keyword = RabbitMQBroker(queue_type="quorum")
    in_url = RabbitMQBroker("amqp://u:p@127.0.0.1/?queue_type=quorum&heartbeat=30")
    from_url = RabbitMQBroker.from_url("amqp://u:p@127.0.0.1/?queue_type=quorum&exchange=app")
    assert keyword.queue_type == in_url.queue_type == from_url.queue_type == "quorum"
    assert from_url.exchange == "app"
    assert repr(in_url) == "RabbitMQBroker('amqp://u:***@127.0.0.1:5672/', exchange='nova', queue_type='quorum')"
    # nova's options never reach aio-pika; the client's own do
    assert in_url._nodes.urls == ("amqp://u:p@127.0.0.1:5672/?heartbeat=30",)
    assert RabbitMQBroker("amqp://u:p@h/?queue_type=classic", queue_type="classic").queue_type == "classic"


def test_a_bad_or_contradicting_queue_type_is_refused_clearly() -> None:
    with pytest.raises(errors.ConfigurationError, match=r"'classic' \(the default\) or 'quorum'.*got 'stream'"):
        RabbitMQBroker(queue_type="stream")
    with pytest.raises(errors.ConfigurationError, match="got 'Quorum'"):
        RabbitMQBroker("amqp://u:p@h/?queue_type=Quorum")
    with pytest.raises(errors.ConfigurationError, match="queue_type='classic' contradicts the URL's queue_type=quorum"):
        RabbitMQBroker("amqp://u:p@h/?queue_type=quorum", queue_type="classic")


def test_what_each_queue_is_declared_with() -> None:
    classic, quorum = RabbitMQBroker(), RabbitMQBroker(queue_type="quorum")
    ttl = {"x-message-ttl": 1500, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "p__delay01_due"}
    assert classic._queue_arguments(1.5, "p__delay01_due") == ttl
    assert quorum._queue_arguments() == QUORUM
    # at-least-once dead-lettering needs reject-publish (3.10 falls back to at-most-once otherwise)
    assert quorum._queue_arguments(1.5, "p__delay01_due") == {
        **QUORUM, **ttl, "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"
    }
    assert quorum._queue_arguments(0.0001, "d")["x-message-ttl"] == 1  # type: ignore[index]


# -- against RabbitMQ ---------------------------------------------------------------------


@pytest.fixture
def rabbitmq_url() -> str:
    return _require("NOVA_RABBITMQ_URL")


@pytest.fixture
async def queues(rabbitmq_url: str) -> AsyncIterator[Queues]:
    async with made_queues(rabbitmq_url) as made:
        yield made


def _topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}_q_normal"


@pytest.mark.broker("rabbitmq")
async def test_topics_are_quorum_queues_and_keep_the_contract(queues: Queues) -> None:
    topic = _topic()
    broker = queues.broker(queue_type="quorum")
    await broker.connect()
    await broker.publish([Message(topic, b"m%d" % i) for i in range(5)])
    assert await queues.equivalent(topic, QUORUM)
    assert not await queues.equivalent(topic, None)  # it is not a classic queue
    got = Collector(await broker.subscribe([topic], group="g", window=2), ack=False)
    await got.wait(lambda: len(got.deliveries) == 2)
    assert await got.sub.backlog(topic) == 3
    await got.deliveries[0].nack()  # back to the queue: delivered again
    await got.deliveries[1].ack()
    await got.wait(lambda: len(got.deliveries) == 4)
    for delivery in got.deliveries[2:]:
        await delivery.ack()
    await got.wait(lambda: len(got.deliveries) == 6)
    assert sorted(got.bodies()) == sorted([b"m0", b"m0", b"m1", b"m2", b"m3", b"m4"])
    assert got.deliveries[4].headers == {}  # RabbitMQ's x-delivery-count stays out of the task's headers
    for delivery in got.deliveries[4:]:
        await delivery.ack()
    await got.stop()


@pytest.mark.broker("rabbitmq")
async def test_delay_tiers_are_quorum_ttl_queues_dead_lettering_at_least_once(queues: Queues) -> None:
    tier = f"t{uuid.uuid4().hex[:10]}__delay03"
    broker = queues.broker(queue_type="quorum")
    broker.declare_delay_tiers({tier: timedelta(seconds=1)})
    await broker.connect()
    got = Collector(await broker.subscribe([tier], group="fwd", window=10), ack=True)
    await broker.publish([Message(tier, b"later", {"nova-hold-until": "1"})])
    assert await queues.equivalent(tier, broker._queue_arguments(1.0, f"{tier}_due"))
    assert await queues.equivalent(f"{tier}_due", QUORUM)
    # the same tier dead-lettering at most once (no strategy, no overflow) is not what RabbitMQ holds
    at_most_once = {**QUORUM, "x-message-ttl": 1000, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": f"{tier}_due"}
    assert not await queues.equivalent(tier, at_most_once)
    await got.wait(lambda: len(got.deliveries) == 1)
    held = time.time() - got.deliveries[0].published_at
    assert held >= 0.95, f"delivered after {held:.3f} s, before the tier's 1 s TTL"
    assert got.deliveries[0].topic == tier
    assert dict(got.deliveries[0].headers) == {"nova-hold-until": "1"}
    await got.stop()


@pytest.mark.broker("rabbitmq")
@pytest.mark.parametrize(("existing", "ours"), [("classic", "quorum"), ("quorum", "classic")])
async def test_a_queue_of_the_other_type_is_a_configuration_error_naming_it(
    queues: Queues, existing: str, ours: str
) -> None:
    topic = _topic()
    queues.extra.add(topic)
    await queues.channel_call(
        lambda ch: ch.declare_queue(topic, durable=True, arguments=QUORUM if existing == "quorum" else None)
    )
    broker = queues.broker(queue_type=ours)
    await broker.connect()
    with pytest.raises(errors.ConfigurationError) as caught:
        await broker.ensure_topics([topic])
    text = str(caught.value)
    assert f"queue {topic!r} already exists in RabbitMQ with other arguments" in text
    assert f"it is a {existing} queue and this broker declares {ours} queues" in text
    assert "a queue's type cannot change" in text
    # again at once (the 406 closed the channel; the next declare waits for its reopening)
    with pytest.raises(errors.ConfigurationError, match="a queue's type cannot change"):
        await broker.publish([Message(topic, b"x")])
    other = _topic()  # other topics are not affected
    await broker.publish([Message(other, b"after")])
    assert await queues.equivalent(other, QUORUM if ours == "quorum" else None)


@pytest.mark.broker("rabbitmq")
async def test_task_queue_on_quorum_queues_runs_ready_and_delayed_tasks(queues: Queues) -> None:
    broker = queues.broker(queue_type="quorum")
    queue = nova.TaskQueue(broker, topic_prefix="t" + uuid.uuid4().hex[:10], delay_slots=(4, timedelta(seconds=4)))
    handled: dict[bytes, float] = {}
    changed = asyncio.Event()

    async def handle(task: nova.Task) -> None:
        handled.setdefault(task.payload, time.time())
        changed.set()

    try:
        await queue.start(handle, concurrency=8)
        due: dict[bytes, float] = {}
        for priority in nova.Priority:
            await queue.enqueue(nova.Task("t", b"now-%d" % priority), priority=priority)
        for i in range(6):
            delay = 0.5 + i
            due[b"later%d" % i] = time.time() + delay
            await queue.enqueue(nova.Task("t", b"later%d" % i), process_in=delay)
        expected = {b"now-%d" % p for p in nova.Priority} | set(due)
        deadline = time.monotonic() + PATIENCE
        while not expected <= handled.keys():
            assert time.monotonic() < deadline, f"never handled: {sorted(expected - handled.keys())}"
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)
        early = {k: due[k] - handled[k] for k in due if handled[k] < due[k] - 0.001}
        assert not early, f"delayed tasks handled early: {early}"
        declared = queues.names()
        assert len(declared) >= 3 + 4 * 2  # ready topics, and each tier with its _due queue
        for name in declared:
            ttl = broker._delay_ttls.get(name)
            expected_arguments = QUORUM if ttl is None else broker._queue_arguments(ttl, f"{name}_due")
            assert await queues.equivalent(name, expected_arguments), f"{name} is not the quorum queue expected"
    finally:
        await queue.stop()
