"""RabbitMQ backend on aio-pika (``pip install 'nova-taskqueue[rabbitmq]'``).

    broker = RabbitMQBroker("amqp://nova:secret@127.0.0.1:5672/", exchange="myapp")
    tq = TaskQueue(broker)

    broker = RabbitMQBroker.from_url(
        "amqps://nova:secret@127.0.0.1:5671/?exchange=myapp&topic_prefix=myapp",
        tls=ssl.create_default_context(cafile="ca.pem"),
    )

    # a cluster: replicated queues, and the connection moves to another node
    broker = RabbitMQBroker("amqp://nova:secret@10.0.0.1,10.0.0.2,10.0.0.3/?queue_type=quorum")

How the contract maps onto AMQP:

- every topic is a durable queue of the same name (classic, or quorum with
  ``queue_type="quorum"``: below), bound to the
  durable direct exchange ``exchange`` (default ``"nova"``, a real named
  exchange) with routing key = topic. Producers and consumers both declare
  what they use, so a task published before any worker existed is kept;
- publishing uses its own channel with publisher confirms, ``mandatory`` and
  persistent messages: ``publish`` returns once every message is confirmed,
  and an unroutable or nacked message raises ``EnqueueError``. While the
  connection is being re-established, a publish waits for it (up to
  ``publish_timeout``) and resends what was not confirmed (at least once);
- consumer groups: one queue per topic is shared by every group; a group's
  members are the queue's competing consumers. (nova never points two groups
  at one topic: workers and the delay forwarder read different topics.)
- a subscription opens one channel per topic with a per-consumer prefetch of
  ``window``, so a full topic never blocks the others; acks are manual and a
  delivery may stay unacked for minutes. Settles are written once per
  event-loop turn and a run of consecutive settled tags goes out as one
  ``basic.ack(multiple=True)``, which never covers a delivery still being
  handled (``_Settler``). ``backlog`` answers from the consumer's credit and
  asks RabbitMQ (a passive declare) only when that cannot decide (``_Feed``).
  Beyond the server's ``consumer_timeout`` (RabbitMQ 3.10 default: 30 min) the
  broker closes the channel and redelivers; the adapter reopens it, so work
  goes on, but the task may run twice;
- the connection is robust: after a broker restart it reconnects, re-declares
  the topology and resumes the consumers. Deliveries received before the loss
  are redelivered by the broker, so the subscription reports them revoked
  (``revoked``) and a worker drops those it has not started; acking one whose
  handler already ran only logs a warning (the message is not lost, and its
  task may run again);
- delay tiers (``{prefix}__delayNN``) of classic queues are ordinary durable
  queues held by the engine's forwarder, which acks a tier message only once its
  next hop is confirmed. A tier is never longer than ``CLASSIC_HOLD_MAX`` (15 min,
  half the default ``consumer_timeout``; a longer delay passes through it as often
  as needed), so no held delivery outlives the server's timeout. They are not TTL
  queues: a classic queue dead-letters at most once, and a message expiring while
  the node stops is lost. With quorum queues each tier is a TTL queue that
  dead-letters at least once into the queue the forwarder reads
  (``declare_delay_tiers``, below), so messages wait inside RabbitMQ and the
  forwarder's hold is ~0.

``prefetch=(count, size)``: RabbitMQ ignores a prefetch size, so it must be 0.
``count`` is exposed as ``prefetch_count`` (a default window for engines that
want one); the per-topic limit of a subscription is always its ``window``.

Quorum queues (``queue_type="quorum"``, or ``?queue_type=quorum`` in the URL).
Every queue nova declares is then a quorum queue: ready and dead-letter topics,
delay tiers, and a TTL tier's ``_due`` queue. A quorum queue is replicated (Raft)
on the cluster's nodes, and a publish is confirmed once a majority of them wrote
it to disk, so a confirmed task survives the loss of a minority of nodes (a
classic queue lives on one node; while that node is down its queue cannot be
used). A TTL tier dead-letters into its ``_due`` queue at least once
(``x-dead-letter-strategy: at-least-once``, which RabbitMQ applies only with
``x-overflow: reject-publish``; nova sets no length limit, so nothing is rejected):
the tier keeps each expired message until the ``_due`` queue confirmed it, so a
node failure then may duplicate a delayed task, never lose it. On RabbitMQ 3.10 the
tier's dead-letter worker resends what a dead leader never confirmed only after
``dead_letter_worker_publisher_confirm_timeout`` (3 min by default; a harness cluster
had delayed tasks 3 to 6 min late after a node's loss, and 20 s late with 10 s): on
a cluster set ``[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 10000}]}].``
in advanced.config. What else changes:

- no per-message priority (``x-max-priority`` is refused); nova never uses it:
  each priority level is a topic of its own;
- a publish is slower (written to a majority of disks before the confirm), and
  each queue is a Raft group with a log on every node: nova declares
  ``6 + 2 * delay tiers`` queues per topic prefix and queue name (54 with the
  default 24 tiers). On RabbitMQ 3.10 each also holds file handles on every node
  (about 3 here); a node with 1024 open files stopped taking connections after
  ~300 of them, so raise the open-files limit of a cluster's nodes;
- delivery limits: a quorum queue counts each message's returns
  (``x-delivery-count``, kept out of a task's headers). RabbitMQ 3.10 sets no
  limit; 4.0 and later default to 20, after which a message is dropped (nova's
  ready queues have no dead-letter target), e.g. a task whose worker was killed
  20 times. nova declares no ``x-delivery-limit`` (with -1, 3.10 drops a message at
  its first return); raise
  the limit with a policy where workers may die repeatedly on one task;
- a queue's type cannot change: a queue declared classic (by an earlier nova, or
  without ``queue_type``) is refused with a ``ConfigurationError`` naming it
  (RabbitMQ answers 406 PRECONDITION_FAILED); drain and delete it, or keep
  ``queue_type`` as it was. The same the other way round;
- ``backlog``'s local proof (``_Feed``) holds as for a classic queue, except that a
  quorum queue applies a settle once the Raft log committed it: for that moment a
  message may wait ready while ``backlog`` says 0, as one on the wire to us does.

Several nodes: ``url`` may be a list of URLs or one URL with a comma list of hosts
(``amqp://u:p@h1:5672,h2:5672/``), the nodes of one cluster (same credentials,
vhost and options). ``connect`` tries them in the given order and keeps the first
that answers (a refusal of the credentials or of TLS ends the search: the next
node would refuse them too). When the connection is lost, each reconnection
attempt, every ``reconnect_interval``, goes to the next node round the list, and
the channels, topology and consumers are restored there as after a restart:
publishes resend what was not confirmed, and what a worker had received but not
acked is redelivered by RabbitMQ (a task may run twice). A publish also resends,
on a new channel, what a live connection neither confirmed within ``CONFIRM_WAIT``
nor stopped nacking: RabbitMQ 3.10 can leave a channel's quorum-queue client stuck
after the queue's leader died (``publish``). ``current_node`` says
which node the connection is on. Use quorum queues with several nodes. Every
client that lists the nodes in the same order connects to the first; list them
in another order to spread clients (a quorum queue's leader is placed on the
node of the client that declared it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from nova._broker import Message
from nova._errors import (
    AuthenticationError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConnectionError,  # noqa: A004
    EnqueueError,
    NovaError,
)
from nova.brokers._common import delay_slots as _delay_slots
from nova.brokers._common import duration, optional_group, optional_prefix, quietly, raise_refusals
from nova.brokers.rabbitmq import _aiormq_internals as aiormq_internals
from nova.brokers.rabbitmq._aiormq_internals import failover_connection
from nova.brokers.rabbitmq._config import parse_nodes
from nova.brokers.rabbitmq._config import queue_type as _queue_type
from nova.brokers.rabbitmq._config import url_option as _url_option
from nova.brokers.rabbitmq._errors import failure, mismatch_fix, translate
from nova.brokers.rabbitmq._subscription import PUBLISHED_AT_HEADER, _RabbitSubscription

if TYPE_CHECKING:
    import aio_pika
    import aio_pika.abc

    from nova._clock import Clock

__all__ = ["RabbitMQBroker"]

log = logging.getLogger("nova.rabbitmq")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: RabbitMQ 3.x default ``max_message_size``.
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
#: Longest a publish waits for RabbitMQ's confirms on a live connection before it resends
#: the unconfirmed messages on a new channel (see ``publish``).
CONFIRM_WAIT = 10.0
#: Pause before a nacked message is sent again; after this many nacks in a row, on a new channel.
NACK_PAUSE = 0.5
NACKS_BEFORE_NEW_CHANNEL = 3
#: Longest a classic delay tier holds a message: the forwarder holds each one unacked that
#: long, and RabbitMQ closes a channel whose delivery stays unacked past ``consumer_timeout``
#: (30 min by default).
CLASSIC_HOLD_MAX = timedelta(minutes=15)


def _aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("RabbitMQBroker needs aio-pika: pip install 'nova-taskqueue[rabbitmq]'") from exc
    return aio_pika


class RabbitMQBroker:
    """RabbitMQ behind nova's broker contract.

    >>> broker = RabbitMQBroker("amqp://127.0.0.1:5672/", auth=("nova", "s3cret/p@ss"))
    >>> broker
    RabbitMQBroker('amqp://nova:***@127.0.0.1:5672/', exchange='nova')

    ``url`` may name several nodes of one cluster: a list of URLs, or one URL with
    a comma list of hosts. The connection goes to the first that answers and, when
    its node is lost, on to the next (round robin):

    >>> RabbitMQBroker(["amqp://u:p@10.0.0.1:5672/", "amqp://u:p@10.0.0.2:5672/"], queue_type="quorum")
    RabbitMQBroker('amqp://u:***@10.0.0.1:5672,10.0.0.2:5672/', exchange='nova', queue_type='quorum')

    Options:
    ``queue_type`` (``"classic"``, the default, or ``"quorum"``: replicated queues for
    a cluster; also ``?queue_type=quorum`` in the URL; see the package docstring),
    ``exchange`` (durable direct exchange every topic is bound to; ``"nova"`` by default),
    ``topic_prefix`` / ``group_id`` / ``delay_slots`` (override the TaskQueue's);
    ``exchange``, ``topic_prefix`` and ``group_id`` may also be query parameters of the URL,
    as ``queue_type`` (a keyword that contradicts the URL is an error),
    ``prefetch=(count, 0)``, ``auth=(user, password)`` (replaces the URL's; escaped
    for you), ``tls`` (an ``ssl.SSLContext``; implies amqps, port 5671 by default).
    Durations are ``timedelta`` (a number is seconds): ``connect_timeout`` (first
    connection incl. TLS and login), ``publish_timeout`` (how long a publish may wait
    for confirms and reconnection), ``reconnect_interval`` (between reconnection attempts).

    >>> RabbitMQBroker(publish_timeout=timedelta(minutes=1), reconnect_interval=0.5).reconnect_interval
    datetime.timedelta(microseconds=500000)
    """

    clock: Clock | None = None
    native_delay_max: timedelta | None = None

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        exchange: str | None = None,
        queue_type: str | None = None,
        topic_prefix: str | None = None,
        group_id: str | None = None,
        prefetch: tuple[int, int] = (10, 0),
        auth: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        delay_slots: tuple[int, timedelta] | None = None,
        connect_timeout: timedelta | float = timedelta(seconds=10),
        publish_timeout: timedelta | float = timedelta(seconds=30),
        reconnect_interval: timedelta | float = timedelta(seconds=1),
    ) -> None:
        _aio_pika()
        nodes = parse_nodes(url, auth=auth, tls=tls)
        if (
            not isinstance(prefetch, tuple)
            or len(prefetch) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in prefetch)
        ):
            raise ConfigurationError("prefetch must be a (count, size) tuple of ints, e.g. (10, 0)")
        if prefetch[1] != 0:
            raise ConfigurationError(
                f"prefetch size {prefetch[1]} is not supported: RabbitMQ does not implement "
                "basic.qos prefetch-size; use prefetch=(count, 0)"
            )
        if prefetch[0] < 1:
            raise ConfigurationError(f"prefetch count must be at least 1, got {prefetch[0]}")
        # The URL may carry these too (``?exchange=shop``): a URL that works with from_url
        # must not have them silently ignored here.
        exchange = _url_option("exchange", exchange, nodes.options)
        exchange = "nova" if exchange is None else exchange
        topic_prefix = _url_option("topic_prefix", topic_prefix, nodes.options)
        group_id = _url_option("group_id", group_id, nodes.options)
        if not isinstance(exchange, str) or not exchange or exchange.startswith("amq."):
            raise ConfigurationError(
                f"exchange {exchange!r} is invalid: use a non-empty name not starting with 'amq.' "
                "(the default exchange '' cannot be bound)"
            )
        #: ``"classic"`` or ``"quorum"``: the type of every queue this broker declares
        self.queue_type = _queue_type(queue_type, nodes.options)
        #: classic tiers are held by the forwarder, under ``consumer_timeout``; quorum tiers are TTL queues
        self.delay_hold_max: timedelta | None = CLASSIC_HOLD_MAX if self.queue_type == "classic" else None
        # every message nova builds from a client's text is scrubbed of these (_errors.translate)
        self._secrets = (nodes.password,)
        self._nodes = nodes
        self._display_url = nodes.display
        self._user = nodes.user
        self._tls = nodes.tls
        self.exchange = exchange
        self.topic_prefix = optional_prefix(topic_prefix)
        self.group_id = optional_group(group_id)
        self.delay_slots = _delay_slots(delay_slots)
        self.prefetch_count = prefetch[0]
        self.max_message_bytes: int | None = MAX_MESSAGE_BYTES
        self.connect_timeout = duration("connect_timeout", connect_timeout)
        self.publish_timeout = duration("publish_timeout", publish_timeout)
        self.reconnect_interval = duration("reconnect_interval", reconnect_interval)

        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._publish_channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._publish_exchange: aio_pika.abc.AbstractExchange | None = None
        self._topology_channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._topology_lock = asyncio.Lock()
        self._renew_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._declared: set[str] = set()
        self._delay_ttls: dict[str, float] = {}
        self._subscriptions: set[_RabbitSubscription] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQBroker:
        """Build a broker from one URL (the ``amqp://`` scheme table's entry point; the
        constructor reads the same URL): ``exchange``, ``topic_prefix``, ``group_id`` and
        ``queue_type`` may be given as query parameters, several nodes as a comma list of hosts.

        >>> RabbitMQBroker.from_url("amqp://u:p@127.0.0.1/?exchange=myapp&topic_prefix=app").exchange
        'myapp'
        >>> RabbitMQBroker.from_url("amqp://u:p@10.0.0.1,10.0.0.2:5673/?queue_type=quorum")
        RabbitMQBroker('amqp://u:***@10.0.0.1:5672,10.0.0.2:5673/', exchange='nova', queue_type='quorum')
        """
        return cls(url, **options)

    def __repr__(self) -> str:
        kind = "" if self.queue_type == "classic" else f", queue_type={self.queue_type!r}"
        return f"RabbitMQBroker({self._display_url!r}, exchange={self.exchange!r}{kind})"

    @property
    def current_node(self) -> str | None:
        """``host:port`` of the node the connection is on, or is trying while it
        reconnects (None before ``connect`` and after ``close``).

        >>> RabbitMQBroker("amqp://u:p@10.0.0.1,10.0.0.2/").current_node is None
        True
        """
        connection = self._connection
        if connection is None or self._closed:
            return None
        url = cast("aio_pika.RobustConnection", connection).url
        host = url.host or ""
        return f"[{host}]:{url.port}" if ":" in host else f"{host}:{url.port}"

    # -- connection -----------------------------------------------------------

    async def connect(self) -> None:
        """Open the (robust) connection and the publishing channel. Idempotent."""
        if self._closed:
            raise ClosedError("this RabbitMQBroker was closed; create a new one")
        async with self._connect_lock:
            if self._connection is not None:
                return
            connection = await self._open_connection()
            try:
                publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._publish_exchange = await self._declare_exchange(publish_channel)
                topology_channel = await connection.channel(publisher_confirms=False)
            except Exception as exc:
                await quietly(connection.close(), log, "closing the RabbitMQ connection")
                raise self._error(exc, "opening channels") from exc
            self._connection = connection
            self._publish_channel = publish_channel
            self._topology_channel = topology_channel

    async def _open_connection(self) -> aio_pika.abc.AbstractRobustConnection:
        """A robust connection to the first node that answers, in the order given.

        A node that refuses the credentials or the TLS handshake ends the search:
        the next would refuse them too. Once connected, a lost connection is
        re-established on the next node (``failover_connection``).
        """
        urls = self._nodes.urls
        timeout = self.connect_timeout.total_seconds()
        for first, url in enumerate(urls):
            connection = failover_connection(
                urls,
                first,
                ssl_context=self._tls,
                reconnect_interval=self.reconnect_interval.total_seconds(),
                client_properties={"connection_name": "nova"},
            )
            try:
                await asyncio.wait_for(connection.connect(timeout=timeout), timeout + 1)
            except BaseException as exc:
                await quietly(connection.close(), log, "closing a RabbitMQ connection that failed to open")
                if isinstance(exc, asyncio.CancelledError):
                    raise
                error = self._error(exc, "connecting", connecting=True)
                if isinstance(error, AuthenticationError) or first == len(urls) - 1:
                    raise error from exc
                log.warning("cannot connect to RabbitMQ node %s (%s); trying the next one",
                            self._nodes.node(url), error)
                continue
            return connection
        raise AssertionError("the last node's failure is raised")  # pragma: no cover

    async def _declare_exchange(self, channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractExchange:
        aio_pika = _aio_pika()
        return await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)

    def _error(
        self, exc: BaseException, doing: str, *, topic: str = "", queue: str = "", connecting: bool = False
    ) -> NovaError:
        """``exc`` translated by the adapter's table (``_errors``), with this broker's particulars."""
        return translate(
            exc,
            secrets=self._secrets,
            connecting=connecting,
            doing=doing,
            topic=topic,
            queue=queue,
            fix=mismatch_fix(exc, queue, self.queue_type),
            where=self._display_url,
            user=self._user,
            exchange=self.exchange,
            timeout=self.connect_timeout.total_seconds(),
        )

    def _require_open(self) -> aio_pika.abc.AbstractRobustConnection:
        if self._closed:
            raise ClosedError("this RabbitMQBroker was closed; create a new one")
        if self._connection is None:
            raise ConnectionError("RabbitMQBroker is not connected; await broker.connect() first")
        return self._connection

    async def close(self) -> None:
        """Close subscriptions and the connection (unacked messages go back). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._background):
            task.cancel()
        for sub in list(self._subscriptions):
            await sub.close()
        if self._connection is not None:
            await quietly(self._connection.close(), log, "closing the RabbitMQ connection")
        self._connection = None

    # -- topology -------------------------------------------------------------

    def declare_delay_tiers(self, tiers: Mapping[str, float | timedelta]) -> None:
        """With quorum queues, make the given delay-tier topics TTL queues (call before
        ``ensure_topics``); with classic queues they stay ordinary queues.

        A message published to ``topic`` then waits ``seconds`` inside RabbitMQ
        (``x-message-ttl``), and is dead-lettered, at least once, into ``topic + "_due"``
        which is what a subscription to ``topic`` really reads. Every message of a tier
        has the same TTL, so they expire in publish order; the forwarder finds
        them due (or nearly) and re-publishes at once. A classic queue dead-letters at
        most once (a message expiring while the node stops is dropped), so classic
        tiers are held by the forwarder instead (see the package docstring).

        >>> broker = RabbitMQBroker(queue_type="quorum")
        >>> broker.declare_delay_tiers({"app__delay00": timedelta(hours=1), "app__delay01": 1800.0})
        >>> broker._consumed_queue("app__delay01"), RabbitMQBroker()._consumed_queue("app__delay01")
        ('app__delay01_due', 'app__delay01')
        """
        for topic, ttl in tiers.items():
            seconds = duration(f"delay tier {topic!r}", ttl).total_seconds()
            if self.queue_type == "classic":
                continue
            if topic in self._declared and self._delay_ttls.get(topic) != seconds:
                raise ConfigurationError(f"delay tier {topic!r} was already declared")
            self._delay_ttls[topic] = seconds

    def _consumed_queue(self, topic: str) -> str:
        return f"{topic}_due" if topic in self._delay_ttls else topic

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Declare a durable queue per topic, bound to the exchange (routing key = topic)."""
        missing = [t for t in dict.fromkeys(topics) if t not in self._declared]
        if not missing:
            return
        self._require_open()
        async with self._topology_lock:
            channel = self._topology_channel
            assert channel is not None
            # A refused declare (406) closes the channel and aio-pika reopens it; so does a
            # reconnection. Wait for that (bounded) rather than fail on a channel being restored.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.ready(), self.connect_timeout.total_seconds())
            declaring = ""
            try:
                exchange = await self._declare_exchange(channel)
                for topic in missing:
                    if topic in self._declared:
                        continue
                    ttl = self._delay_ttls.get(topic)
                    if ttl is not None:
                        declaring = due = self._consumed_queue(topic)
                        await channel.declare_queue(due, durable=True, arguments=self._queue_arguments())
                    declaring = topic
                    queue = await channel.declare_queue(
                        topic, durable=True, arguments=self._queue_arguments(ttl, self._consumed_queue(topic))
                    )
                    await queue.bind(exchange, routing_key=topic)
                    self._declared.add(topic)
            except Exception as exc:
                raise self._error(exc, f"declaring queues {missing}", queue=declaring) from exc

    def _queue_arguments(self, ttl: float | None = None, dead_letter_to: str = "") -> dict[str, Any] | None:
        """The arguments nova declares a queue with: its type, and a delay tier's TTL.

        A TTL tier dead-letters into ``dead_letter_to``; between quorum queues at
        least once (the tier keeps each message until the next queue confirmed it),
        which RabbitMQ only does with ``x-overflow: reject-publish`` (no length limit
        is set, so nothing is ever rejected).

        >>> RabbitMQBroker(queue_type="quorum")._queue_arguments()
        {'x-queue-type': 'quorum'}
        >>> RabbitMQBroker()._queue_arguments(2.0, "app__delay00_due")
        {'x-message-ttl': 2000, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'app__delay00_due'}
        """
        quorum = self.queue_type == "quorum"
        # classic: no x-queue-type at all, as queues declared before queue_type existed were
        arguments: dict[str, Any] = {"x-queue-type": "quorum"} if quorum else {}
        if ttl is not None:
            arguments["x-message-ttl"] = max(1, round(ttl * 1000))
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = dead_letter_to
            if quorum:
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
        return arguments or None

    # -- publishing -----------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all and return once RabbitMQ confirmed each one.

        Raises ``EnqueueError`` if a message is unroutable or nacked, or if the
        broker is unreachable for ``publish_timeout``. What was not confirmed is
        sent again (at least once): after the connection came back, after a nack
        (a quorum queue nacks while its leader changes), and after
        ``CONFIRM_WAIT`` without a confirm on a live connection. The last two go
        to a new channel (after ``NACKS_BEFORE_NEW_CHANNEL`` nacks in a row, and
        at once): on RabbitMQ 3.10 a channel's quorum-queue client whose leader
        died as it published can stay stuck, never confirming or nacking every
        publish, while a new channel's works.
        """
        raise_refusals(await self.publish_each(messages))

    async def publish_each(self, messages: Sequence[Message]) -> list[BaseException | None]:
        """``publish``, with one outcome per message: None once RabbitMQ confirmed it, else its
        EnqueueError (unroutable, nacked, not confirmed within ``publish_timeout``) or a
        ClosedError (see ``nova._broker.PublishEach``).

        >>> await broker.publish_each([Message("shop_default_normal", b"...")])  # doctest: +SKIP
        [None]
        """
        if not messages:
            return []
        self._require_open()
        try:
            await self.ensure_topics([m.topic for m in messages])
        except BrokerError as exc:
            raise EnqueueError(f"cannot publish: {exc}") from exc
        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC)
        published_at = repr(now)
        properties = aiormq_internals.persistent
        outgoing = []
        for m in messages:
            headers: dict[str, Any] = dict(m.headers)
            headers[PUBLISHED_AT_HEADER] = published_at
            outgoing.append((m.topic, m.body, properties(headers, m.key, stamp)))
        outcomes: list[BaseException | None] = [None] * len(messages)
        deadline = time.monotonic() + self.publish_timeout.total_seconds()
        pending: Sequence[int] = range(len(outgoing))
        nack_rounds = 0
        while True:
            channel = self._publish_channel
            assert channel is not None
            attempt_deadline = min(deadline, time.monotonic() + CONFIRM_WAIT)
            results = await self._publish_confirmed(channel, [outgoing[i] for i in pending], attempt_deadline)
            retry: list[tuple[int, BaseException]] = []
            for i, result in zip(pending, results, strict=True):
                if result is None:
                    continue
                if failure(result).resend:
                    retry.append((i, result))
                    continue
                topic = outgoing[i][0]
                error = self._error(result, f"publishing to {topic!r}", topic=topic)
                if not isinstance(error, EnqueueError):
                    error = EnqueueError(f"cannot publish: {error}")
                error.__cause__ = result
                outcomes[i] = error
            if not retry:
                return outcomes
            from aiormq.exceptions import DeliveryError

            last = retry[-1][1]
            nacked = all(isinstance(error, DeliveryError) for _, error in retry)
            unconfirmed: BaseException | None = None
            if self._closed:
                unconfirmed = ClosedError("this RabbitMQBroker was closed while publishing")
            elif time.monotonic() >= deadline:
                if nacked:
                    topic = outgoing[retry[-1][0]][0]
                    error = self._error(last, f"publishing to {topic!r}", topic=topic)
                    unconfirmed = EnqueueError(
                        f"{error} (sent again for {self.publish_timeout.total_seconds()} s, refused each time)")
                else:
                    unconfirmed = EnqueueError(
                        f"RabbitMQ did not confirm {len(retry)} message(s) within "
                        f"{self.publish_timeout.total_seconds()} s "
                        "(connection lost, or no confirm came); some may have been stored"
                    )
            if unconfirmed is not None:
                unconfirmed.__cause__ = last
                for i, _ in retry:
                    outcomes[i] = unconfirmed
                return outcomes
            pending = [i for i, _ in retry]
            connection = self._connection
            if nacked:
                nack_rounds += 1
                log.info("RabbitMQ refused (nacked) %d message(s); resending them", len(retry))
                await asyncio.sleep(min(NACK_PAUSE, max(deadline - time.monotonic(), 0)))
                if nack_rounds % NACKS_BEFORE_NEW_CHANNEL == 0 and not channel.is_closed:
                    # a quorum queue's client on that channel may keep refusing after its
                    # leader died (seen with a killed node); a new channel starts afresh
                    await self._renew_publish_channel(channel)
            elif (
                any(isinstance(error, TimeoutError) for _, error in retry)
                and connection is not None
                and connection.connected.is_set()
                and not channel.is_closed
            ):
                log.warning("RabbitMQ confirmed none of %d message(s) within %g s on a live connection; "
                            "resending them on a new channel", len(retry), CONFIRM_WAIT)
                await self._renew_publish_channel(channel)
            else:
                log.info("RabbitMQ connection lost while publishing; resending %d unconfirmed message(s)",
                         len(retry))
                await self._wait_channel(channel, deadline)

    async def _publish_confirmed(
        self, channel: aio_pika.abc.AbstractRobustChannel, outgoing: list[tuple[str, bytes, Any]], deadline: float
    ) -> list[BaseException | None]:
        """Publish ``outgoing`` (routing key, body, properties) in one write and wait for
        their confirms until ``deadline``: None per confirmed message, else its error (a
        TimeoutError when unconfirmed by then)."""
        try:
            # Bounds the wait for a reconnecting robust channel too.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                underlay = await channel.get_underlay_channel()
                futures = await aiormq_internals.publish_confirmed(underlay, self.exchange, outgoing)
        except Exception as exc:  # noqa: BLE001 - the outcome of every message, sorted by the caller
            return [exc] * len(outgoing)
        _, unconfirmed = await asyncio.wait(futures, timeout=max(deadline - time.monotonic(), 0.1))
        for future in unconfirmed:
            future.cancel()  # a confirm that comes later is ignored (logged at debug by aiormq)
        late = TimeoutError("no confirm came in time")
        outcomes: list[BaseException | None] = []
        for future in futures:
            error = late if future.cancelled() else future.exception()
            # aiormq fails the confirmations of a channel closed under them with CancelledError:
            # not a cancellation of this publish, so resent as unconfirmed
            outcomes.append(late if isinstance(error, asyncio.CancelledError) else error)
        return outcomes

    async def _renew_publish_channel(self, stuck: aio_pika.abc.AbstractRobustChannel) -> None:
        """Replace the publishing channel ``stuck`` (once, whoever asks first).

        Publishes still waiting on ``stuck`` reach their own ``CONFIRM_WAIT`` and are
        resent on the new channel; ``stuck`` is closed after that (closing it now would
        fail them with aiormq's CancelledError, as if their callers were cancelled).
        """
        async with self._renew_lock:
            connection = self._connection
            if self._publish_channel is not stuck or self._closed or connection is None:
                return
            try:
                async with asyncio.timeout(CONFIRM_WAIT):
                    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                    exchange = await self._declare_exchange(channel)
            except Exception:
                log.debug("cannot open a new publishing channel; resending on the old one", exc_info=True)
                return
            self._publish_channel, self._publish_exchange = channel, exchange
        closing = asyncio.get_running_loop().create_task(self._close_later(stuck))
        self._background.add(closing)
        closing.add_done_callback(self._background.discard)

    async def _close_later(self, channel: aio_pika.abc.AbstractRobustChannel) -> None:
        await asyncio.sleep(CONFIRM_WAIT + 1)
        await quietly(channel.close(), log, "closing a publishing channel that stopped confirming")

    async def _wait_channel(self, channel: aio_pika.abc.AbstractRobustChannel, deadline: float) -> None:
        """Wait until the robust channel is usable again (or the deadline passes)."""
        # A short pause lets the robust connection notice the loss before we ask.
        await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.ready(), max(deadline - time.monotonic(), 0.01))

    # -- consuming ------------------------------------------------------------

    async def subscribe(self, topics: Sequence[str], *, group: str, window: int) -> _RabbitSubscription:
        """Consume ``topics`` as a member of ``group`` with at most ``window`` unacked per topic."""
        connection = self._require_open()
        if window < 1:
            raise ConfigurationError(f"window must be at least 1, got {window}")
        topics = list(dict.fromkeys(topics))
        await self.ensure_topics(topics)
        sub = _RabbitSubscription(self, group)
        self._subscriptions.add(sub)
        try:
            # Channels, qos and declares for all topics at once (one round trip, not
            # three per topic); consumers then start in the given order.
            opened = await asyncio.gather(
                *(sub._open(connection, topic, self._consumed_queue(topic), window) for topic in topics),
                return_exceptions=True,
            )
            consumers = []
            for result in opened:
                if isinstance(result, BaseException):
                    raise result
                consumers.append(result)
            # basic.consume frames go out in the given order (highest priority first).
            await asyncio.gather(
                *(
                    queue.consume(on_message, no_ack=False, consumer_tag=f"{group}.{uuid.uuid4().hex[:12]}")
                    for queue, on_message in consumers
                )
            )
        except BaseException as exc:
            await sub.close()
            if isinstance(exc, Exception) and not isinstance(exc, NovaError):
                raise self._error(exc, f"subscribing to {topics}") from exc
            raise
        return sub

    async def _queue_depth(self, topic: str) -> int:
        channel = self._topology_channel
        if channel is None or self._closed or topic not in self._declared:
            return 0
        try:
            underlay = await asyncio.wait_for(channel.get_underlay_channel(), 5)
            result = await underlay.queue_declare(self._consumed_queue(topic), passive=True, timeout=5)
        except Exception:
            log.debug("backlog(%r) unavailable", topic, exc_info=True)
            return 0
        return int(result.message_count or 0)
