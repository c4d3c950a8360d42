"""A subscription: deliveries of several topics merged into one stream, and each topic's feed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from nova.brokers._common import quietly
from nova.brokers.rabbitmq._errors import failure
from nova.brokers.rabbitmq._settler import _STALE_LOG, _Settler

if TYPE_CHECKING:
    import aio_pika
    import aio_pika.abc
    import aiormq
    import aiormq.abc

    from nova.brokers.rabbitmq._broker import RabbitMQBroker

log = logging.getLogger("nova.rabbitmq")

#: Header with the publish time at sub-second precision (AMQP timestamps are whole seconds).
PUBLISHED_AT_HEADER = "x-nova-published-at"


class _Feed:
    """One consumed topic of a subscription, and what we know of its queue.

    ``backlog`` must say whether work of the topic waits for this
    subscription: received but not yet iterated (``unyielded``, known here),
    or ready in RabbitMQ. Asking RabbitMQ (a passive declare) costs a round
    trip, and the engine asks before every pick, so it is asked only when
    local knowledge cannot decide. Why local knowledge can:

    - a queue (classic or quorum) never keeps a message ready while one of its
      consumers has credit (fewer unacked deliveries than its prefetch,
      ``window``): it sends the message at once. A ready message therefore means
      our consumer is at ``window`` in the broker's view;
    - the broker's count of our unacked deliveries is at most ``held``
      (received, not settled) + ``settled`` (settles handed out since the last
      fence began: the broker may not have processed them yet) + deliveries on
      the wire to us;
    - a fence is a passive declare on this consumer's own channel, after its
      pending settles: RabbitMQ handles it after them, so ``settled`` restarts
      from what was settled since, and ``ready`` is the count it returned;
    - between fences ``held + settled`` never decreases (a settle moves one
      from ``held`` to ``settled``), so if our credit may have run out since
      the last fence, the local test fails until the next fence.

    So after a fence found 0 ready, ``held + settled < window`` proves that
    nothing is ready in RabbitMQ, except messages already on the wire to us
    (they were never counted: a passive declare only counts ready ones) and, on
    a quorum queue, for a moment: it applies a settle (giving credit back) once
    its Raft log committed it, not when it answers the fence.
    Otherwise (no fence yet on this AMQP channel, ready found, credit maybe
    used up) the broker is asked; concurrent askers share one question.
    """

    __slots__ = ("channel", "fencing", "held", "queue_name", "ready", "settled", "settler", "topic",
                 "underlay", "unyielded", "window")

    def __init__(self, topic: str, queue_name: str, window: int, channel: aio_pika.abc.AbstractChannel) -> None:
        self.topic = topic
        self.queue_name = queue_name
        self.window = window
        self.channel = channel
        #: the AMQP channel the counts below refer to (a robust channel reopens on a new one)
        self.underlay: aiormq.abc.AbstractChannel | None = None
        self.settler: _Settler | None = None
        self.held = 0  # delivered on ``underlay`` and not yet settled
        self.settled = 0  # settled on ``underlay`` since the last fence began
        self.ready: int | None = None  # ready count found by the last fence; None: no fence on ``underlay``
        self.unyielded = 0  # in the subscription's queue, not yet handed to the iterator
        self.fencing: asyncio.Task[int] | None = None

    def adopt(self, underlay: aiormq.abc.AbstractChannel) -> _Settler:
        """The settler of ``underlay``; counts restart when it is a new AMQP channel."""
        if underlay is not self.underlay or self.settler is None:
            self.underlay = underlay
            self.settler = _Settler(underlay, self.topic)
            self.held = self.settled = 0
            self.ready = None
        return self.settler

    def nothing_ready(self) -> bool:
        """True when local knowledge proves RabbitMQ holds nothing ready for us (see the class doc)."""
        underlay = self.underlay
        return (
            self.ready == 0
            and underlay is not None
            and not underlay.is_closed
            and self.held + self.settled < self.window
        )

    async def fence(self) -> int:
        """Ask RabbitMQ for the ready count, on the consumer's own channel (0 if unknown)."""
        try:
            underlay = await asyncio.wait_for(self.channel.get_underlay_channel(), 5)
            settler = self.adopt(underlay)
            await settler.drain()  # the settles counted below are on the wire before the declare
            started = self.settled
            result = await underlay.queue_declare(self.queue_name, passive=True, timeout=5)
        except Exception:
            log.debug("backlog(%r) unavailable", self.topic, exc_info=True)
            return 0
        ready = int(result.message_count or 0)
        if self.underlay is underlay:
            self.settled -= started
            self.ready = ready
        return ready


