"""RabbitMQ backend on aio-pika (``pip install 'nova-taskqueue[rabbitmq]'``).

    broker = RabbitMQBroker("amqp://nova:secret@127.0.0.1:5672/", exchange="myapp")
    tq = TaskQueue(broker)

    broker = RabbitMQBroker.from_url(
        "amqps://nova:secret@127.0.0.1:5671/?exchange=myapp&topic_prefix=myapp",
        tls=ssl.create_default_context(cafile="ca.pem"),
    )

How the contract maps onto AMQP:

- every topic is a durable classic queue of the same name, bound to the
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
  asks RabbitMQ (a passive declare) only when that cannot decide (``_Feed``). Beyond the server's
  ``consumer_timeout`` (RabbitMQ 3.10 default: 30 min) the broker closes the
  channel and redelivers; the adapter reopens it, so work goes on, but the
  task may run twice. Long-held delay tiers therefore want TTL queues
  (``declare_delay_tiers``) or a larger ``consumer_timeout`` in rabbitmq.conf;
- the connection is robust: after a broker restart it reconnects, re-declares
  the topology and resumes the consumers. Deliveries received before the loss
  are redelivered by the broker; acking such a stale delivery only logs a
  warning (the message is not lost, and its task may run again);
- delay tiers (``{prefix}__delayNN``) are ordinary durable queues held by the
  engine's forwarder; ``declare_delay_tiers`` can instead make each tier a TTL
  queue that dead-letters into the queue the forwarder reads, so messages wait
  inside RabbitMQ and the forwarder's hold is ~0.

``prefetch=(count, size)``: RabbitMQ ignores a prefetch size, so it must be 0.
``count`` is exposed as ``prefetch_count`` (a default window for engines that
want one); the per-topic limit of a subscription is always its ``window``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from nova._broker import Message
from nova._errors import (
    AuthenticationError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConnectionError,  # noqa: A004
    EnqueueError,
)

if TYPE_CHECKING:
    import aio_pika
    import aio_pika.abc
    import aiormq
    import aiormq.abc
    from aiormq.abc import ChannelFrame

    from nova._clock import Clock

__all__ = ["RabbitMQBroker"]

log = logging.getLogger("nova.rabbitmq")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: RabbitMQ 3.x default ``max_message_size``.
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
DELAY_TOPIC_RE = re.compile(r".+__delay\d{2,}")
#: Header with the publish time at sub-second precision (AMQP timestamps are whole seconds).
PUBLISHED_AT_HEADER = "x-nova-published-at"
#: Longest an ack/nack may wait for the connection's writer (then: redelivery).
SETTLE_TIMEOUT = 10.0
#: Options ``from_url`` reads from the query string (the rest goes to aio-pika).
_URL_OPTIONS = ("exchange", "topic_prefix", "group_id")


def _aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("RabbitMQBroker needs aio-pika: pip install 'nova-taskqueue[rabbitmq]'") from exc
    return aio_pika


class _Secret:
    """Keeps the password out of every string nova builds."""

    def __init__(self, password: str) -> None:
        self.password = password

    def scrub(self, text: str) -> str:
        if not self.password:
            return text
        for form in {self.password, quote(self.password, safe=""), quote(self.password)}:
            text = text.replace(form, "***")
        return text


class RabbitMQBroker:
    """RabbitMQ behind nova's broker contract.

    >>> broker = RabbitMQBroker("amqp://127.0.0.1:5672/", auth=("nova", "s3cret/p@ss"))
    >>> broker
    RabbitMQBroker('amqp://nova:***@127.0.0.1:5672/', exchange='nova')

    Options (the seed's ``WithRabbitMQX`` names, as keywords):
    ``exchange`` (durable direct exchange every topic is bound to),
    ``topic_prefix`` / ``group_id`` / ``delay_slots`` (override the TaskQueue's),
    ``prefetch=(count, 0)``, ``auth=(user, password)`` (replaces the URL's; escaped
    for you), ``tls`` (an ``ssl.SSLContext``; implies amqps, port 5671 by default),
    ``connect_timeout`` (s, first connection incl. TLS and login),
    ``publish_timeout`` (s a publish may wait for confirms and reconnection),
    ``reconnect_interval`` (s between reconnection attempts).
    """

    clock: Clock | None = None
    native_delay_max: timedelta | None = None

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        exchange: str = "nova",
        topic_prefix: str | None = None,
        group_id: str | None = None,
        prefetch: tuple[int, int] = (10, 0),
        auth: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        delay_slots: tuple[int, timedelta] | None = None,
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        _aio_pika()
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigurationError(
                f"RabbitMQ URL must start with amqp:// or amqps://, got {parts.scheme or 'no'} scheme"
            )
        if not parts.hostname:
            raise ConfigurationError("RabbitMQ URL has no host, e.g. amqp://user:pass@127.0.0.1:5672/")
        user = unquote(parts.username) if parts.username is not None else "guest"
        password = unquote(parts.password) if parts.password is not None else "guest"
        if auth is not None:
            if not (isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth)):
                raise ConfigurationError("auth must be a (user, password) tuple of str")
            user, password = auth
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
        if not isinstance(exchange, str) or not exchange or exchange.startswith("amq."):
            raise ConfigurationError(
                f"exchange {exchange!r} is invalid: use a non-empty name not starting with 'amq.' "
                "(the default exchange '' cannot be bound)"
            )
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise ConfigurationError("tls must be an ssl.SSLContext, e.g. ssl.create_default_context(cafile=...)")
        self._secret = _Secret(password)
        scheme = "amqps" if tls is not None else parts.scheme
        host = parts.hostname
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = parts.port or (5671 if scheme == "amqps" else 5672)
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"
        path = parts.path or "/"
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _URL_OPTIONS]
        self._url = urlunsplit((scheme, netloc, path, urlencode(query), ""))
        self._display_url = urlunsplit((scheme, f"{quote(user, safe='')}:***@{host}:{port}", path, "", ""))
        self._user = user
        self._tls = tls if tls is not None else (ssl.create_default_context() if scheme == "amqps" else None)
        self.exchange = exchange
        self.topic_prefix = topic_prefix
        self.group_id = group_id
        self.delay_slots = delay_slots
        self.prefetch_count = prefetch[0]
        self.max_message_bytes: int | None = MAX_MESSAGE_BYTES
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.reconnect_interval = reconnect_interval

        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._publish_channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._publish_exchange: aio_pika.abc.AbstractExchange | None = None
        self._topology_channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._topology_lock = asyncio.Lock()
        self._declared: set[str] = set()
        self._delay_ttls: dict[str, float] = {}
        self._subscriptions: set[_RabbitSubscription] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQBroker:
        """Build a broker from one URL; ``exchange``, ``topic_prefix`` and
        ``group_id`` may be given as query parameters.

        >>> RabbitMQBroker.from_url("amqp://u:p@127.0.0.1/?exchange=myapp&topic_prefix=app").exchange
        'myapp'
        """
        query = dict(parse_qsl(urlsplit(url).query))
        for name in _URL_OPTIONS:
            if name in query and name not in options:
                options[name] = query[name]
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self._display_url!r}, exchange={self.exchange!r})"

    # -- connection -----------------------------------------------------------

    async def connect(self) -> None:
        """Open the (robust) connection and the publishing channel. Idempotent."""
        if self._closed:
            raise ClosedError("this RabbitMQBroker was closed; create a new one")
        async with self._connect_lock:
            if self._connection is not None:
                return
            aio_pika = _aio_pika()
            try:
                connection = await asyncio.wait_for(
                    aio_pika.connect_robust(
                        self._url,
                        ssl_context=self._tls,
                        timeout=self.connect_timeout,
                        reconnect_interval=self.reconnect_interval,
                        client_properties={"connection_name": "nova"},
                    ),
                    self.connect_timeout + 1,
                )
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise self._connect_error(exc) from exc
            try:
                publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._publish_exchange = await self._declare_exchange(publish_channel)
                topology_channel = await connection.channel(publisher_confirms=False)
            except Exception as exc:
                await connection.close()
                raise self._broker_error("opening channels", exc) from exc
            self._connection = connection
            self._publish_channel = publish_channel
            self._topology_channel = topology_channel

    async def _declare_exchange(self, channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractExchange:
        aio_pika = _aio_pika()
        return await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)

    def _connect_error(self, exc: BaseException) -> BrokerError:
        import aiormq.exceptions

        where = self._display_url
        text = self._secret.scrub(str(exc))
        chain = _exception_chain(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
            return AuthenticationError(
                f"TLS certificate of {where} is not trusted ({text}); pass "
                "tls=ssl.create_default_context(cafile=<the broker's CA file>)"
            )
        if "[SSL" in text or any(isinstance(e, ssl.SSLError) for e in chain):
            return AuthenticationError(f"TLS handshake with {where} failed: {text}")
        if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
            return AuthenticationError(
                f"RabbitMQ at {where} refused the credentials of user {self._user!r} "
                "(wrong user or password, or no access to the vhost)"
            )
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return ConnectionError(f"cannot connect to RabbitMQ at {where}: timed out after {self.connect_timeout} s")
        detail = self._secret.scrub(f"{type(exc).__name__}: {exc}")
        return ConnectionError(f"cannot connect to RabbitMQ at {where}: {detail}")

    def _broker_error(self, doing: str, exc: BaseException) -> BrokerError:
        detail = self._secret.scrub(f"{type(exc).__name__}: {exc}")
        if _is_connection_problem(exc):
            return ConnectionError(f"RabbitMQ connection lost while {doing}: {detail}")
        return BrokerError(f"RabbitMQ failed while {doing}: {detail}")

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
        for sub in list(self._subscriptions):
            await sub.close()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None

    # -- topology -------------------------------------------------------------

    def declare_delay_tiers(self, tiers: Mapping[str, float | timedelta]) -> None:
        """Make the given delay-tier topics TTL queues (call before ``ensure_topics``).

        A message published to ``topic`` then waits ``seconds`` inside RabbitMQ
        (``x-message-ttl``), and is dead-lettered into ``topic + "_due"`` which is
        what a subscription to ``topic`` really reads. Every message of a tier
        has the same TTL, so they expire in publish order; the forwarder finds
        them due (or nearly) and re-publishes at once.

        >>> broker = RabbitMQBroker()
        >>> broker.declare_delay_tiers({"app__delay00": 3600.0, "app__delay01": 1800.0})
        """
        for topic, duration in tiers.items():
            seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
            if seconds <= 0:
                raise ConfigurationError(f"delay tier {topic!r} needs a positive duration, got {seconds}")
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
            try:
                exchange = await self._declare_exchange(channel)
                for topic in missing:
                    if topic in self._declared:
                        continue
                    ttl = self._delay_ttls.get(topic)
                    if ttl is None:
                        queue = await channel.declare_queue(topic, durable=True)
                    else:
                        due = self._consumed_queue(topic)
                        await channel.declare_queue(due, durable=True)
                        queue = await channel.declare_queue(
                            topic,
                            durable=True,
                            arguments={
                                "x-message-ttl": max(1, round(ttl * 1000)),
                                "x-dead-letter-exchange": "",
                                "x-dead-letter-routing-key": due,
                            },
                        )
                    await queue.bind(exchange, routing_key=topic)
                    self._declared.add(topic)
            except Exception as exc:
                import aiormq.exceptions

                if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                    raise ConfigurationError(
                        f"a queue among {missing} already exists in RabbitMQ with other arguments "
                        f"({exc}); delete it, or keep the delay tiers it was declared with"
                    ) from exc
                raise self._broker_error(f"declaring queues {missing}", exc) from exc

    # -- publishing -----------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all and return once RabbitMQ confirmed each one.

        Raises ``EnqueueError`` if a message is unroutable or nacked, or if the
        broker is unreachable for ``publish_timeout`` seconds.
        """
        if not messages:
            return
        self._require_open()
        try:
            await self.ensure_topics([m.topic for m in messages])
        except BrokerError as exc:
            raise EnqueueError(f"cannot publish: {exc}") from exc
        aio_pika = _aio_pika()
        import aiormq.exceptions

        now = time.time()
        stamp = datetime.fromtimestamp(now, UTC)
        outgoing = []
        for m in messages:
            headers: dict[str, Any] = dict(m.headers)
            headers[PUBLISHED_AT_HEADER] = repr(now)
            outgoing.append(
                (
                    m.topic,
                    aio_pika.Message(
                        m.body,
                        headers=headers,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        timestamp=stamp,
                        message_id=m.key,
                    ),
                )
            )
        deadline = time.monotonic() + self.publish_timeout
        pending = outgoing
        while True:
            exchange = self._publish_exchange
            channel = self._publish_channel
            assert exchange is not None
            assert channel is not None
            results = await asyncio.gather(
                *(self._publish_one(exchange, topic, msg, deadline) for topic, msg in pending),
                return_exceptions=True,
            )
            retry = []
            for (topic, msg), result in zip(pending, results, strict=True):
                if result is None:
                    continue
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, aiormq.exceptions.PublishError):
                    raise EnqueueError(
                        f"RabbitMQ returned a message for topic {topic!r} as unroutable "
                        f"(exchange {self.exchange!r} has no queue bound with that routing key)"
                    ) from result
                if isinstance(result, aiormq.exceptions.DeliveryError):
                    raise EnqueueError(f"RabbitMQ refused (nacked) a message for topic {topic!r}") from result
                if isinstance(result, BaseException) and _is_connection_problem(result):
                    retry.append(((topic, msg), result))
                    continue
                if isinstance(result, BaseException):
                    raise EnqueueError(
                        self._secret.scrub(f"publishing to {topic!r} failed: {type(result).__name__}: {result}")
                    ) from result
            if not retry:
                return
            if self._closed:
                raise ClosedError("this RabbitMQBroker was closed while publishing")
            last = retry[-1][1]
            if time.monotonic() >= deadline:
                raise EnqueueError(
                    f"RabbitMQ did not confirm {len(retry)} message(s) within {self.publish_timeout} s "
                    "(connection lost); some may have been stored"
                ) from last
            log.info("RabbitMQ connection lost while publishing; resending %d unconfirmed message(s)", len(retry))
            pending = [item for item, _ in retry]
            await self._wait_channel(channel, deadline)

    async def _publish_one(
        self,
        exchange: aio_pika.abc.AbstractExchange,
        topic: str,
        message: aio_pika.abc.AbstractMessage,
        deadline: float,
    ) -> None:
        # asyncio.timeout, not wait_for: no extra task per message. It also bounds the
        # wait for a reconnecting robust channel, which publish's own timeout does not.
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
            await exchange.publish(message, routing_key=topic, mandatory=True)

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
            if isinstance(exc, Exception):
                raise self._broker_error(f"subscribing to {topics}", exc) from exc
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
        # aiormq's frame queue to the connection's writer (its basic_ack writes there too)
        self.write_queue: asyncio.Queue[ChannelFrame] = cast("aiormq.Channel", channel).write_queue
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
            if self.channel.is_closed or _is_connection_problem(exc):
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
        from aiormq.abc import ChannelFrame
        from pamqp import commands

        frames: list[Any] = []
        tags = sorted(self.pending)
        ack_upto = 0
        edge = self._advance(self.base)
        i = 0
        while i < len(tags) and tags[i] == edge + 1:
            tag = tags[i]
            if self.pending.pop(tag):
                if ack_upto:
                    frames.append(commands.Basic.Ack(delivery_tag=ack_upto, multiple=True))
                    ack_upto = 0
                frames.append(commands.Basic.Nack(delivery_tag=tag, multiple=False, requeue=True))
            else:
                ack_upto = tag
            edge = self._advance(tag)
            i += 1
        if ack_upto:
            frames.append(commands.Basic.Ack(delivery_tag=ack_upto, multiple=True))
        self.base = edge
        for tag in tags[i:]:
            if self.pending.pop(tag):
                frames.append(commands.Basic.Nack(delivery_tag=tag, multiple=False, requeue=True))
            else:
                frames.append(commands.Basic.Ack(delivery_tag=tag, multiple=False))
            self._mark_written(tag)
        return ChannelFrame.marshall(channel_number=self.channel.number, frames=frames)

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


class _Feed:
    """One consumed topic of a subscription, and what we know of its queue.

    ``backlog`` must say whether work of the topic waits for this
    subscription: received but not yet iterated (``unyielded``, known here),
    or ready in RabbitMQ. Asking RabbitMQ (a passive declare) costs a round
    trip, and the engine asks before every pick, so it is asked only when
    local knowledge cannot decide. Why local knowledge can:

    - a classic queue never keeps a message ready while one of its consumers
      has credit (fewer unacked deliveries than its prefetch, ``window``): it
      sends the message at once. A ready message therefore means our consumer
      is at ``window`` in the broker's view;
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
    (they were never counted: a passive declare only counts ready ones).
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
        import aiormq.exceptions

        if self._settler is None:
            return True
        try:
            return self._message.channel.is_closed
        except aiormq.exceptions.ChannelInvalidStateError:
            return True

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
        queue = await channel.declare_queue(queue_name, durable=True)
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
            # (a fence in flight fails on the closed channel and answers 0)
            with contextlib.suppress(Exception):
                if feed.settler is not None:
                    await feed.settler.drain()  # acks already given go out before the close
            with contextlib.suppress(Exception):
                await feed.channel.close()
        self._queue.put_nowait(_STOP)


def _is_connection_problem(exc: BaseException) -> bool:
    import aiormq.exceptions

    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncio.TimeoutError
        | aiormq.exceptions.AMQPConnectionError
        | aiormq.exceptions.ChannelInvalidStateError
        | aiormq.exceptions.ChannelClosed,
    ) and not isinstance(exc, aiormq.exceptions.DeliveryError)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
