"""Durable, precise delays on brokers without per-message delay.

``delay_slots=(count, longest)`` sets the delay tiers: ``count`` tier topics
whose hold times are ``longest, longest/2, longest/4, ...`` (default
``(24, 1 hour)``: 1 h down to about 0.4 ms). Every message in one tier waits
the same time, so due times rise with publish order and holding the head of a
tier never makes a later message late. A delayed task hops from tier to tier,
each time into the largest tier not longer than what remains (a binary
cascade), and lands in its ready topic at its eta. Delays longer than
``longest`` pass through the longest tier as often as needed, so any delay
works. Precision does not depend on ``delay_slots``: the last hop holds until
the eta itself. More slots mean fewer hops per delay but more topics. A broker
may bound the hold (``DelayTierAware.delay_hold_max``): tiers longer than that
are left out of the cascade.

Brokers with native timers (``Broker.native_delay_max``, e.g. RocketMQ) get
the task straight into its ready topic with ``deliver_at`` when it fits, and
otherwise through tier 0 as a relay held ``native_delay_max`` at a time.

The forwarder (one per topic prefix, in every worker process, consumer group
``{prefix}__forwarder``) holds each tier message unacked until it is due,
re-publishes it, and acks only after the broker confirmed the re-publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from nova._broker import Broker, DelayTierAware, Delivery, Message, RevokedDeliveries, Subscription
from nova._clock import Clock
from nova._envelope import H
from nova._errors import ConfigurationError, ConfigurationTypeError
from nova._naming import delay_topic, forwarder_group

__all__ = ["DelayForwarder", "DelayTiers", "Router"]

log = logging.getLogger("nova.delay")


@dataclass(frozen=True, slots=True)
class DelayTiers:
    """The tier ladder made from ``delay_slots``."""

    count: int = 24
    longest: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int):
            raise ConfigurationTypeError(f"delay_slots count must be an int from 1 to 40, got {self.count!r}")
        if not 1 <= self.count <= 40:
            raise ConfigurationError(f"delay_slots count must be an int from 1 to 40, got {self.count!r}")
        if not isinstance(self.longest, timedelta):
            raise ConfigurationTypeError(f"delay_slots duration must be a positive timedelta, got {self.longest!r}")
        if self.longest <= timedelta(0):
            raise ConfigurationError("delay_slots duration must be a positive timedelta")
        if self.seconds(self.count - 1) < 0.0001:
            raise ConfigurationError(
                f"delay_slots={self.count, self.longest}: the smallest tier would be "
                f"{self.seconds(self.count - 1) * 1000:.4f} ms; use fewer slots or a longer duration "
                "(the smallest tier must be at least 0.1 ms)"
            )

    def seconds(self, tier: int) -> float:
        return float(self.longest.total_seconds() / (2**tier))

    def pick(self, remaining: float) -> int:
        """The largest tier not longer than ``remaining`` (the smallest tier if none fits)."""
        for tier in range(self.count):
            if self.seconds(tier) <= remaining:
                return tier
        return self.count - 1


class Router:
    """Decides where a message goes for a given eta: ready topic, native timer, or a tier."""

    def __init__(self, broker: Broker, clock: Clock, prefix: str, tiers: DelayTiers) -> None:
        self.broker = broker
        self.clock = clock
        self.prefix = prefix
        self.tiers = tiers
        self.tier_topics = [delay_topic(prefix, t) for t in range(tiers.count)]
        hold_max = broker.delay_hold_max if isinstance(broker, DelayTierAware) else None
        #: the longest tier a message may enter (see ``DelayTierAware.delay_hold_max``)
        self.hold_max = float("inf") if hold_max is None else hold_max.total_seconds()

    def route(self, target: str, body: bytes, headers: Mapping[str, str], key: str | None,
              eta: float | None) -> Message:
        now = self.clock.time()
        if eta is None or eta <= now:
            clean = {k: v for k, v in headers.items() if k not in (H.TARGET, H.HOLD_UNTIL)}
            return Message(target, body, clean, key)
        remaining = eta - now
        native = self.broker.native_delay_max
        out = dict(headers)
        out[H.TARGET] = target
        if native is not None:
            if remaining <= native.total_seconds():
                out.pop(H.TARGET)
                out.pop(H.HOLD_UNTIL, None)
                return Message(target, body, out, key, deliver_at=eta)
            hold = now + native.total_seconds()
            out[H.HOLD_UNTIL] = repr(hold)
            return Message(self.tier_topics[0], body, out, key, deliver_at=hold)
        tier = self.tiers.pick(min(remaining, self.hold_max))
        hold = min(now + self.tiers.seconds(tier), eta)
        out[H.HOLD_UNTIL] = repr(hold)
        return Message(self.tier_topics[tier], body, out, key)


class DelayForwarder:
    """Moves due messages out of the delay tiers (see module docstring)."""

    def __init__(self, router: Router, *, window: int = 256) -> None:
        self.router = router
        self.window = window
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: per tier topic: (hold until, arrival number, delivery), a heap
        self._lanes: dict[str, list[tuple[float, int, Delivery]]] = {}
        self._arrivals = itertools.count()
        self._wakeups: dict[str, asyncio.Event] = {}
        self._revoked: Callable[[Delivery], bool] = _never
        self.forwarded = 0

    async def start(self) -> None:
        topics = self.router.tier_topics
        await self.router.broker.ensure_topics(topics)
        self._sub = await self.router.broker.subscribe(
            topics, group=forwarder_group(self.router.prefix), window=self.window
        )
        if isinstance(self._sub, RevokedDeliveries):
            self._revoked = self._sub.revoked
        loop = asyncio.get_running_loop()
        for topic in topics:
            self._lanes[topic] = []
            self._wakeups[topic] = asyncio.Event()
            self._tasks.append(loop.create_task(self._lane(topic), name=f"nova-forward-{topic}"))
        self._tasks.append(loop.create_task(self._pull(self._sub), name="nova-forward-pull"))

    async def _pull(self, sub: Subscription) -> None:
        async for delivery in sub:
            lane = self._lanes.get(delivery.topic)
            if lane is None:  # not ours; give it back
                await delivery.nack()
                continue
            entry = (_hold_until(delivery), next(self._arrivals), delivery)
            heapq.heappush(lane, entry)
            if lane[0] is entry:  # due before what the lane waits for (or the lane was empty)
                self._wakeups[delivery.topic].set()

    async def _lane(self, topic: str) -> None:
        """Forward the tier's messages as they fall due, earliest first.

        A tier's messages mostly arrive in hold order, but not all: one that another
        forwarder held when it died (or that a broker restart gave back) comes again
        behind later ones. The lane is a heap on the hold time, and a wait for the head
        ends early when a message arrives, so such a message goes out at its own time.
        """
        lane, wakeup, clock = self._lanes[topic], self._wakeups[topic], self.router.clock
        while True:
            if not lane:
                wakeup.clear()
                await wakeup.wait()
                continue
            hold, _, head = lane[0]
            if self._gone(head):
                heapq.heappop(lane)
                continue
            if hold > clock.time():
                wakeup.clear()
                await _first(clock.sleep_until(hold), wakeup.wait())
                continue
            # Everything now due in this lane goes out in one confirmed batch.
            now = clock.time()
            batch: list[tuple[float, int, Delivery]] = []
            while lane and len(batch) < 500 and lane[0][0] <= now:
                entry = heapq.heappop(lane)
                if not self._gone(entry[2]):
                    batch.append(entry)
            if not batch:
                continue
            messages = [self._next_hop(d) for _, _, d in batch]
            try:
                await self.router.broker.publish(messages)
            except Exception as exc:  # noqa: BLE001 - keep the lane alive; the broker redelivers
                log.warning("delay forwarder could not re-publish %d messages: %r", len(batch), exc)
                for entry in batch:
                    heapq.heappush(lane, entry)
                await clock.sleep(1.0)
                continue
            for _, _, d in batch:
                await d.ack()
            self.forwarded += len(batch)

    def _gone(self, delivery: Delivery) -> bool:
        """The broker will deliver it again (to us or another forwarder): forwarding it here
        too would duplicate it. Kafka: a rebalance gave its partition to another member;
        RabbitMQ: the channel it came on closed."""
        return getattr(delivery, "owned", True) is False or self._revoked(delivery)

    def _next_hop(self, delivery: Delivery) -> Message:
        headers = delivery.headers
        target = headers.get(H.TARGET)
        eta_ms = headers.get(H.ETA)
        if target is None or eta_ms is None:  # malformed: deliver it rather than lose it
            log.error("delay-tier message without nova-target/nova-eta on %s", delivery.topic)
            target = target or headers.get(H.QUEUE, "default")
        eta = int(eta_ms) / 1000 if eta_ms is not None else None
        return self.router.route(target, delivery.body, headers, headers.get(H.ID), eta)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._sub is not None:
            await self._sub.close()
            self._sub = None


async def _first(*waits: Awaitable[object]) -> None:
    """Return when the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _never(delivery: Delivery) -> bool:
    return False


def _hold_until(delivery: Delivery) -> float:
    raw = delivery.headers.get(H.HOLD_UNTIL)
    try:
        return float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0
