"""``KafkaBroker``: connecting, topics and publishing (the contract's mapping onto Kafka is
the package docstring, ``nova.brokers.kafka``)."""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import aiokafka  # type: ignore[import-untyped]
import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from nova._broker import Message
from nova._errors import (
    BrokerError,
    ClosedError,
    ConfigurationError,
    EnqueueError,
    ValidationError,
)
from nova.brokers import _common
from nova.brokers.kafka import _aiokafka_internals as aiokafka_internals
from nova.brokers.kafka._config import (
    DURATIONS,
    KafkaAuth,
    KafkaSSL,
    bootstrap_list,
    duration_option,
    millis,
    parse_url,
    positive_int,
)
from nova.brokers.kafka._errors import ErrorContext, for_code, is_refusal, translate
from nova.brokers.kafka._headers import _Packer
from nova.brokers.kafka._subscription import KafkaSubscription

if TYPE_CHECKING:
    from nova._clock import Clock

__all__ = ["KafkaBroker"]

log = logging.getLogger("nova.kafka")

#: Partitions of each ready topic nova creates (every priority level of every queue): up to
#: this many worker processes of a group take work of one level.
DEFAULT_PARTITIONS = 12

# How a dead-letter queue's ready topics end: {prefix}_{queue}_dlq_{level} (nova._naming's
# grammar: the dead letters of queue q go to the queue q_dlq).
_DEAD_LETTER_ENDINGS = ("_dlq_high", "_dlq_normal", "_dlq_low")

_BATCH_MIN = 16  # messages for one partition in one publish call worth building a record batch for
_MAX_BATCH_BYTES = 512 * 1024  # record batches stay well under Kafka's default message.max.bytes (1 MiB)


def _key(message: Message) -> bytes | None:
    return None if message.key is None else message.key.encode()