class _RabbitDelivery:
    __slots__ = ("_done", "_feed", "_message", "_settler", "body", "headers", "published_at", "topic")

    def __init__(self, feed: _Feed, settler: _Settler | None, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.topic = feed.topic
        self.body = message.body
        raw = message.headers
        stamp = raw.get(PUBLISHED_AT_HEADER) if raw else None
        # "x-*" headers are RabbitMQ's own (x-death and friends after dead-lettering).
        self.headers: Mapping[str, str] = (
            {k: (v if isinstance(v, str) else v.decode() if isinstance(v, bytes) else str(v))
             for k, v in raw.items() if not k.startswith("x-")}
            if raw
            else {}
        )
        published: float | None = None
        if stamp is not None:
            with contextlib.suppress(ValueError):
                published = float(stamp.decode() if isinstance(stamp, bytes) else str(stamp))
        if published is None and message.timestamp is not None:
            published = message.timestamp.timestamp()
        self.published_at = published if published is not None else time.time()
        self._message = message
        self._feed = feed
        self._settler = settler  # None: it came on a channel already closed
        self._done = False

    def stale(self) -> bool:
        """True if the channel it came on is gone (the broker redelivers it)."""
        if self._settler is None:
            return True
        try:
            return self._message.channel.is_closed
        except Exception as exc:  # aio-pika: ChannelInvalidStateError once the channel closed
            if failure(exc).recovers:
                return True
            raise

    async def ack(self) -> None:
        self._settle(requeue=False)

    async def nack(self) -> None:
        self._settle(requeue=True)

    def _settle(self, requeue: bool) -> None:
        """Ack or requeue: hand the tag to the channel's settler, which writes it
        within this event-loop turn (see ``_Settler``). On a delivery whose channel
        is gone (connection lost, subscription closed) there is nothing to settle:
        RabbitMQ already put the message back and redelivers it, so this logs a
        warning instead of raising (at least once: the task may run again)."""
        if self._done:
            return
        self._done = True
        feed, settler = self._feed, self._settler
        if settler is not None and settler is feed.settler:
            feed.held -= 1
            feed.settled += 1
        if settler is None or self.stale():
            _STALE_LOG.report("nack" if requeue else "ack", self.topic)
            return
        tag = self._message.delivery_tag
        assert tag is not None
        settler.settle(tag, requeue)

    def __repr__(self) -> str:
        return f"<RabbitMQ delivery topic={self.topic!r} {len(self.body)} bytes>"


_STOP = object()


class _RabbitSubscription:
    """Deliveries of several topics merged into one stream."""

    def __init__(self, broker: RabbitMQBroker, group: str) -> None:
        self._broker = broker
        self._group = group
        self._queue: asyncio.Queue[_RabbitDelivery | object] = asyncio.Queue()
        self._feeds: dict[str, _Feed] = {}
        self._closed = False

    async def _open(
        self,
        connection: aio_pika.abc.AbstractRobustConnection,
        topic: str,
        queue_name: str,
        window: int,
    ) -> tuple[aio_pika.abc.AbstractQueue, Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]]:
        """A channel for ``topic``, ready to consume: its queue and its message callback."""
        channel = await connection.channel(publisher_confirms=False)
        feed = _Feed(topic, queue_name, window, channel)
        self._feeds[topic] = feed
        # global=False: the limit applies per consumer, i.e. per topic.
        await channel.set_qos(prefetch_count=window)
        try:
            queue = await channel.declare_queue(queue_name, durable=True, arguments=self._broker._queue_arguments())
        except Exception as exc:
            raise self._broker._error(exc, f"declaring queue {queue_name!r}", queue=queue_name) from exc
        put = self._queue.put_nowait

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            underlay = message.channel
            settler: _Settler | None = None
            if underlay is feed.underlay or not underlay.is_closed:
                settler = feed.adopt(underlay)
                feed.held += 1
            feed.unyielded += 1
            put(_RabbitDelivery(feed, settler, message))

        return queue, on_message

    async def __aiter__(self) -> AsyncIterator[_RabbitDelivery]:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                self._queue.put_nowait(_STOP)
                return
            assert isinstance(item, _RabbitDelivery)
            feed = item._feed
            feed.unyielded -= 1
            if item.stale():
                if item._settler is not None and item._settler is feed.settler:
                    feed.held -= 1
                continue  # its channel died: RabbitMQ redelivers it on the new one
            yield item

    def revoked(self, delivery: _RabbitDelivery) -> bool:
        """True once the channel ``delivery`` came on closed: RabbitMQ put it back and
        delivers it again (``nova._broker.RevokedDeliveries``)."""
        return delivery.stale()

    async def backlog(self, topic: str) -> int:
        """Messages of ``topic`` waiting for this subscription: received but not yet
        iterated, or ready in RabbitMQ (0 if unknown). Asks RabbitMQ only when
        local knowledge cannot decide (see ``_Feed``)."""
        if self._closed:
            return 0
        feed = self._feeds.get(topic)
        if feed is None:
            return await self._broker._queue_depth(topic)
        if feed.unyielded:
            return feed.unyielded
        if feed.nothing_ready():
            return 0
        if feed.fencing is None or feed.fencing.done():
            feed.fencing = asyncio.get_running_loop().create_task(feed.fence())
        # shield: a runner cancelled while waiting must not cancel the others' answer
        return await asyncio.shield(feed.fencing)

    async def close(self) -> None:
        """Stop consuming; unacked deliveries go back to their queues. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._broker._subscriptions.discard(self)
        for feed in self._feeds.values():
            if feed.settler is not None:  # acks already given go out before the close
                await quietly(feed.settler.drain(), log, f"writing the settles of {feed.topic!r}")
            # (a fence in flight fails on the closed channel and answers 0)
            await quietly(feed.channel.close(), log, f"closing the channel of {feed.topic!r}")
        self._queue.put_nowait(_STOP)
