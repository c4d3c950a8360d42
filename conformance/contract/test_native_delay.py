"""``Message.deliver_at`` on brokers that keep delays themselves (``native_delay_max``)."""

from __future__ import annotations

from conformance.contract.conftest import Contract
from nova._broker import Message


async def test_deliver_at_is_never_early(contract: Contract) -> None:
    broker = await contract.native_delay_broker()
    topic = contract.topic()
    await broker.ensure_topics([topic])
    got = await contract.subscribe(broker, [topic], window=8, ack=True)
    now = contract.backend.clock.time()
    due = {b"d%d" % i: now + 2.0 + i * 0.7 for i in range(3)}
    await broker.publish([Message(topic, body, deliver_at=at) for body, at in due.items()])
    await broker.publish([Message(topic, b"now")])
    await got.wait(lambda: b"now" in got.bodies())
    assert got.bodies() == [b"now"]  # none of the delayed ones came with it
    await got.wait(lambda: len(got.deliveries) == 4)
    lateness = contract.backend.lateness.total_seconds()
    for delivery, arrived in zip(got.deliveries[1:], got.times[1:], strict=True):
        assert arrived >= due[delivery.body], f"{delivery.body!r} came {due[delivery.body] - arrived:.3f} s early"
        assert arrived - due[delivery.body] <= lateness + 0.5, f"{delivery.body!r} came late"
