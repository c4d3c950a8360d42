"""What nova takes from aiormq and pamqp beyond their documented API, all of it here.

The settler writes acks and nacks itself instead of awaiting ``channel.basic_ack``
per delivery: the settles of one event-loop turn go out as one write (a run of
consecutive tags as a single ``basic.ack(multiple=True)``), with no coroutine or
drain future per delivery. Publishing does the same for many messages at once
(``publish_confirmed``): their ``basic.publish`` frames go out in one write, each
with the confirmation future ``basic_publish`` would await, instead of a coroutine,
a lock round, a drain and a socket write per message. For that nova needs what
aiormq does not document:

- ``aiormq.Channel.write_queue``: the queue of ``ChannelFrame`` the connection's
  writer sends from (``basic_ack`` puts its frame there too), see ``frame_queue``;
- ``aiormq.abc.ChannelFrame.marshall`` of pamqp's ``Basic.Ack`` / ``Basic.Nack``:
  the bytes ``basic_ack`` / ``basic_nack`` would write, see ``settle_frame``;
- what ``aiormq.Channel.basic_publish`` keeps per published message, see
  ``publish_confirmed``: the ``lock``, the ``delivery_tag`` counter, the
  ``confirmations`` (tag -> future, which aiormq resolves on basic.ack / nack and
  rejects when the channel closes), ``message_id_delivery_tag`` (message id -> tag,
  how a basic.return finds its confirmation), ``create_future`` and
  ``max_content_size``.

Connecting to the next node of a cluster when the current one is gone needs one
more thing, from aio-pika: its robust connection reconnects to the one URL it was
made with, and calls ``RobustConnection.__connect_transport`` (name-mangled,
private) once per attempt, which connects to ``self.url``. ``failover_connection``
overrides it to point ``url`` at the next node first (see ``failover_connection``).

tests/brokers/test_rabbitmq_internals.py checks all of them against the installed
aiormq and aio-pika without a broker, and fails naming the attribute when they
change shape. The rabbitmq extra pins aiormq to the series checked (``<8``).

aiormq and pamqp are imported on first use, like aio-pika elsewhere in the adapter:
importing nova never imports a broker client.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aio_pika.abc
    import aiormq.abc
    from aiormq.abc import ChannelFrame

__all__ = ["ACK", "ACK_UPTO", "CONNECT_ATTEMPT", "REQUEUE", "failover_connection", "frame_queue", "persistent",
           "publish_confirmed", "settle_frame"]

#: What ``settle_frame`` writes for a ``(delivery tag, op)``:
ACK = 0  # basic.ack of that tag alone
ACK_UPTO = 1  # basic.ack(multiple=True): every unsettled tag up to and including it
REQUEUE = 2  # basic.nack(requeue=True) of that tag alone


def frame_queue(channel: aiormq.abc.AbstractChannel) -> asyncio.Queue[ChannelFrame]:
    """The queue the connection's writer sends ``channel``'s frames from (bounded)."""
    queue = getattr(channel, "write_queue", None)
    if not isinstance(queue, asyncio.Queue):
        raise RuntimeError(
            f"{type(channel).__qualname__} has no write_queue (an asyncio.Queue): nova's RabbitMQ "
            "settler needs the aiormq series the rabbitmq extra pins (aiormq>=7.2.4,<8)"
        )
    return queue


def settle_frame(channel_number: int, ops: Iterable[tuple[int, int]]) -> ChannelFrame:
    """One frame for the connection's writer with a ``basic.ack``/``basic.nack`` per
    ``(tag, ACK | ACK_UPTO | REQUEUE)``, in the given order."""
    marshall, ack, nack = _frame_makers()
    frames = [
        nack(delivery_tag=tag, multiple=False, requeue=True)
        if op == REQUEUE
        else ack(delivery_tag=tag, multiple=op == ACK_UPTO)
        for tag, op in ops
    ]
    return marshall(channel_number=channel_number, frames=frames)


@functools.cache
def _frame_makers() -> tuple[Callable[..., ChannelFrame], Callable[..., Any], Callable[..., Any]]:
    # looked up once, not by import statements on every flush of the (hot) settle path
    from aiormq.abc import ChannelFrame
    from pamqp.commands import Basic

    return ChannelFrame.marshall, Basic.Ack, Basic.Nack


#: The method of aio-pika's RobustConnection that makes one connection attempt (name-mangled
#: ``__connect_transport``): its reconnection loop calls it for each attempt, and it connects
#: to ``self.url``.
CONNECT_ATTEMPT = "_RobustConnection__connect_transport"


def failover_connection(urls: Sequence[str], first: int, **options: Any) -> aio_pika.abc.AbstractRobustConnection:
    """A robust connection (not yet connected) whose attempts go round the nodes ``urls``.

    Its first attempt connects to ``urls[first]``, each later one to the next URL
    (round robin): when the node it is on dies, the reconnection loop moves to the
    next node, and past one that is down too. Channels, consumers and declared
    topology are restored on the new node as after a reconnection to the same one.
    ``options`` are ``aio_pika.RobustConnection``'s (``ssl_context``,
    ``reconnect_interval``, ``client_properties``, ...); ``connect(timeout)`` it.
    """
    return _failover_class()(urls, first, **options)


@functools.cache
def _failover_class() -> Callable[..., aio_pika.abc.AbstractRobustConnection]:
    from aio_pika import RobustConnection
    from aio_pika.connection import make_url

    attempt: Callable[[RobustConnection], Awaitable[None]] | None = getattr(RobustConnection, CONNECT_ATTEMPT, None)
    if attempt is None or not inspect.iscoroutinefunction(attempt):
        raise RuntimeError(
            f"aio_pika.RobustConnection has no coroutine method {CONNECT_ATTEMPT} (its __connect_transport): "
            "nova's RabbitMQ failover between nodes needs the aio-pika series the rabbitmq extra pins"
        )
    connect_once = attempt

    class FailoverConnection(RobustConnection):
        def __init__(self, urls: Sequence[str], first: int, **options: Any) -> None:
            self.nova_nodes = tuple(make_url(u) for u in urls)
            self.nova_next = first
            super().__init__(self.nova_nodes[first], **options)

        async def _RobustConnection__connect_transport(self) -> None:  # overrides the mangled name
            self.url = self.nova_nodes[self.nova_next % len(self.nova_nodes)]
            self.nova_next += 1
            await connect_once(self)

    return FailoverConnection


#: Bytes of message bodies per write of ``publish_confirmed`` (more go out in further writes).
WRITE_BYTES = 256 * 1024


def persistent(headers: Mapping[str, Any], message_id: str | None, timestamp: datetime) -> Any:
    """The properties of a persistent message (pamqp ``Basic.Properties``), as aio-pika's
    ``Message(body, headers=..., delivery_mode=PERSISTENT, timestamp=..., message_id=...)``
    makes them. Without a ``message_id``, a random one (a basic.return is matched by it)."""
    return _publish_makers()[3](headers=headers, delivery_mode=2, priority=0, timestamp=timestamp,
                                message_id=message_id or uuid.uuid4().hex)


async def publish_confirmed(
    channel: aiormq.abc.AbstractChannel, exchange: str, messages: Sequence[tuple[str, bytes, Any]]
) -> list[asyncio.Future[Any]]:
    """``channel.basic_publish(body, exchange=exchange, routing_key=..., properties=...,
    mandatory=True)`` of each ``(routing key, body, properties)`` (properties from
    ``persistent``), in order, written in as few writes as ``WRITE_BYTES`` allows.

    Returns once the frames are queued for the connection's writer: one future per
    message, the one ``basic_publish`` would await (done with the broker's basic.ack, or
    with the error: ``PublishError`` when returned unroutable, ``DeliveryError`` when
    nacked, the channel's close reason when it closed first). The channel must have
    publisher confirms on. Raises what ``basic_publish`` raises before sending (a
    closed channel); cancelled before its frames were queued, it takes their tags back.
    """
    marshall, publish, header, _, _ = _publish_makers()
    raw: Any = channel  # what basic_publish uses, which aiormq's abstract channel does not declare
    queue = frame_queue(channel)
    body_frames = _body_frames(raw.max_content_size)
    confirmations = raw.confirmations
    by_message_id: dict[str, int] = raw.message_id_delivery_tag
    futures: list[asyncio.Future[Any]] = []
    async with raw.lock:
        first = tag = raw.delivery_tag
        frames: list[Any] = []
        size = 0
        try:
            for routing_key, body, properties in messages:
                tag += 1
                future = raw.create_future()
                confirmations[tag] = future
                message_id = properties.message_id
                by_message_id[message_id] = tag
                future.add_done_callback(functools.partial(_forget, by_message_id, message_id, tag))
                futures.append(future)
                frames.append(publish(exchange=exchange, routing_key=routing_key, mandatory=True))
                frames.append(header(properties=properties, body_size=len(body)))
                frames += body_frames(body)
                size += len(body)
                if size >= WRITE_BYTES:
                    raw.delivery_tag = tag
                    await queue.put(marshall(channel_number=raw.number, frames=frames))
                    first, frames, size = tag, [], 0
            raw.delivery_tag = tag
            if frames:
                await queue.put(marshall(channel_number=raw.number, frames=frames))
        except BaseException:
            # The frames of tags after `first` were not queued: the broker never saw them.
            raw.delivery_tag = first
            for unsent in range(first + 1, tag + 1):
                future = confirmations.pop(unsent, None)
                if future is not None:
                    future.cancel()
            raise
    return futures


def _forget(by_message_id: dict[str, int], message_id: str, tag: int, _: object) -> None:
    # what basic_publish's forget_message_id does once a confirmation is done
    if by_message_id.get(message_id) == tag:
        del by_message_id[message_id]


def _body_frames(limit: int) -> Callable[[bytes], list[Any]]:
    """The content body frames of a body, split at ``limit`` bytes as basic_publish splits it."""
    body_frame = _publish_makers()[4]

    def frames(body: bytes) -> list[Any]:
        if not body:
            return []
        if len(body) < limit:
            return [body_frame(body)]
        return [body_frame(body[i:i + limit]) for i in range(0, len(body), limit)]

    return frames


@functools.cache
def _publish_makers() -> tuple[Callable[..., ChannelFrame], Any, Any, Any, Any]:
    from aiormq.abc import ChannelFrame
    from pamqp.body import ContentBody
    from pamqp.commands import Basic
    from pamqp.header import ContentHeader

    return ChannelFrame.marshall, Basic.Publish, ContentHeader, Basic.Properties, ContentBody