class KafkaBroker:
    """Kafka backend (the semantics: see the package docstring, ``nova.brokers.kafka``).

    >>> broker = KafkaBroker("127.0.0.1:9092", group_id="billing", partitions=3)
    >>> broker.group_id, broker.native_delay_max
    ('billing', None)

    ``partitions`` (default 12) is how many partitions the ready topics nova creates get:
    within a consumer group each partition has one consumer, so that is how many worker
    processes can share one priority level of a queue. Delay tiers and dead-letter topics
    get one (see ``partitions_for``). Existing topics are left as they are
    (``partitions_of`` tells how many a topic has).

    ``group_id``, ``topic_prefix`` and ``delay_slots`` set here override the
    TaskQueue's. ``delay_slots=(count, duration)`` is passed to the engine's delay
    tiers; precision never depends on it.

    Durations are timedeltas (numbers are seconds): ``session_timeout`` (30 s),
    ``heartbeat_interval`` (1 s), ``max_poll_interval`` (5 min), ``commit_interval``
    (how often done offsets are committed, 200 ms), ``request_timeout`` (40 s) and
    ``connect_timeout`` (10 s). Their unit-suffixed names are accepted too, one name per
    duration: ``session_timeout_ms``, ... in integer milliseconds, ``connect_timeout_s``.

    >>> KafkaBroker("127.0.0.1:9092", session_timeout=timedelta(seconds=6)).session_timeout_ms
    6000
    """

    clock: Clock | None = None
    #: Kafka has no per-message delay; the engine's delay tiers do the work.
    native_delay_max: timedelta | None = None
    #: A consumer holds an uncommitted offset as long as it likes: no bound on a tier's hold.
    delay_hold_max: timedelta | None = None

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        group_id: str | None = None,
        topic_prefix: str | None = None,
        auto_commit: bool = False,
        session_timeout: timedelta | float | None = None,
        heartbeat_interval: timedelta | float | None = None,
        max_poll_interval: timedelta | float | None = None,
        delay_slots: tuple[int, timedelta | float] | None = None,
        auth: KafkaAuth | None = None,
        ssl: KafkaSSL | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int | None = None,
        max_message_bytes: int = 1_000_000,
        commit_interval: timedelta | float | None = None,
        request_timeout: timedelta | float | None = None,
        connect_timeout: timedelta | float | None = None,
        client_id: str = "nova",
        session_timeout_ms: int | None = None,
        heartbeat_interval_ms: int | None = None,
        max_poll_interval_ms: int | None = None,
        commit_interval_ms: int | None = None,
        request_timeout_ms: int | None = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_list(bootstrap_servers)
        self.group_id = _common.optional_group(group_id)
        self.topic_prefix = _common.optional_prefix(topic_prefix)
        self.delay_slots = _common.delay_slots(delay_slots)
        if auth is not None and not isinstance(auth, KafkaAuth):
            raise ConfigurationError(f"auth must be a KafkaAuth, not {type(auth).__name__}")
        if ssl is not None and not isinstance(ssl, KafkaSSL):
            raise ConfigurationError(f"ssl must be a KafkaSSL, not {type(ssl).__name__}")
        if auth is not None and auth.security_protocol == "SASL_PLAINTEXT" and ssl is not None:
            raise ConfigurationError("KafkaAuth('SASL_PLAINTEXT', ...) does not use TLS: drop ssl= or use SASL_SSL")
        self.partitions = positive_int("partitions", partitions)
        self.replication_factor = None if replication_factor is None else positive_int(
            "replication_factor", replication_factor
        )
        self.max_message_bytes: int | None = positive_int("max_message_bytes", max_message_bytes)
        self.session_timeout = duration_option("session_timeout", session_timeout, session_timeout_ms)
        self.heartbeat_interval = duration_option("heartbeat_interval", heartbeat_interval, heartbeat_interval_ms)
        self.max_poll_interval = duration_option("max_poll_interval", max_poll_interval, max_poll_interval_ms)
        self.commit_interval = duration_option("commit_interval", commit_interval, commit_interval_ms)
        self.request_timeout = duration_option("request_timeout", request_timeout, request_timeout_ms)
        self.connect_timeout = duration_option("connect_timeout", connect_timeout, connect_timeout_s)
        if self.heartbeat_interval >= self.session_timeout:
            raise ConfigurationError("heartbeat_interval must be below session_timeout")
        # The unit-suffixed names, in the units aiokafka takes.
        self.session_timeout_ms = millis(self.session_timeout)
        self.heartbeat_interval_ms = millis(self.heartbeat_interval)
        self.max_poll_interval_ms = millis(self.max_poll_interval)
        self.commit_interval_ms = millis(self.commit_interval)
        self.request_timeout_ms = millis(self.request_timeout)
        self.connect_timeout_s = self.connect_timeout.total_seconds()
        self.auth = auth
        self.ssl = ssl
        self.auto_commit = auto_commit
        self.client_id = client_id
        self._security_protocol = (
            auth.security_protocol if auth is not None else ("SSL" if ssl is not None else "PLAINTEXT")
        )
        self._error_context = ErrorContext(self._security_protocol, auth, ssl, self.request_timeout.total_seconds())
        self._ssl_context: _ssl.SSLContext | None = None
        self._producer: Any = None
        self._admin: Any = None
        self._connect_lock = asyncio.Lock()
        self._topics_lock = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._tier_topics: set[str] = set()  # delay tiers: created with one partition
        self._turns: dict[str, int] = {}  # round-robin position per topic
        self._packer = _Packer()
        self._subscriptions: set[KafkaSubscription] = set()
        self._closed = False

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> KafkaBroker:
        """Build from ``kafka://[user:password@]host:port[,host:port]?option=value&...``.

        Options: ``group_id``, ``topic_prefix``, ``partitions``, ``replication_factor``,
        ``auto_commit``, ``session_timeout_ms``, ``max_poll_interval_ms``,
        ``security_protocol`` (SSL, SASL_PLAINTEXT, SASL_SSL), ``sasl_mechanism``
        (default PLAIN), ``ca_file``, ``cert_file``, ``key_file``. Credentials in the URL
        imply SASL. Keyword arguments override the URL.

        >>> KafkaBroker.from_url("kafka://127.0.0.1:9092?group_id=g&topic_prefix=p").topic_prefix
        'p'
        """
        servers, kwargs = parse_url(url)
        for name, (suffixed, _, _) in DURATIONS.items():
            if name in overrides or suffixed in overrides:  # either name overrides the URL's
                kwargs.pop(name, None)
                kwargs.pop(suffixed, None)
        kwargs.update(overrides)
        return cls(servers, **kwargs)

    def __repr__(self) -> str:
        return (
            f"KafkaBroker({','.join(self.bootstrap_servers)!r}, group_id={self.group_id!r}, "
            f"topic_prefix={self.topic_prefix!r}, security_protocol={self._security_protocol!r}, "
            f"auth={self.auth!r}, ssl={self.ssl!r})"
        )

    # --- connection -----------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self._security_protocol,
        }
        if self._ssl_context is not None:
            kwargs["ssl_context"] = self._ssl_context
        if self.auth is not None:
            kwargs["sasl_mechanism"] = self.auth.mechanism
            kwargs["sasl_plain_username"] = self.auth.username
            kwargs["sasl_plain_password"] = self.auth.password
        return kwargs

    async def connect(self) -> None:
        """Check the brokers answer (and accept the credentials), then start a producer.

        Raises ``AuthenticationError`` for refused credentials or an untrusted
        certificate and ``ConnectionError`` for an unreachable broker, within
        ``connect_timeout_s``.
        """
        if self._closed:
            raise ClosedError("KafkaBroker is closed; create a new one")
        async with self._connect_lock:
            if self._producer is not None:
                return
            if self._ssl_context is None and (self.ssl is not None or self._security_protocol == "SASL_SSL"):
                self._ssl_context = (self.ssl or KafkaSSL()).context()
            await self._probe()
            producer = aiokafka.AIOKafkaProducer(
                **self._client_kwargs(),
                acks="all",
                enable_idempotence=True,
                max_request_size=max(1_048_576, (self.max_message_bytes or 0) + 65_536),
                max_batch_size=_MAX_BATCH_BYTES,
            )
            admin = AIOKafkaAdminClient(**self._client_kwargs())
            try:
                await producer.start()
                await admin.start()
            except BaseException as exc:
                await _common.quietly(producer.stop(), log, "stopping the Kafka producer")
                await _common.quietly(admin.close(), log, "closing the Kafka admin client")
                if isinstance(exc, kafka_errors.KafkaError | OSError):
                    raise self._translate(exc, "cannot start the Kafka producer") from exc
                raise
            self._producer, self._admin = producer, admin

    async def _probe(self) -> None:
        """Open one connection to a bootstrap server so its real error surfaces."""
        errors: list[tuple[str, BaseException]] = []
        for server in self.bootstrap_servers:
            host, port = _common.split_host_port(server, "bootstrap server")
            kw = self._client_kwargs()
            del kw["bootstrap_servers"]
            kw["request_timeout_ms"] = int(self.connect_timeout_s * 1000)
            try:
                await aiokafka_internals.probe(host, port, self.connect_timeout_s, kw)
            except (OSError, kafka_errors.KafkaError, TimeoutError) as exc:
                errors.append((server, exc))
                if is_refusal(exc):
                    break  # the same credentials will be refused everywhere
                continue
            else:
                return
        server, error = errors[-1]
        within = replace(self._error_context, timeout_s=self.connect_timeout_s)
        raise translate(error, f"cannot connect to Kafka at {server}", within) from error

    def _translate(self, exc: BaseException, what: str) -> BrokerError:
        """The nova error for ``exc`` (see ``_errors.TABLE``): ``raise self._translate(...) from exc``."""
        return translate(exc, what, self._error_context)

    # --- topics ---------------------------------------------------------------------------------

    def declare_delay_tiers(self, tiers: Mapping[str, float | timedelta]) -> None:
        """Name the delay-tier topics (the engine does, before any ``ensure_topics``): they are
        created with one partition, whatever ``partitions`` says.

        A tier holds every message the same time, so its due times rise with its offsets and
        the delay forwarder, which reads a tier as one queue, only waits for its head. Over
        several partitions the order would hold within each partition only, and a due
        message could wait behind a later one. Forwarders in many processes still share the
        work: each tier's partition goes to one of them.

        >>> broker = KafkaBroker("127.0.0.1:9092")
        >>> broker.declare_delay_tiers({"app__delay00": 3600.0, "app__delay01": 1800.0})
        """
        self._tier_topics.update(tiers)

    async def partitions_of(self, topic: str) -> int | None:
        """How many partitions ``topic`` has (None: no such topic). ``nova worker`` warns
        when it runs more processes than a queue's topics have partitions.

        >>> await broker.partitions_of("shop_default_normal")  # doctest: +SKIP
        12
        """
        await self.connect()
        try:
            described = await self._admin.describe_topics([topic])
        except (kafka_errors.KafkaError, OSError) as exc:
            raise self._translate(exc, f"cannot describe topic {topic!r}") from exc
        for entry in described:
            if entry["topic"] == topic and entry["error_code"] == 0:
                return len(entry["partitions"])
        return None

    def partitions_for(self, topic: str) -> int:
        """How many partitions ``ensure_topics`` gives a new ``topic``: one for delay tiers
        (``declare_delay_tiers``) and dead-letter topics, ``partitions`` for the others.

        Every partition costs the brokers memory, an open file and two memory maps, whether
        it is used or not; dead letters are few, read by one operator or re-drive worker,
        and easiest read in the order they died.

        >>> broker = KafkaBroker("127.0.0.1:9092")
        >>> broker.partitions_for("shop_default_high"), broker.partitions_for("shop_default_dlq_high")
        (12, 1)
        """
        if topic in self._tier_topics or topic.endswith(_DEAD_LETTER_ENDINGS):
            return 1
        return self.partitions

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create the topics that do not exist yet (existing ones are left alone), each with
        ``partitions_for(topic)`` partitions."""
        missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
        if not missing:
            return
        await self.connect()
        async with self._topics_lock:
            missing = [t for t in missing if t not in self._known_topics]
            if not missing:
                return
            try:
                response = await self._admin.create_topics(await self._new_topics(missing))
            except (kafka_errors.KafkaError, OSError) as exc:
                raise self._translate(exc, f"cannot create topics {missing}") from exc
            for entry in response.topic_errors:
                topic, code = entry[0], entry[1]
                if code not in (0, kafka_errors.TopicAlreadyExistsError.errno):
                    error = for_code(code, *entry[2:])
                    raise self._translate(error, f"cannot create topic {topic!r}") from error
            await self._await_leaders(missing)
            self._known_topics.update(missing)

    async def _new_topics(self, names: list[str]) -> list[Any]:
        """NewTopics with ``replication_factor`` replicas if given, else the cluster's default
        (``default.replication.factor``), not a count of the brokers up now: a topic created
        while a node is down would keep one replica fewer for good."""
        if self.replication_factor is None:
            topics = [aiokafka_internals.cluster_default_topic(t, self.partitions_for(t)) for t in names]
            if all(t is not None for t in topics):
                return topics
        replication = self.replication_factor
        if replication is None:  # aiokafka no longer lets -1 through: up to 3 of the live brokers
            cluster = await self._admin.describe_cluster()
            replication = max(1, min(3, len(cluster.get("brokers", ()))))
        return [NewTopic(t, self.partitions_for(t), replication) for t in names]

    async def _await_leaders(self, topics: list[str], within: float = 10.0) -> None:
        """Wait (up to ``within`` seconds) until every partition of freshly created topics has
        a leader that answers for it. A client that asks sooner is told the topic is unknown
        ("Topic ... not found in cluster metadata") or that the broker is not its leader
        (with KRaft the metadata names a leader shortly before that broker takes the
        partition), and aiokafka logs it as an error or a warning before retrying."""
        backoff = _common.Backoff(within)
        leaders: dict[int, list[tuple[str, int]]] = {}  # leader node -> its new partitions
        while topics:
            try:
                described = await self._admin.describe_topics(topics)
            except (kafka_errors.KafkaError, OSError) as exc:
                log.debug("describing new topics failed: %r", exc)
                described = []
            for entry in described:
                if entry["topic"] in topics and entry["error_code"] == 0 and entry["partitions"] and all(
                    part["leader"] >= 0 for part in entry["partitions"]
                ):
                    topics = [t for t in topics if t != entry["topic"]]
                    for part in entry["partitions"]:
                        leaders.setdefault(part["leader"], []).append((entry["topic"], part["partition"]))
            if topics and not await backoff.wait():
                log.debug("topics %s have no leader yet after %g s", topics, within)
                return
        backoff.restart()
        while leaders:
            for node, partitions in list(leaders.items()):
                waiting = await aiokafka_internals.partitions_not_led_yet(self._admin, node, partitions)
                if waiting:
                    leaders[node] = waiting
                else:
                    del leaders[node]
            if leaders and not await backoff.wait():
                log.debug("partitions %s not served by their leader yet after %g s", leaders, within)
                return

    # --- publish --------------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send every message and wait until Kafka acknowledged all of them (acks=all).

        >>> await broker.publish([Message("shop_default_normal", b"...", {"nova-id": "1"})])  # doctest: +SKIP
        """
        _common.raise_refusals(await self.publish_each(messages))

    async def publish_each(self, messages: Sequence[Message]) -> list[BaseException | None]:
        """``publish``, with one outcome per message: None once Kafka acknowledged it, else its
        EnqueueError (see ``nova._broker.PublishEach``). The records of one record batch are
        stored or refused together.

        >>> await broker.publish_each([Message("shop_default_normal", b"...")])  # doctest: +SKIP
        [None]
        """
        if self._closed:
            raise ClosedError("KafkaBroker is closed; create a new one")
        topics = list(dict.fromkeys(message.topic for message in messages))
        if any(message.deliver_at is not None for message in messages):
            raise ValidationError("KafkaBroker has no native delay (native_delay_max is None)")
        try:
            await self.ensure_topics(topics)
        except BrokerError as exc:
            raise EnqueueError(f"cannot publish: {exc}") from exc
        producer = self._producer
        outcomes: list[BaseException | None] = [None] * len(messages)
        sendable: Sequence[int] = range(len(messages))
        limit = self.max_message_bytes
        if limit is not None and any(len(message.body) > limit for message in messages):
            # Refused here, not sent: a record Kafka refuses leaves the idempotent producer's
            # sequence for its partition broken, which fails every later record sent there.
            sendable = []
            for i, message in enumerate(messages):
                if len(message.body) > limit:
                    outcomes[i] = EnqueueError(f"a message of {len(message.body)} bytes is over max_message_bytes "
                                               f"({limit}): send a reference to the data instead")
                else:
                    sendable.append(i)
        pending: list[tuple[asyncio.Future[Any], Sequence[int]]] = []  # (ack future, the messages it covers)
        if len(sendable) < len(messages):
            topics = list(dict.fromkeys(messages[i].topic for i in sendable))
        for (topic, partition), indexes in (await self._by_partition(messages, sendable, topics)).items():
            rest = indexes
            if len(indexes) >= _BATCH_MIN and aiokafka_internals.nothing_queued(producer, topic, partition):
                # Record batches built here: far cheaper than a send() per record. Only when
                # nothing else waits for this partition: send_batch queues behind a pending
                # batch, and many concurrent callers would take turns.
                rest = await self._send_batches(producer, messages, indexes, topic, partition, pending, outcomes)
            for i in rest:
                message = messages[i]
                try:
                    future = await producer.send(topic, value=message.body, key=_key(message),
                                                 headers=self._packer.headers(message), partition=partition)
                except (kafka_errors.KafkaError, OSError) as exc:
                    self._refuse(outcomes, (i,), exc)
                    continue
                pending.append((future, (i,)))
        # Wait for every ack even after a failure, so none is left unobserved.
        results = await asyncio.gather(*(future for future, _ in pending), return_exceptions=True)
        for result, (_, covered) in zip(results, pending, strict=True):
            if isinstance(result, BaseException):
                self._refuse(outcomes, covered, result)
            elif self._subscriptions:
                # Our own subscriptions learn the new end offsets for free, so backlog()
                # sees a task this process just published (strict priority relies on it).
                for sub in self._subscriptions:
                    sub._note_end_offset(result.topic, result.partition, result.offset + len(covered))
        return outcomes

    async def _send_batches(
        self, producer: Any, messages: Sequence[Message], indexes: Sequence[int], topic: str, partition: int,
        pending: list[tuple[asyncio.Future[Any], Sequence[int]]], outcomes: list[BaseException | None],
    ) -> Sequence[int]:
        """Send ``indexes`` of ``messages`` to one partition as record batches of nova's making
        (up to ``_MAX_BATCH_BYTES`` each, in order); returns the ones left for ``send``."""
        headers = self._packer.headers
        done = 0
        while done < len(indexes):
            builder = producer.create_batch()
            count = 0
            for i in indexes[done:]:
                message = messages[i]
                if builder.append(timestamp=None, key=_key(message), value=message.body,
                                  headers=headers(message)) is None:
                    break  # full (a batch always takes its first record)
                count += 1
            if count == 0:
                break
            covered = indexes[done:done + count]
            done += count
            try:
                pending.append((await producer.send_batch(builder, topic, partition=partition), covered))
            except (kafka_errors.KafkaError, OSError) as exc:
                self._refuse(outcomes, covered, exc)
        return indexes[done:]

    def _refuse(self, outcomes: list[BaseException | None], covered: Sequence[int], exc: BaseException) -> None:
        """Mark the messages ``covered`` as refused because of ``exc`` (one error for all of them)."""
        error: BaseException
        if isinstance(exc, kafka_errors.ProducerClosed) and self._closed:
            error = ClosedError("KafkaBroker was closed while publishing")
        else:
            what = "Kafka did not acknowledge the message" if len(covered) == 1 else (
                f"Kafka did not acknowledge a record batch of {len(covered)} messages")
            error = EnqueueError(str(self._translate(exc, what)))
        error.__cause__ = exc
        for i in covered:
            outcomes[i] = error

    async def _by_partition(
        self, messages: Sequence[Message], indexes: Sequence[int], topics: Sequence[str]
    ) -> dict[tuple[str, int], Sequence[int]]:
        """Spread the messages at ``indexes`` (their topics: ``topics``) over their topic's
        partitions, round robin, order kept per partition.

        Keys are task ids (unique), so hashing them buys no ordering; one record batch per
        partition per call is what makes a batch publish cheap.
        """
        groups: dict[tuple[str, int], Sequence[int]] = {}
        for topic in topics:
            same: Sequence[int] = indexes if len(topics) == 1 else [i for i in indexes if messages[i].topic == topic]
            ids = sorted(await self._producer.partitions_for(topic))
            turn = self._turns.get(topic, 0)
            self._turns[topic] = turn + len(same)
            for first in range(min(len(ids), len(same))):  # every len(ids)-th message, from `first`
                groups[topic, ids[(turn + first) % len(ids)]] = same[first::len(ids)]
        return groups

    # --- subscribe ------------------------------------------------------------------------------

    async def subscribe(self, topics: Sequence[str], *, group: str, window: int) -> KafkaSubscription:
        """Join consumer group ``group`` on ``topics``; returns once partitions are assigned.

        >>> sub = await broker.subscribe(["shop_default_normal"], group="g", window=16)  # doctest: +SKIP
        """
        if self._closed:
            raise ClosedError("KafkaBroker is closed; create a new one")
        if window < 1:
            raise ConfigurationError(f"window must be >= 1, not {window!r}")
        await self.ensure_topics(topics)
        sub = KafkaSubscription(self, list(topics), group, window)
        await sub._start()
        self._subscriptions.add(sub)
        return sub

    async def close(self) -> None:
        """Close subscriptions, the producer and the admin client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        if self._producer is not None:
            await _common.quietly(self._producer.stop(), log, "stopping the Kafka producer")
        if self._admin is not None:
            await _common.quietly(self._admin.close(), log, "closing the Kafka admin client")
        self._producer = self._admin = None
