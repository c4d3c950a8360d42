"""The aiormq/pamqp shape nova's RabbitMQ adapter relies on (``_aiormq_internals``).

No broker needed, so these run in the sim suite too: an aiormq Connection that never
connects, given the two values its handshake would set, makes a real aiormq Channel.
When an aiormq upgrade changes what the settler depends on, a test here fails and
says which attribute or frame changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiormq
import pytest
from aiormq.abc import ChannelFrame
from pamqp.commands import Connection as ConnectionMethods

from nova.brokers.rabbitmq._aiormq_internals import ACK, ACK_UPTO, REQUEUE, frame_queue, settle_frame


@pytest.fixture
async def channel() -> AsyncIterator[aiormq.Channel]:
    connection = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")
    # what connection.tune and connection.start would have set
    connection.connection_tune = ConnectionMethods.Tune(frame_max=131072)
    connection.server_properties = {"capabilities": {"basic.nack": True}}
    channel = aiormq.Channel(connection, 3, publisher_confirms=False)
    yield channel
    await channel.close()
    await connection.close()


def test_a_channel_has_the_write_queue_of_its_connections_writer(channel: aiormq.Channel) -> None:
    assert isinstance(getattr(channel, "write_queue", None), asyncio.Queue), (
        "aiormq.Channel no longer has the attribute 'write_queue' (an asyncio.Queue): the settler "
        "writes its acks there (_aiormq_internals.frame_queue)"
    )
    assert channel.write_queue is channel.connection.write_queue, (
        "aiormq.Channel.write_queue is no longer aiormq.Connection.write_queue, the queue the "
        "connection's writer sends from: acks put there would never be sent"
    )
    assert frame_queue(channel) is channel.connection.write_queue


def test_frame_queue_refuses_a_channel_without_one() -> None:
    with pytest.raises(RuntimeError, match="write_queue"):
        frame_queue(object())  # type: ignore[arg-type]


async def test_settle_frame_writes_the_bytes_basic_ack_and_basic_nack_write(channel: aiormq.Channel) -> None:
    queue = channel.connection.write_queue
    await channel.basic_ack(7, multiple=True, wait=False)
    await channel.basic_ack(9, wait=False)
    await channel.basic_nack(11, requeue=True, wait=False)
    theirs = [queue.get_nowait() for _ in range(3)]
    assert all(type(frame) is ChannelFrame for frame in theirs), (
        "aiormq.Channel.basic_ack no longer puts an aiormq.abc.ChannelFrame on write_queue: "
        f"it put {[type(f).__name__ for f in theirs]}"
    )
    ours = settle_frame(channel.number, [(7, ACK_UPTO), (9, ACK), (11, REQUEUE)])
    assert type(ours) is ChannelFrame
    assert ours.payload == b"".join(frame.payload for frame in theirs), (
        "ChannelFrame.marshall of pamqp's Basic.Ack/Basic.Nack no longer gives the bytes "
        "aiormq's basic_ack/basic_nack write"
    )
    assert not ours.should_close
    assert ours.drain_future is None  # nothing waits for the write, as with wait=False
