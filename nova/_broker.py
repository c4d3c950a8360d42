"""The broker contract: the small surface every backend implements.

Everything above it (priority, delay, retries, batching, codecs, recording)
lives once, in the engine. A backend only moves opaque messages:

    broker.publish([Message(...), ...])        # returns once the broker holds them all
    sub = await broker.subscribe(topics, group=..., window=...)
    async for delivery in sub:                # one stream over all topics
        ...; await delivery.ack()             # or await delivery.nack()
    await sub.close()                         # unacked deliveries go back to the group
    await broker.close()

Topic names are made by the engine (``nova._naming``) and only use
``[A-Za-z0-9_-]``, so they are valid on Kafka, RabbitMQ and RocketMQ alike.
Backends create topics on demand (``ensure_topics``) or document how.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from nova._clock import Clock

__all__ = ["Broker", "DelayTierAware", "Delivery", "HeaderRuns", "InstantBacklog", "InstantDeliveries", "Message",
           "RevokedDeliveries",
           "PublishEach", "Subscription"]


class Message(NamedTuple):
    """One message to publish.

    ``headers`` carry nova's metadata (``nova-*`` keys, str values) apart from
    ``body``. ``key`` groups messages that must keep their order (nova uses the
    task id). ``deliver_at`` (epoch seconds) is only set when the broker
    declared ``native_delay_max`` and the delay fits in it: the broker must
    then keep the message invisible until that time.

    A NamedTuple rather than a frozen dataclass: one is made per task enqueued, and
    this is ~4x cheaper to make.
    """

    topic: str
    body: bytes
    headers: Mapping[str, str] = MappingProxyType({})
    key: str | None = None
    deliver_at: float | None = None


_new_tuple = tuple.__new__


def new_message(topic: str, body: bytes, headers: Mapping[str, str], key: str | None) -> Message:
    """``Message(topic, body, headers, key)`` for the enqueue hot path (without the
    NamedTuple's Python-level ``__new__``)."""
    return _new_tuple(Message, (topic, body, headers, key, None))


@runtime_checkable
class Delivery(Protocol):
    """A message handed to a subscription; it stays unacked until ack/nack."""

    @property
    def topic(self) -> str: ...

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def published_at(self) -> float:
        """Epoch seconds at which the broker accepted the message."""
        ...

    async def ack(self) -> None:
        """Done with it: the broker may forget it. Idempotent."""
        ...

    async def nack(self) -> None:
        """Give it back now for redelivery to the group (no delay). Idempotent."""
        ...


class Subscription(Protocol):
    """A consumer-group member reading some topics.

    At most ``window`` deliveries *per topic* are unacked at once; while a
    topic's window is full the backend keeps serving the other topics (no
    head-of-line blocking across topics) and keeps the group session alive
    however long a delivery stays unacked.
    """

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def backlog(self, topic: str) -> int:
        """Best-effort count of messages of ``topic`` ready in the broker and not
        yet delivered to this subscription (0 when unknown). The engine uses it
        to honour strict priority across topics."""
        ...

    async def close(self) -> None:
        """Leave the group. Unacked deliveries are redelivered to other members."""
        ...


class Broker(Protocol):
    """A message broker backend. See the module docstring."""

    # Read-only facts the engine reads (plain attributes satisfy them).
    @property
    def clock(self) -> Clock | None:
        """Clock the engine should use unless told otherwise (None: the system clock)."""
        ...

    @property
    def native_delay_max(self) -> timedelta | None:
        """Longest delay the broker keeps natively via ``Message.deliver_at`` (None: none)."""
        ...

    @property
    def max_message_bytes(self) -> int | None:
        """Largest body the broker accepts, in bytes (None: no limit of its own)."""
        ...

    @property
    def group_id(self) -> str | None:
        """Broker-level consumer group that overrides the TaskQueue's (None: use the TaskQueue's)."""
        ...

    @property
    def topic_prefix(self) -> str | None:
        """Broker-level topic prefix that overrides the TaskQueue's."""
        ...

    @property
    def delay_slots(self) -> tuple[int, timedelta] | None:
        """Broker-level delay_slots that override the TaskQueue's."""
        ...

    async def connect(self) -> None:
        """Open connections. Raises ConnectionError/AuthenticationError. Idempotent."""
        ...

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Make sure the topics exist (create them where the backend can)."""
        ...

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish and wait until the broker confirmed every message.

        Raises ``nova.EnqueueError`` (with the cause) if any was refused; then
        none, some or all may have been stored, never silently dropped.
        """
        ...

    async def subscribe(
        self, topics: Sequence[str], *, group: str, window: int
    ) -> Subscription:
        """Join consumer group ``group`` on ``topics``. Returns once consuming."""
        ...

    async def close(self) -> None:
        """Close producers and connections. Idempotent."""
        ...


@runtime_checkable
class PublishEach(Protocol):
    """Optional: a broker that tells, per message, which of one publish it confirmed.

    The engine publishes the tasks of concurrent ``enqueue`` calls together; with
    ``publish_each`` a refused message fails only the call it came from (without it,
    a failed publish fails every call in it). Returns one entry per message, in order:
    None when the broker confirmed it, else the exception that says why not (an
    ``EnqueueError``, or ``ClosedError`` when the broker was closed meanwhile). Raises,
    as ``publish`` does, what fails the whole call; then none, some or all may be stored.

        outcomes = await broker.publish_each([Message("t", b"1"), Message("t", b"2")])
        # [None, EnqueueError('...unroutable...')]: the first is stored, the second is not
    """

    async def publish_each(self, messages: Sequence[Message]) -> list[BaseException | None]: ...


@runtime_checkable
class DelayTierAware(Protocol):
    """Optional: a broker that wants to know the delay-tier topics and their hold times.

    The engine calls it once per TaskQueue, before any ``ensure_topics``, with
    every tier topic and its hold time in seconds. RabbitMQ with quorum queues
    makes each tier a TTL queue (the forwarder then finds tier messages due on
    arrival instead of holding them unacked); Kafka creates each tier with one
    partition.

    ``delay_hold_max``: the longest the forwarder may hold one tier message
    unacked (None: no limit). The router then never puts a message in a tier
    longer than that; a longer delay passes through the longest allowed tier
    as often as needed. RabbitMQ's classic tiers set it below the server's
    ``consumer_timeout``, which closes a channel holding a delivery longer.
    """

    @property
    def delay_hold_max(self) -> timedelta | None: ...

    def declare_delay_tiers(self, tiers: Mapping[str, float]) -> None: ...


@runtime_checkable
class InstantBacklog(Protocol):
    """Optional: a subscription that can usually answer ``backlog`` without awaiting.

    The single-task worker asks for the backlog of the levels above the one it
    holds on every pick (strict priority), so a synchronous answer saves a
    coroutine per task. ``backlog_nowait`` returns what ``backlog`` would, or
    None when the answer needs the broker (the worker then awaits ``backlog``).
    """

    def backlog_nowait(self, topic: str) -> int | None: ...


@runtime_checkable
class InstantDeliveries(Protocol):
    """Optional: a subscription that can hand over what it already holds without awaiting.

    After each delivery its iterator yields, the engine takes the ones that are
    ready with ``take_nowait`` (one call each instead of a coroutine step each).
    It returns what the iterator would yield next, or None when that needs a
    wait (or the subscription is closing); the engine then iterates again.
    """

    def take_nowait(self) -> Delivery | None: ...


@runtime_checkable
class RevokedDeliveries(Protocol):
    """Optional: a subscription whose broker can take back deliveries it already handed out.

    ``revoked(delivery)`` is True once the broker has put the delivery back to deliver it
    again (RabbitMQ: the channel it came on closed, e.g. across a broker restart). A holder
    (a worker's buffer, the batch aggregator, the delay forwarder) then neither runs nor
    settles it: running it would only run its task twice, and the copy the broker
    redelivers is the one to run.
    """

    def revoked(self, delivery: Delivery) -> bool: ...


@runtime_checkable
class HeaderRuns(Protocol):
    """Optional: a subscription that knows, cheaper than ``headers``, which deliveries have
    the same headers but their id (the tasks of one enqueue call, in a row).

    ``header_run(delivery)`` returns (headers, id): ``headers`` is one object for every
    delivery of a run (the engine reads them once per run and never changes them) and
    holds what the delivery's ``headers`` would, but for ``nova-id``, which is ``id``.
    None means: read ``delivery.headers``.
    """

    def header_run(self, delivery: Delivery) -> tuple[Mapping[str, str], str] | None: ...
