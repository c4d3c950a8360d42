"""Acks and nacks of one AMQP channel, written together once per event-loop turn."""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import TYPE_CHECKING

from nova.brokers.rabbitmq._aiormq_internals import ACK, ACK_UPTO, REQUEUE, frame_queue, settle_frame
from nova.brokers.rabbitmq._errors import failure

if TYPE_CHECKING:
    import aiormq.abc
    from aiormq.abc import ChannelFrame

log = logging.getLogger("nova.rabbitmq")

#: Longest an ack/nack may wait for the connection's writer (then: redelivery).
SETTLE_TIMEOUT = 10.0


class _StaleLog:
    """One warning per burst of stale acks (a lost connection strands a whole window)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last = float("-inf")
        self.quiet = 0

    def report(self, verb: str, topic: str, count: int = 1) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.quiet += count
            return
        more = f" (and {self.quiet} more since the last warning)" if self.quiet else ""
        self.last, self.quiet = now, count - 1
        log.warning(
            "cannot %s a delivery from %r: its channel closed (connection lost or subscription "
            "closed); RabbitMQ redelivers it%s",
            verb,
            topic,
            more,
        )


_STALE_LOG = _StaleLog()


class _Settler:
    """The acks and nacks of one AMQP channel, written once per event-loop turn.

    Delivery tags on a channel are consecutive (1, 2, 3, ...) and every tag up
    to ``base`` is settled and on the wire. A run of settled tags starting at
    ``base + 1`` goes out as ONE ``basic.ack(multiple=True)`` of its last tag:
    it cannot ack a delivery whose handler has not finished, because it only
    ever extends over tags we settled (a delivery still in a handler, or not
    yet read, is a gap that stops the run). Tags settled above a gap go out
    one by one, so a long handler never holds back the others' credit. Nacks
    are written in tag order before any multiple ack that passes them.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel, topic: str) -> None:
        self.channel = channel
        self.write_queue = frame_queue(channel)
        self.topic = topic
        self.base = 0
        #: settled tags above ``base`` already written, as sorted disjoint [first, last] runs
        self.written: list[list[int]] = []
        #: settled tags not yet written: tag -> requeue (False: ack, True: nack)
        self.pending: dict[int, bool] = {}
        self._scheduled = False
        self._writer: asyncio.Task[None] | None = None

    def settle(self, tag: int, requeue: bool) -> None:
        self.pending[tag] = requeue
        if not self._scheduled and self._writer is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._writer is not None:
            return  # the running writer takes what is pending next
        frame = self._take()
        if frame is None:
            return
        try:
            self.write_queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._writer = asyncio.get_running_loop().create_task(self._write(frame))

    async def _write(self, frame: ChannelFrame | None) -> None:
        try:
            while frame is not None:
                # The writer's queue is bounded; waiting for it can hang when the
                # connection dies mid-call, and a frame lost that way only means a redelivery.
                async with asyncio.timeout(SETTLE_TIMEOUT):
                    await self.write_queue.put(frame)
                frame = self._take()
        except Exception as exc:  # unsettled means redelivered, never lost
            if self.channel.is_closed or failure(exc).recovers:
                _STALE_LOG.report("settle", self.topic)
            else:
                log.error("cannot settle deliveries from %r (RabbitMQ redelivers them)", self.topic, exc_info=True)
        finally:
            self._writer = None

    async def drain(self) -> None:
        """Write everything settled so far (before a fence or a channel close)."""
        if self._writer is not None:
            await asyncio.wait([self._writer])
        await self._write(self._take())

    def _take(self) -> ChannelFrame | None:
        """Frames for every pending settle, in tag order, as one write (None: nothing)."""
        if not self.pending:
            return None
        if self.channel.is_closed:
            _STALE_LOG.report("settle", self.topic, len(self.pending))
            self.pending.clear()
            return None
        ops: list[tuple[int, int]] = []
        tags = sorted(self.pending)
        ack_upto = 0
        edge = self._advance(self.base)
        i = 0
        while i < len(tags) and tags[i] == edge + 1:
            tag = tags[i]
            if self.pending.pop(tag):
                if ack_upto:
                    ops.append((ack_upto, ACK_UPTO))
                    ack_upto = 0
                ops.append((tag, REQUEUE))
            else:
                ack_upto = tag
            edge = self._advance(tag)
            i += 1
        if ack_upto:
            ops.append((ack_upto, ACK_UPTO))
        self.base = edge
        for tag in tags[i:]:
            ops.append((tag, REQUEUE if self.pending.pop(tag) else ACK))
            self._mark_written(tag)
        return settle_frame(self.channel.number, ops)

    def _advance(self, edge: int) -> int:
        """Skip the written runs that continue ``edge``; the new edge."""
        written = self.written
        while written and written[0][0] == edge + 1:
            edge = written.pop(0)[1]
        return edge

    def _mark_written(self, tag: int) -> None:
        runs = self.written
        if runs and runs[-1][1] + 1 == tag:  # the common case: in order
            runs[-1][1] = tag
            return
        at = bisect.bisect_left(runs, [tag, tag])
        runs.insert(at, [tag, tag])
        if at + 1 < len(runs) and runs[at + 1][0] == tag + 1:
            runs[at][1] = runs.pop(at + 1)[1]
        if at > 0 and runs[at - 1][1] + 1 == tag:
            runs[at - 1][1] = runs.pop(at)[1]
