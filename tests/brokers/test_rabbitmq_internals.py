"""The aiormq/pamqp/aio-pika shape nova's RabbitMQ adapter relies on (``_aiormq_internals``).

No broker needed, so these run in the sim suite too: an aiormq Connection that never
connects, given the two values its handshake would set, makes a real aiormq Channel;
local TCP servers that close every connection at once stand for dead RabbitMQ nodes.
When an upgrade changes what the settler or the failover depends on, a test here
fails and says which attribute, frame or behaviour changed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import aiormq
import pytest
from aiormq.abc import ChannelFrame
from pamqp.commands import Connection as ConnectionMethods

from nova.brokers.rabbitmq._aiormq_internals import (
    ACK,
    ACK_UPTO,
    CONNECT_ATTEMPT,
    REQUEUE,
    failover_connection,
    frame_queue,
    persistent,
    publish_confirmed,
    settle_frame,
)


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


def test_the_robust_connection_makes_each_attempt_through_the_method_failover_overrides() -> None:
    from aio_pika import RobustConnection

    attempt = getattr(RobustConnection, CONNECT_ATTEMPT, None)
    assert inspect.iscoroutinefunction(attempt), (
        f"aio_pika.RobustConnection has no coroutine method {CONNECT_ATTEMPT} any more (its private "
        "__connect_transport): failover_connection overrides it to move to the next node"
    )


async def test_a_failover_connection_goes_round_its_nodes_one_attempt_each() -> None:
    """Three 'nodes' that close every connection at once: the reconnection loop must try
    them in turn, from the one it was made for, never the same one twice running."""
    seen: list[int] = []

    def node(number: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(number)
            writer.close()

        return refuse

    servers = [await asyncio.start_server(node(i), "127.0.0.1", 0) for i in range(3)]
    urls = [f"amqp://u:p@127.0.0.1:{s.sockets[0].getsockname()[1]}/" for s in servers]
    # fail_fast off: the first failure does not end connect(); the loop goes on
    connection = failover_connection(urls, 1, reconnect_interval=0.01, fail_fast="0")
    connecting = asyncio.ensure_future(connection.connect(timeout=2))
    try:
        deadline = time.monotonic() + 30
        while len(seen) < 7:
            assert time.monotonic() < deadline, f"attempts so far: {seen}"
            await asyncio.sleep(0.01)  # polling what the servers saw, not waiting for our code
    finally:
        await connection.close()
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        for server in servers:
            server.close()
            await server.wait_closed()
    assert seen[:7] == [1, 2, 0, 1, 2, 0, 1], (
        f"attempts went to nodes {seen[:7]}: aio-pika's reconnection loop no longer calls "
        f"{CONNECT_ATTEMPT} once per attempt, or no longer connects to self.url"
    )


# -- publish_confirmed --------------------------------------------------------------


@pytest.fixture
async def confirming_channel() -> AsyncIterator[aiormq.Channel]:
    connection = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")
    connection.connection_tune = ConnectionMethods.Tune(frame_max=4096)  # small: a body splits in frames
    connection.server_properties = {"capabilities": {"basic.nack": True, "publisher_confirms": True}}
    channel = aiormq.Channel(connection, 5, publisher_confirms=True, on_return_raises=True)
    yield channel
    await channel.close()
    await connection.close()


def _messages() -> list[tuple[str, bytes, object]]:
    stamp = datetime(2030, 1, 2, tzinfo=UTC)
    return [
        ("q_one", b"small", persistent({"nova-id": "a1", "x": "y"}, "a1", stamp)),
        ("q_two", b"z" * 10_000, persistent({"nova-id": "b2"}, "b2", stamp)),  # over frame_max: three body frames
        ("q_one", b"", persistent({}, "c3", stamp)),
    ]


async def test_publish_confirmed_writes_the_bytes_basic_publish_writes(confirming_channel: aiormq.Channel) -> None:
    channel = confirming_channel
    queue = channel.connection.write_queue
    messages = _messages()
    theirs_tasks = [
        asyncio.ensure_future(channel.basic_publish(body, exchange="ex", routing_key=key, properties=props,
                                                    mandatory=True, wait=False))
        for key, body, props in messages
    ]
    for _ in range(100):  # each basic_publish queues its frame, then awaits its confirmation
        if queue.qsize() == len(messages):
            break
        await asyncio.sleep(0)
    assert queue.qsize() == len(messages)
    theirs = [queue.get_nowait() for _ in range(len(messages))]
    for task in theirs_tasks:
        task.cancel()
    await asyncio.gather(*theirs_tasks, return_exceptions=True)
    channel.delivery_tag = 0
    channel.confirmations.clear()
    channel.message_id_delivery_tag.clear()

    futures = await publish_confirmed(channel, "ex", messages)
    ours = queue.get_nowait()
    assert queue.empty(), "publish_confirmed wrote more than one frame for a few small messages"
    assert ours.payload == b"".join(frame.payload for frame in theirs), (
        "the frames of publish_confirmed are no longer the bytes aiormq's basic_publish writes "
        "(basic.publish, content header, body frames split at max_content_size)"
    )
    assert len(futures) == 3 and channel.delivery_tag == 3


async def test_publish_confirmed_keeps_aiormqs_books_so_acks_nacks_and_returns_find_their_message(
    confirming_channel: aiormq.Channel,
) -> None:
    from pamqp.commands import Basic

    channel = confirming_channel
    futures = await publish_confirmed(channel, "ex", _messages())
    assert list(channel.confirmations) == [1, 2, 3], (
        "aiormq.Channel.confirmations no longer maps delivery tags to the futures basic.ack resolves"
    )
    assert channel.message_id_delivery_tag == {"a1": 1, "b2": 2, "c3": 3}, (
        "aiormq.Channel.message_id_delivery_tag no longer maps message ids to tags (how a return finds its publish)"
    )
    await channel._on_confirm_frame(Basic.Ack(delivery_tag=2, multiple=True))
    await channel._on_confirm_frame(Basic.Nack(delivery_tag=3))
    for _ in range(3):
        await asyncio.sleep(0)  # aiormq resolves a multiple ack's tags with call_soon
    assert all(f.done() for f in futures), "aiormq's basic.ack / nack no longer resolve publish_confirmed's futures"
    assert [type(f.exception()).__name__ if f.exception() else "ok" for f in futures] == ["ok", "ok", "DeliveryError"]
    assert channel.message_id_delivery_tag == {}, "a confirmed message's id is not forgotten"


async def test_publish_confirmed_on_a_closed_channel_raises_before_sending(confirming_channel: aiormq.Channel) -> None:
    await confirming_channel.close()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await publish_confirmed(confirming_channel, "ex", _messages())
    assert confirming_channel.connection.write_queue.empty()


def test_persistent_properties_are_the_ones_aio_pika_makes() -> None:
    import aio_pika
    from pamqp.header import ContentHeader

    stamp = datetime(2030, 1, 2, tzinfo=UTC)
    headers = {"nova-id": "a1", "nova-type": "email"}
    theirs = aio_pika.Message(b"", headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                              timestamp=stamp, message_id="a1").properties
    ours = persistent(headers, "a1", stamp)
    assert ContentHeader(properties=ours).marshal() == ContentHeader(properties=theirs).marshal()
    assert persistent({}, None, stamp).message_id, "a message without an id gets one (returns are matched by it)"
