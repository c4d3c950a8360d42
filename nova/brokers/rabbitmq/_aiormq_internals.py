"""What nova takes from aiormq and pamqp beyond their documented API, all of it here.

The settler writes acks and nacks itself instead of awaiting ``channel.basic_ack``
per delivery: the settles of one event-loop turn go out as one write (a run of
consecutive tags as a single ``basic.ack(multiple=True)``), with no coroutine or
drain future per delivery. For that it needs two things aiormq does not document:

- ``aiormq.Channel.write_queue``: the queue of ``ChannelFrame`` the connection's
  writer sends from (``basic_ack`` puts its frame there too), see ``frame_queue``;
- ``aiormq.abc.ChannelFrame.marshall`` of pamqp's ``Basic.Ack`` / ``Basic.Nack``:
  the bytes ``basic_ack`` / ``basic_nack`` would write, see ``settle_frame``.

Connecting to the next node of a cluster when the current one is gone needs one
more thing, from aio-pika: its robust connection reconnects to the one URL it was
made with, and calls ``RobustConnection.__connect_transport`` (name-mangled,
private) once per attempt, which connects to ``self.url``. ``failover_connection``
overrides it to point ``url`` at the next node first (see ``failover_connection``).

tests/brokers/test_rabbitmq_internals.py checks all three against the installed
aiormq and aio-pika without a broker, and fails naming the attribute when they
change shape. The rabbitmq extra pins aiormq to the series checked (``<8``).

aiormq and pamqp are imported on first use, like aio-pika elsewhere in the adapter:
importing nova never imports a broker client.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aio_pika.abc
    import aiormq.abc
    from aiormq.abc import ChannelFrame

__all__ = ["ACK", "ACK_UPTO", "CONNECT_ATTEMPT", "REQUEUE", "failover_connection", "frame_queue", "settle_frame"]

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
