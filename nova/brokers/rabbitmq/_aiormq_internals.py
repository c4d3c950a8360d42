"""What nova takes from aiormq and pamqp beyond their documented API, all of it here.

The settler writes acks and nacks itself instead of awaiting ``channel.basic_ack``
per delivery: the settles of one event-loop turn go out as one write (a run of
consecutive tags as a single ``basic.ack(multiple=True)``), with no coroutine or
drain future per delivery. For that it needs two things aiormq does not document:

- ``aiormq.Channel.write_queue``: the queue of ``ChannelFrame`` the connection's
  writer sends from (``basic_ack`` puts its frame there too), see ``frame_queue``;
- ``aiormq.abc.ChannelFrame.marshall`` of pamqp's ``Basic.Ack`` / ``Basic.Nack``:
  the bytes ``basic_ack`` / ``basic_nack`` would write, see ``settle_frame``.

tests/brokers/test_rabbitmq_internals.py checks both against the installed aiormq
without a broker, and fails naming the attribute when aiormq changes shape. The
rabbitmq extra pins aiormq to the series checked (``<8``).

aiormq and pamqp are imported on first use, like aio-pika elsewhere in the adapter:
importing nova never imports a broker client.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiormq.abc
    from aiormq.abc import ChannelFrame

__all__ = ["ACK", "ACK_UPTO", "REQUEUE", "frame_queue", "settle_frame"]

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
