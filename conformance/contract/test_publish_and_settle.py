"""Publish, deliver, ack and nack: the broker contract's core (``nova._broker``)."""

from __future__ import annotations

import asyncio

from conformance.contract.conftest import Contract
from nova._broker import Message


async def test_a_published_message_arrives_with_its_body_headers_and_publish_time(contract: Contract) -> None:
    broker = await contract.broker()
    await broker.connect()  # idempotent
    topic = contract.topic()
    await broker.ensure_topics([topic])
    before = contract.backend.clock.time()
    headers = {"nova-id": "abc", "nova-empty": "", "nova-x": "h\u00e9\u2713"}
    await broker.publish([Message(topic, b"\x00payload\xff", headers, key="abc"), Message(topic, b"two")])
    after = contract.backend.clock.time()
    got = await contract.subscribe(broker, [topic], window=4, ack=True)
    await got.wait(lambda: len(got.deliveries) == 2)
    first, second = sorted(got.deliveries, key=lambda d: d.body)
    assert (first.topic, first.body, dict(first.headers)) == (topic, b"\x00payload\xff", headers)
    assert (second.body, dict(second.headers)) == (b"two", {})
    assert before - 1 <= first.published_at <= after + 1


async def test_a_message_published_before_anyone_subscribed_is_kept(contract: Contract) -> None:
    topic = contract.topic()
    producer = await contract.broker()
    await producer.ensure_topics([topic])
    await producer.publish([Message(topic, b"m%d" % i) for i in range(3)])
    consumer = await contract.broker()  # another connection (on SimBroker: the same broker)
    got = await contract.subscribe(consumer, [topic], window=10, ack=True)
    await got.wait(lambda: len(got.deliveries) == 3)
    assert sorted(got.bodies()) == [b"m0", b"m1", b"m2"]


async def test_concurrent_publishes_all_land(contract: Contract) -> None:
    broker = await contract.broker()
    topic = contract.topic()
    await broker.ensure_topics([topic])
    singles = [broker.publish([Message(topic, b"s%d" % i)]) for i in range(200)]
    bulks = [broker.publish([Message(topic, b"b%d-%d" % (j, i)) for i in range(100)]) for j in range(5)]
    await asyncio.gather(*singles, *bulks)
    got = await contract.subscribe(broker, [topic], window=1000, ack=True)
    await got.wait(lambda: len(got.deliveries) >= 700)
    assert len(set(got.bodies())) == 700


async def test_nack_redelivers_at_once_and_settling_is_idempotent(contract: Contract) -> None:
    broker = await contract.broker()
    topic = contract.topic()
    await broker.ensure_topics([topic])
    await broker.publish([Message(topic, b"again")])
    got = await contract.subscribe(broker, [topic], window=1, ack=False)
    await got.wait(lambda: len(got.deliveries) == 1)
    first = got.deliveries[0]
    await first.nack()
    await first.nack()  # idempotent
    await first.ack()  # already settled: no effect, no error
    await got.wait(lambda: len(got.deliveries) == 2)
    second = got.deliveries[1]
    assert second.body == b"again"
    await second.ack()
    await second.ack()  # idempotent
    await second.nack()  # already settled: no effect
    await broker.publish([Message(topic, b"marker")])
    await got.wait(lambda: len(got.deliveries) == 3)
    assert got.bodies() == [b"again", b"again", b"marker"]  # the acked one never came back
    await got.deliveries[2].ack()
    await contract.backlog_is(got.sub, topic, 0)


async def test_close_gives_unacked_deliveries_to_the_next_member_of_the_group(contract: Contract) -> None:
    broker = await contract.broker()
    topic = contract.topic()
    await broker.ensure_topics([topic])
    await broker.publish([Message(topic, b"m%d" % i) for i in range(3)])
    first = await contract.subscribe(broker, [topic], window=10, ack=False)
    await first.wait(lambda: len(first.deliveries) == 3)
    done, *held = sorted(first.deliveries, key=lambda d: d.body)
    await done.ack()
    await first.stop()  # m1 and m2 were being worked on when this member left
    await first.sub.close()  # idempotent
    await held[0].ack()  # too late: ignored, not an error
    second = await contract.subscribe(await contract.broker(), [topic], window=10, ack=True)
    await second.wait(lambda: len(second.deliveries) >= 2)
    assert sorted(second.bodies()) == [b"m1", b"m2"]


async def test_iterating_a_closed_subscription_stops(contract: Contract) -> None:
    broker = await contract.broker()
    topic = contract.topic()
    await broker.ensure_topics([topic])
    sub = await broker.subscribe([topic], group=contract.group(), window=1)
    await sub.close()
    async with asyncio.timeout(30):
        assert [d async for d in sub] == []
