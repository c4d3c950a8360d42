"""SimBroker: an in-memory broker with real queue semantics on a virtual clock.

    clock = VirtualClock()
    broker = SimBroker(clock=clock, seed=0)
    queue = nova.TaskQueue(broker)

Semantics (the same contract the real adapters implement):

* one durable FIFO queue per topic; every subscriber of a topic competes for
  its messages (like RabbitMQ; groups are recorded, not fanned out);
* a delivery stays unacked until ``ack``; ``nack`` and ``Subscription.close``
  put unacked messages back at the head of their topic at once;
* a crashed subscriber (``crash``) gives its unacked messages back only after
  ``session_timeout`` of virtual time, like a Kafka consumer that stopped
  heartbeating;
* at most ``window`` unacked deliveries per topic per subscriber;
* a publish takes ``publish_latency`` of clock time (0 by default), like a broker's
  round trip, before the broker holds its messages;
* with ``native_delay_max`` set, ``Message.deliver_at`` keeps a message
  invisible until then (RocketMQ-like timers); by default it is None, so the
  engine's delay-tier cascade is what runs;
* with ``delay_hold_max`` set, the engine puts no message in a delay tier
  longer than that (like RabbitMQ's classic tiers, held under its
  ``consumer_timeout``).

Fault injection for tests and fuzzing: ``fail_publishes(n)`` (whole calls),
``refuse_message(n)`` (the n-th message from now on), ``duplicate_deliveries(n)``,
``crash(subscription)``, and the rates given to the constructor. Inspection:
``depth(topic)``, ``topics()``, the counters ``published`` (messages), ``publishes``
(calls) and ``delivered``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from nova._broker import Message
from nova._clock import Clock, SystemClock
from nova._errors import ClosedError, ConfigurationError, EnqueueError, ValidationError
from nova.sim._clock import VirtualClock

__all__ = ["SimBroker"]


@dataclass(slots=True)
class _Record:
    seq: int
    topic: str
    body: bytes
    headers: Mapping[str, str]
    key: str | None
    published_at: float


@dataclass(slots=True)
class _Topic:
    ready: deque[_Record] = field(default_factory=deque)
    delayed: list[tuple[float, int, _Record]] = field(default_factory=list)
    subscribers: list[SimSubscription] = field(default_factory=list)
    turn: int = 0


class SimDelivery:
    """One delivery of a record to one subscription."""

    __slots__ = ("_done", "_record", "_sub")

    def __init__(self, record: _Record, sub: SimSubscription) -> None:
        self._record = record
        self._sub = sub
        self._done = False

    @property
    def topic(self) -> str:
        return self._record.topic

    @property
    def body(self) -> bytes:
        return self._record.body

    @property
    def headers(self) -> Mapping[str, str]:
        return self._record.headers

    @property
    def published_at(self) -> float:
        return self._record.published_at

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            self._sub._settle(self, requeue=False)

    async def nack(self) -> None:
        if not self._done:
            self._done = True
            self._sub._settle(self, requeue=True)


class SimSubscription:
    """A subscriber of SimBroker topics (see ``SimBroker.subscribe``)."""

    def __init__(self, broker: SimBroker, topics: Sequence[str], group: str, window: int) -> None:
        self.broker = broker
        self.topics = list(dict.fromkeys(topics))
        self.group = group
        self.window = window
        self.inflight: dict[str, int] = dict.fromkeys(self.topics, 0)
        self.unacked: dict[int, SimDelivery] = {}
        self._pending: deque[SimDelivery] = deque()
        self._unyielded: dict[str, int] = dict.fromkeys(self.topics, 0)
        self._arrived = asyncio.Event()
        self.alive = True

    def __aiter__(self) -> AsyncIterator[SimDelivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SimDelivery]:
        while self.alive:
            item = self.take_nowait()
            if item is not None:
                yield item
                continue
            self._arrived.clear()
            await self._arrived.wait()

    def take_nowait(self) -> SimDelivery | None:
        """The next pushed delivery, if there is one (see nova._broker.InstantDeliveries)."""
        pending = self._pending
        while self.alive and pending:
            item = pending.popleft()
            self._unyielded[item.topic] -= 1
            if not item._done:
                return item
        return None

    def _push(self, record: _Record) -> None:
        delivery = SimDelivery(record, self)
        self.inflight[record.topic] += 1
        self.unacked[id(delivery)] = delivery
        self._pending.append(delivery)
        self._unyielded[record.topic] += 1
        self._arrived.set()

    def _settle(self, delivery: SimDelivery, *, requeue: bool) -> None:
        if self.unacked.pop(id(delivery), None) is None:
            return
        topic = delivery.topic
        self.inflight[topic] -= 1
        if requeue:
            self.broker._requeue([delivery._record])
        self.broker._pump(topic)

    def backlog_nowait(self, topic: str) -> int:
        """Ready in the topic, plus delivered to this subscription but not yet iterated."""
        state = self.broker._topics.get(topic)
        return (len(state.ready) if state else 0) + self._unyielded.get(topic, 0)

    async def backlog(self, topic: str) -> int:
        """Ready in the topic, plus delivered to this subscription but not yet iterated."""
        return self.backlog_nowait(topic)

    async def close(self) -> None:
        """Leave: unacked deliveries go back to the head of their topics now."""
        if not self.alive:
            return
        self.broker._requeue(self._abandon())
        for topic in self.topics:
            self.broker._pump(topic)

    def _abandon(self) -> list[_Record]:
        """Leave the topics; return the records of every unacked delivery (their acks now do nothing)."""
        self._detach()
        records = [d._record for d in self.unacked.values()]
        for d in self.unacked.values():
            d._done = True
        self.unacked.clear()
        return records

    def _detach(self) -> None:
        self.alive = False
        self._arrived.set()
        for topic in self.topics:
            self.broker._topics[topic].subscribers.remove(self)


class SimBroker:
    """In-memory broker driven by a VirtualClock (see module docstring)."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        seed: int = 0,
        native_delay_max: timedelta | None = None,
        delay_hold_max: timedelta | None = None,
        session_timeout: timedelta = timedelta(seconds=10),
        max_message_bytes: int | None = 8 * 1024 * 1024,
        publish_failure_rate: float = 0.0,
        duplicate_rate: float = 0.0,
        publish_latency: timedelta = timedelta(0),
        group_id: str | None = None,
        topic_prefix: str | None = None,
        delay_slots: tuple[int, timedelta] | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else VirtualClock()
        self.native_delay_max = native_delay_max
        self.delay_hold_max = delay_hold_max
        #: the delay-tier topics and hold times the engine declared (``declare_delay_tiers``)
        self.delay_tiers: dict[str, float] = {}
        self.max_message_bytes = max_message_bytes
        self.group_id = group_id
        self.topic_prefix = topic_prefix
        self.delay_slots = delay_slots
        self.session_timeout = session_timeout
        if not isinstance(publish_latency, timedelta) or publish_latency < timedelta(0):
            raise ConfigurationError(f"publish_latency must be a timedelta >= 0, not {publish_latency!r}")
        self.publish_latency = publish_latency
        self._rng = random.Random(seed)
        self._publish_failure_rate = publish_failure_rate
        self._duplicate_rate = duplicate_rate
        self._fail_next = 0
        self._offered = 0  # messages offered to publish so far (what refuse_message counts)
        self._refuse: set[int] = set()
        self._duplicate_next = 0
        self._topics: dict[str, _Topic] = {}
        self._seq = itertools.count()
        self._closed = False
        self._timer: asyncio.Task[None] | None = None
        self._timer_wakeup: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.published = 0
        self.publishes = 0  # publish / publish_each calls
        self.delivered = 0

    def __repr__(self) -> str:
        return f"SimBroker(topics={len(self._topics)}, clock={self.clock!r})"

    def declare_delay_tiers(self, tiers: Mapping[str, float]) -> None:
        """Kept for inspection: a SimBroker's tiers are ordinary topics."""
        self.delay_tiers.update(tiers)

    @classmethod
    def from_url(cls, url: str) -> SimBroker:
        """``sim://`` runs on the system clock; ``sim://?clock=virtual&seed=1`` on a VirtualClock.

            broker = SimBroker.from_url("sim://?clock=virtual&seed=1")
        """
        parts = urlsplit(url)
        if parts.scheme != "sim":
            raise ConfigurationError(f"not a sim:// URL: {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"clock", "seed"}
        if unknown:
            raise ConfigurationError(f"unknown sim URL option(s): {', '.join(sorted(unknown))} (use clock, seed)")
        if query.get("clock", "system") not in ("system", "virtual"):
            raise ConfigurationError(f"sim URL option clock must be system or virtual, not {query['clock']!r}")
        try:
            seed = int(query.get("seed", "0"))
        except ValueError:
            raise ConfigurationError(f"sim URL option seed must be an integer, not {query['seed']!r}") from None
        clock: Clock = VirtualClock() if query.get("clock") == "virtual" else SystemClock()
        return cls(clock=clock, seed=seed)

    # -- contract -------------------------------------------------------------
    async def connect(self) -> None:
        if self._closed:
            raise ClosedError("this SimBroker was closed")

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        for name in topics:
            self._topic(name)

    async def publish(self, messages: Sequence[Message]) -> None:
        """Store every message; raises the first refusal (the others are stored)."""
        for outcome in await self.publish_each(messages):
            if outcome is not None:
                raise outcome

    async def publish_each(self, messages: Sequence[Message]) -> list[EnqueueError | None]:
        """Store each message it can; one outcome per message (see ``nova._broker.PublishEach``).

        A message is refused (EnqueueError, not stored) when it is over
        ``max_message_bytes``, has a ``deliver_at`` without ``native_delay_max``, or was
        marked by ``refuse_message``; ``fail_publishes`` refuses the whole call instead.
        With ``publish_latency`` the messages are stored that long after the call (on the clock).
        """
        if self._closed:
            raise ClosedError("this SimBroker was closed")
        self.publishes += 1
        if self.publish_latency:
            await self.clock.sleep(self.publish_latency.total_seconds())
            if self._closed:
                raise ClosedError("this SimBroker was closed while publishing")
        if self._fail_next > 0 or (
            self._publish_failure_rate and self._rng.random() < self._publish_failure_rate
        ):
            self._fail_next = max(self._fail_next - 1, 0)
            raise EnqueueError("SimBroker refused the publish (injected fault)")
        now = self.clock.time()
        touched: set[str] = set()
        outcomes: list[EnqueueError | None] = []
        stored = 0
        for m in messages:
            self._offered += 1
            refusal = self._refusal(m, now)
            outcomes.append(refusal)
            if refusal is not None:
                continue
            stored += 1
            record = _Record(next(self._seq), m.topic, m.body, m.headers, m.key, now)
            state = self._topic(m.topic)
            if m.deliver_at is not None and m.deliver_at > now:
                heapq.heappush(state.delayed, (m.deliver_at, record.seq, record))
                self._wake_timer()
            else:
                state.ready.append(record)
                touched.add(m.topic)
        self.published += stored
        for topic in touched:
            self._pump(topic)
        return outcomes

    def _refusal(self, m: Message, now: float) -> EnqueueError | None:
        if self._refuse and self._offered in self._refuse:
            self._refuse.discard(self._offered)
            return EnqueueError(f"SimBroker refused message {self._offered} (injected fault)")
        if self.max_message_bytes is not None and len(m.body) > self.max_message_bytes:
            return EnqueueError(f"message of {len(m.body)} bytes is over the broker limit")
        if m.deliver_at is not None and m.deliver_at > now and self.native_delay_max is None:
            return EnqueueError("this SimBroker has no native delay (native_delay_max is None)")
        return None

    async def subscribe(self, topics: Sequence[str], *, group: str, window: int) -> SimSubscription:
        if self._closed:
            raise ClosedError("this SimBroker was closed")
        if window < 1:
            raise ValidationError(f"window must be an int >= 1, not {window!r}")
        sub = SimSubscription(self, topics, group, window)
        for name in sub.topics:
            self._topic(name).subscribers.append(sub)
        for name in sub.topics:
            self._pump(name)
        return sub

    async def close(self) -> None:
        self._closed = True
        for state in self._topics.values():
            for sub in list(state.subscribers):
                await sub.close()
        for task in [self._timer, *self._background]:
            if task is not None:
                task.cancel()

    # -- fault injection ----------------------------------------------------------
    def fail_publishes(self, n: int = 1) -> None:
        """Make the next ``n`` publish calls raise EnqueueError (nothing stored)."""
        self._fail_next += n

    def refuse_message(self, n: int = 1) -> None:
        """Refuse the ``n``-th message published from now on (1: the next one), counted across
        publish calls: that message is not stored and its outcome is an EnqueueError, while
        the others of its call are stored. Call again to refuse more than one.

            broker.refuse_message(2)   # of the next two messages, only the first is stored
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValidationError(f"n must be an int >= 1, not {n!r}")
        self._refuse.add(self._offered + n)

    def duplicate_deliveries(self, n: int = 1) -> None:
        """Deliver each of the next ``n`` records twice (at-least-once duplicates)."""
        self._duplicate_next += n

    def crash(self, subscription: SimSubscription) -> None:
        """Kill a subscriber without a goodbye: its unacked messages come back after
        ``session_timeout`` of virtual time; its pending acks are ignored."""
        if not subscription.alive:
            return
        records = subscription._abandon()

        async def give_back() -> None:
            await self.clock.sleep(self.session_timeout.total_seconds())
            self._requeue(records)
            for topic in {r.topic for r in records}:
                self._pump(topic)

        task = asyncio.get_running_loop().create_task(give_back())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def subscriptions(self) -> list[SimSubscription]:
        """Every live subscription (to pick one to crash)."""
        out: dict[int, SimSubscription] = {}
        for state in self._topics.values():
            for sub in state.subscribers:
                out[id(sub)] = sub
        return list(out.values())

    # -- inspection -----------------------------------------------------------------
    def topics(self) -> list[str]:
        return sorted(self._topics)

    def depth(self, topic: str) -> int:
        """Messages the topic holds: ready + delayed + delivered-but-unacked."""
        state = self._topics.get(topic)
        if state is None:
            return 0
        unacked = sum(
            1 for sub in self.subscriptions() for d in sub.unacked.values() if d.topic == topic
        )
        return len(state.ready) + len(state.delayed) + unacked

    # -- internals ------------------------------------------------------------------
    def _topic(self, name: str) -> _Topic:
        state = self._topics.get(name)
        if state is None:
            state = self._topics[name] = _Topic()
        return state

    def _requeue(self, records: list[_Record]) -> None:
        for record in sorted(records, key=lambda r: r.seq, reverse=True):
            self._topic(record.topic).ready.appendleft(record)

    def _pump(self, topic: str) -> None:
        state = self._topics.get(topic)
        if state is None:
            return
        subs = state.subscribers
        while state.ready and subs:
            n = len(subs)
            for i in range(n):
                sub = subs[(state.turn + i) % n]
                if sub.inflight[topic] < sub.window:
                    state.turn = (state.turn + i + 1) % n
                    break
            else:
                return
            record = state.ready.popleft()
            sub._push(record)
            self.delivered += 1
            if self._duplicate_next > 0 or (
                self._duplicate_rate and self._rng.random() < self._duplicate_rate
            ):
                self._duplicate_next = max(self._duplicate_next - 1, 0)
                copy = _Record(next(self._seq), record.topic, record.body, record.headers,
                               record.key, record.published_at)
                state.ready.append(copy)

    def _wake_timer(self) -> None:
        if self._timer is None:
            self._timer_wakeup = asyncio.Event()
            self._timer = asyncio.get_running_loop().create_task(self._run_timers())
        elif self._timer_wakeup is not None:
            self._timer_wakeup.set()

    async def _run_timers(self) -> None:
        assert self._timer_wakeup is not None
        while True:
            nxt = min((s.delayed[0][0] for s in self._topics.values() if s.delayed), default=None)
            self._timer_wakeup.clear()
            if nxt is None:
                await self._timer_wakeup.wait()
                continue
            sleeper = asyncio.ensure_future(self.clock.sleep_until(nxt))
            waker = asyncio.ensure_future(self._timer_wakeup.wait())
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            waker.cancel()
            now = self.clock.time()
            for name, state in self._topics.items():
                moved = False
                while state.delayed and state.delayed[0][0] <= now:
                    state.ready.append(heapq.heappop(state.delayed)[2])
                    moved = True
                if moved:
                    self._pump(name)
