"""The per-topic window, backlog answers, competing members and closed brokers."""

from __future__ import annotations

import pytest

import nova
from conformance.contract.conftest import Contract
from nova._broker import Message


async def test_a_full_window_holds_its_topic_and_blocks_no_other(contract: Contract) -> None:
    broker = await contract.broker()
    busy, other = contract.topic("high"), contract.topic("low")
    await broker.ensure_topics([busy, other])
    await broker.publish([Message(busy, b"b%d" % i) for i in range(5)])
    got = await contract.subscribe(broker, [busy, other], window=2, ack=False)
    await got.wait(lambda: len(got.bodies(busy)) == 2)
    await broker.publish([Message(other, b"o0")])
    await got.wait(lambda: got.bodies(other) == [b"o0"])  # served while busy's window is full
    await contract.backlog_is(got.sub, busy, 3)
    assert len(got.bodies(busy)) == 2
    await got.deliveries[1].ack()  # out of order: frees one slot
    await got.wait(lambda: len(got.bodies(busy)) == 3)
    assert len(set(got.bodies(busy))) == 3  # a third, different one (brokers need not keep order)
    await contract.backlog_is(got.sub, busy, 2)


async def test_backlog_counts_what_this_subscription_has_not_been_given(contract: Contract) -> None:
    broker = await contract.broker()
    topic, empty = contract.topic(), contract.topic("low")
    await broker.ensure_topics([topic, empty])
    await broker.publish([Message(topic, b"m%d" % i) for i in range(5)])
    got = await contract.subscribe(broker, [topic, empty], window=1, ack=False)
    await got.wait(lambda: len(got.deliveries) == 1)
    await contract.backlog_is(got.sub, topic, 4)
    assert await got.sub.backlog(empty) == 0
    await got.deliveries[0].ack()
    await got.wait(lambda: len(got.deliveries) == 2)
    await contract.backlog_is(got.sub, topic, 3)


async def test_competing_members_of_a_group_share_a_topic(contract: Contract) -> None:
    if not contract.backend.shares_work:
        pytest.skip(f"{contract.name} spreads a group's work by partition; a topic here has one")
    topic = contract.topic()
    a, b = await contract.broker(), await contract.broker()
    await a.ensure_topics([topic])
    one = await contract.subscribe(a, [topic], window=1, ack=False)
    two = await contract.subscribe(b, [topic], window=1, ack=False)
    await a.publish([Message(topic, b"p1"), Message(topic, b"p2")])
    await one.wait(lambda: len(one.deliveries) == 1)
    await two.wait(lambda: len(two.deliveries) == 1)
    assert sorted(one.bodies() + two.bodies()) == [b"p1", b"p2"]


async def test_a_closed_broker_refuses_work(contract: Contract) -> None:
    broker = await contract.broker()
    topic = contract.topic()
    await broker.ensure_topics([topic])
    await broker.close()
    await broker.close()  # idempotent
    with pytest.raises(nova.ClosedError):
        await broker.publish([Message(topic, b"x")])
    with pytest.raises(nova.ClosedError):
        await broker.subscribe([topic], group=contract.group(), window=1)
    with pytest.raises(nova.ClosedError):
        await broker.connect()


async def test_a_window_below_one_is_refused(contract: Contract) -> None:
    broker = await contract.broker()
    topic = contract.topic()
    await broker.ensure_topics([topic])
    with pytest.raises(nova.NovaError, match="window"):
        await broker.subscribe([topic], group=contract.group(), window=0)
