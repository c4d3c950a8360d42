"""Kafka backend on aiokafka.

    broker = KafkaBroker("127.0.0.1:9092", group_id="billing", topic_prefix="shop")
    broker = KafkaBroker.from_url("kafka://127.0.0.1:9092?group_id=billing&topic_prefix=shop")
    broker = KafkaBroker(
        "kafka1:9096",
        auth=KafkaAuth("SASL_SSL", "SCRAM-SHA-256", "alice", "s3cret"),
        ssl=KafkaSSL(ca_file="/etc/kafka/ca.pem"),
    )

How the broker contract maps onto Kafka:

- **publish**: an idempotent producer with ``acks=all``; ``publish`` returns once
  every record is acknowledged, else raises ``EnqueueError`` from the cause.
  Messages are spread round robin over a topic's partitions; a call with many
  messages for a partition builds its own record batch, small calls share the
  producer's batches. A message's headers travel together as one Kafka header,
  ``nova``, holding a JSON object with nova's header names shortened to one letter
  (``{"i": "<nova-id>", "t": "<nova-type>", ...}``, see ``_PACKED_NAMES``; other names
  are kept, escaped with "=" where they could be mistaken for one of those): aiokafka
  parses and builds seven headers per record at about three times the cost of one,
  on both ends (end to end ~15-20 % faster), and the short names make a record ~20 %
  smaller. Packed headers with the full names are read too, and so are records with
  ordinary Kafka headers (another producer's), their values as utf-8 text.
  ``key`` is the record key (not used for partitioning: task ids buy no ordering).
- **topics**: created with the admin client (``ensure_topics``; ``publish`` and
  ``subscribe`` also ensure the topics they touch, once per process), with
  ``partitions`` partitions and a replication factor of ``min(3, brokers)``
  unless ``replication_factor`` is given. Existing topics are left as they are.
- **consume**: manual commits only. Each partition tracks its delivered offsets;
  the committed offset is the lowest one not yet acked, so out-of-order acks
  from concurrent handlers never commit past unfinished work. Commits are
  batched (every ``commit_interval_ms``, on partition revoke and on close).
- **window**: at most ``window`` unacked deliveries per partition. Fetching is
  bounded apart: a partition with ``max(window, 4096)`` fetched records not yet
  handed out is ``pause()``d while the poll loop keeps calling ``getmany`` for
  the others, so a delivery may stay unacked for as long as it likes without
  exceeding ``max_poll_interval_ms``. Pauses are re-applied after a rebalance.
- **nack**: the record goes back to the front of its partition's local queue
  and is delivered again by this member (its offset stays uncommitted, so if
  the partition moves to another member first, that member gets it instead).
- **rebalance**: on revoke the records fetched but not yet delivered are
  dropped and the acked prefix is committed; a partition that comes back keeps
  its bookkeeping, so in-flight deliveries are not handed out twice. A sticky
  assignor keeps partitions with their owners and never moves one that has
  unacked deliveries while its owner lives (so a worker or delay forwarder
  joining the group does not duplicate the messages another one holds).
- ``auto_commit=True`` is an explicit **at-most-once** mode: an offset counts as
  done as soon as it is delivered, whatever the handler does; ``nack`` then
  does not redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl as _ssl
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from nova._broker import Delivery, Message
from nova._envelope import H
from nova._errors import (
    AuthenticationError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConnectionError,  # noqa: A004 - nova's, a subclass of the builtin
    EnqueueError,
    ValidationError,
)
from nova._naming import validate_group, validate_prefix

try:
    import aiokafka  # type: ignore[import-untyped]
    import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]
    import orjson
    from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from aiokafka.conn import AIOKafkaConnection  # type: ignore[import-untyped]
    from aiokafka.coordinator.assignors.roundrobin import (  # type: ignore[import-untyped]
        RoundRobinPartitionAssignor,
    )
    from aiokafka.coordinator.protocol import (  # type: ignore[import-untyped]
        ConsumerProtocolMemberAssignment,
        ConsumerProtocolMemberMetadata,
    )
    from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]
    from aiokafka.protocol.offset import OffsetRequest  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("nova.KafkaBroker needs aiokafka and orjson: pip install 'nova-taskqueue[kafka]'") from exc

if TYPE_CHECKING:
    from nova._clock import Clock

__all__ = ["KafkaAuth", "KafkaBroker", "KafkaSSL"]

log = logging.getLogger("nova.kafka")

_PREFETCH_RECORDS = 4096  # fetched, not yet delivered records per partition before pausing it
_LONG_POLL_MS = 100  # how long a fetch waits at the broker for records to arrive
_SHORT_POLL_MS = 10  # the same while one of the member's partitions is paused (see _poll_wait)
_BATCH_MIN = 16  # messages for one partition in one publish call worth building a record batch for
_MAX_BATCH_BYTES = 512 * 1024  # record batches stay well under Kafka's default message.max.bytes (1 MiB)


_PACKED = "nova"  # the Kafka header that carries all of a message's headers (see the module docstring)
# How the packed header names nova's headers. Any other name is written as it is, unless it
# is one of these letters or begins with "=": then with one more "=" in front.
_PACKED_NAMES = {H.ID: "i", H.TYPE: "t", H.QUEUE: "q", H.PRIORITY: "p", H.ATTEMPT: "a", H.CONTENT_TYPE: "c",
                 H.ENQUEUED_AT: "e", H.ETA: "d", H.TARGET: "g", H.HOLD_UNTIL: "h", H.HEADERS: "u", H.ERROR: "x"}
_FULL_NAMES = {short: full for full, short in _PACKED_NAMES.items()}


def _packed_name(name: str) -> str:
    short = _PACKED_NAMES.get(name)
    if short is not None:
        return short
    return "=" + name if name in _FULL_NAMES or name.startswith("=") else name


def _full_name(name: str) -> str:
    if name.startswith("="):
        return name[1:]
    return _FULL_NAMES.get(name, name)


_ID = H.ID
_ID_FIRST = b'{"i":"'  # how nova's packed header begins: the id comes first (see task_headers)
_ID_AT = len(_ID_FIRST)
_ID_KEYS = (b'"i"', b'"nova-id"')  # an id's key, short or full, anywhere after the first


def _pack(headers: Mapping[str, str]) -> bytes:
    return orjson.dumps({_packed_name(name): value for name, value in headers.items()})


def _headers(message: Message) -> list[tuple[str, bytes]]:
    """A message's headers as Kafka headers: one, ``nova``, packed (see the module docstring)."""
    return [(_PACKED, _pack(message.headers))] if message.headers else []


class _Packer:
    """``_headers``, packing once per run of messages that differ only in the id (the
    tasks of one ``enqueue_batch``): such a message's packed header is the previous
    one's with its own id. One per broker."""

    __slots__ = ("_probe", "_rest")

    def __init__(self) -> None:
        self._probe: dict[str, str] | None = None  # the headers the rest was packed from
        self._rest = b""  # their packed header after the id: '",<the others>}'

    def headers(self, message: Message) -> list[tuple[str, bytes]]:
        headers = message.headers
        if not headers:
            return []
        task_id = headers.get(_ID)
        if task_id is None or not (task_id.isascii() and task_id.isalnum()):  # not written as it is
            return [(_PACKED, _pack(headers))]
        probe = self._probe
        if probe is not None:
            probe[_ID] = task_id
            if headers == probe:
                return [(_PACKED, b"".join((_ID_FIRST, task_id.encode(), self._rest)))]
        packed = _pack(headers)
        end = _ID_AT + len(task_id)
        if packed.startswith(_ID_FIRST) and packed[end : end + 1] == b'"':  # the id came first
            self._probe, self._rest = dict(headers), packed[end:]
        return [(_PACKED, packed)]


def _decode_headers(raw: Any) -> dict[str, str]:
    """A record's headers as text: nova's packed header, or Kafka headers one by one (bytes
    that are not UTF-8 are replaced, not fatal)."""
    if not raw:
        return {}
    if raw[0][0] == _PACKED:
        packed = _unpack(raw[0][1])
        if packed is not None:
            return packed if len(raw) == 1 else {**_decode_plain(raw[1:]), **packed}
    return _decode_plain(raw)


def _unpack(value: bytes | None) -> dict[str, str] | None:
    """The packed header's JSON object of strings, with nova's full header names; None if
    it is not one."""
    try:
        packed = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if type(packed) is not dict:
        return None
    try:
        "".join(packed.values())  # every value a string (the keys of a JSON object are)
    except TypeError:
        return None
    strings: dict[str, str] = packed
    return {_full_name(name): value for name, value in strings.items()}


class _PackedHeaders:
    """Decodes packed headers, parsing once per run of records that differ only in the id.

    The tasks of one ``enqueue_batch`` share every header but their id, which nova
    writes first: ``{"i":"<id>",<rest>``. When a record's ``<rest>`` is the
    previous one's and its id is plain (letters and digits, as nova's own ids),
    its headers are that parse with the new id; anything else is parsed. One per
    subscription.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        # The current run: (its <rest> from the id's closing quote on, its parse, where the
        # id of its last record ended)
        self._last: tuple[bytes, dict[str, str], int] | None = None

    def run(self, raw: Any) -> tuple[dict[str, str], str] | None:
        """(The parse of this record's run, the same dict for every record of it: never
        change it; this record's id), or None if the record is not one nova packed."""
        last = self._last
        if last is not None and len(raw) == 1:
            # Of the run: its <rest> (from the id's closing quote on) right after an id as long
            # as the last record's, and a plain id: the id's place is known, nothing to search.
            name, value = raw[0]
            rest, headers, end = last
            if (
                value is not None
                and len(value) - len(rest) == end
                and name == _PACKED
                and value.endswith(rest)
                and value.startswith(_ID_FIRST)
            ):
                raw_id = value[_ID_AT:end]
                if raw_id.isalnum():
                    return headers, raw_id.decode("ascii")
        return self._new_run(raw)

    def _new_run(self, raw: Any) -> tuple[dict[str, str], str] | None:
        if not raw or len(raw) != 1 or raw[0][0] != _PACKED:
            return None
        value: bytes = raw[0][1] or b""
        end = value.find(b'"', _ID_AT) if value.startswith(_ID_FIRST) else -1
        if end <= _ID_AT:
            return None
        raw_id = value[_ID_AT:end]
        if not raw_id.isalnum():
            return None
        task_id = raw_id.decode("ascii")
        last = self._last
        if last is not None and len(value) - len(last[0]) == end and value.endswith(last[0]):
            self._last = (last[0], last[1], end)  # the run goes on with ids of another length
            return last[1], task_id
        headers = _decode_headers(raw)
        rest = value[end:]
        if headers.get(_ID) != task_id or any(key in rest for key in _ID_KEYS):
            return None
        self._last = (rest, headers, end)
        return headers, task_id

    def decode(self, raw: Any) -> dict[str, str]:
        run = self.run(raw)
        if run is None:
            return _decode_headers(raw)
        shared, task_id = run
        headers = shared.copy()
        headers[_ID] = task_id  # the id's key stays first
        return headers


def _decode_plain(raw: Any) -> dict[str, str]:
    try:
        return {k: v.decode() for k, v in raw}
    except UnicodeDecodeError:
        return {k: v.decode("utf-8", "replace") for k, v in raw}
    except AttributeError:  # a header without a value (None)
        return {k: (v or b"").decode("utf-8", "replace") for k, v in raw}


class _Backoff:
    """Pauses doubling from 5 ms to 0.2 s, until a deadline ``within`` seconds from now."""

    def __init__(self, within: float) -> None:
        self.deadline = time.monotonic() + within
        self.restart()

    def restart(self) -> None:
        """The next pause is the first one again (the deadline stays)."""
        self.pause = 0.005

    async def wait(self) -> bool:
        """Sleep the next pause; False, without sleeping, if it would end past the deadline."""
        if time.monotonic() + self.pause > self.deadline:
            return False
        await asyncio.sleep(self.pause)
        self.pause = min(2 * self.pause, 0.2)
        return True


def _key(message: Message) -> bytes | None:
    return None if message.key is None else message.key.encode()

SecurityProtocol = Literal["SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class KafkaAuth:
    """SASL credentials. The password never appears in ``repr`` or error messages.

    >>> KafkaAuth("SASL_SSL", "SCRAM-SHA-256", "alice", "s3cret")
    KafkaAuth(security_protocol='SASL_SSL', mechanism='SCRAM-SHA-256', username='alice')
    """

    security_protocol: SecurityProtocol
    mechanism: SaslMechanism
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if self.security_protocol not in _PROTOCOLS:
            raise ConfigurationError(
                f"KafkaAuth security_protocol {self.security_protocol!r} is invalid: use one of {', '.join(_PROTOCOLS)}"
            )
        if self.mechanism not in _MECHANISMS:
            raise ConfigurationError(
                f"KafkaAuth mechanism {self.mechanism!r} is invalid: use one of {', '.join(_MECHANISMS)}"
            )
        if not self.username:
            raise ConfigurationError("KafkaAuth username is empty")


@dataclass(frozen=True, slots=True)
class KafkaSSL:
    """TLS settings: the CA that signs the brokers' certificates, and optionally a
    client certificate for mutual TLS (``password`` unlocks an encrypted key).

    >>> KafkaSSL(ca_file="/etc/kafka/ca.pem")
    KafkaSSL(ca_file='/etc/kafka/ca.pem', cert_file=None, key_file=None, check_hostname=True)
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    password: str | None = field(default=None, repr=False)
    check_hostname: bool = True

    def context(self) -> _ssl.SSLContext:
        """An ``ssl.SSLContext`` for these settings (system CAs when ``ca_file`` is None)."""
        if self.key_file is not None and self.cert_file is None:
            raise ConfigurationError("KafkaSSL key_file needs cert_file")
        try:
            ctx: _ssl.SSLContext = create_ssl_context(
                cafile=self.ca_file,
                certfile=self.cert_file,
                keyfile=self.key_file,
                password=self.password,
            )
        except (OSError, _ssl.SSLError) as exc:
            # Name the files, never the password.
            raise ConfigurationError(
                f"cannot load TLS files (ca_file={self.ca_file!r}, cert_file={self.cert_file!r}, "
                f"key_file={self.key_file!r}): {exc}"
            ) from exc
        ctx.check_hostname = self.check_hostname
        return ctx


class KafkaBroker:
    """Kafka backend (see the module docstring for the semantics).

    >>> broker = KafkaBroker("127.0.0.1:9092", group_id="billing", partitions=3)
    >>> broker.group_id, broker.native_delay_max
    ('billing', None)

    ``group_id``, ``topic_prefix`` and ``delay_slots`` set here override the
    TaskQueue's. ``delay_slots=(count, duration)`` is passed to the engine's delay
    tiers; precision never depends on it.
    """

    clock: Clock | None = None
    #: Kafka has no per-message delay; the engine's delay tiers do the work.
    native_delay_max: timedelta | None = None

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        group_id: str | None = None,
        topic_prefix: str | None = None,
        auto_commit: bool = False,
        session_timeout_ms: int = 30000,
        heartbeat_interval_ms: int = 1000,
        max_poll_interval_ms: int = 300000,
        delay_slots: tuple[int, timedelta | float] | None = None,
        auth: KafkaAuth | None = None,
        ssl: KafkaSSL | None = None,
        partitions: int = 1,
        replication_factor: int | None = None,
        max_message_bytes: int = 1_000_000,
        commit_interval_ms: int = 200,
        request_timeout_ms: int = 40000,
        connect_timeout_s: float = 10.0,
        client_id: str = "nova",
    ) -> None:
        servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
        self.bootstrap_servers = [s.strip() for part in servers for s in part.split(",") if s.strip()]
        if not self.bootstrap_servers:
            raise ConfigurationError("KafkaBroker needs at least one bootstrap server (host:port)")
        for server in self.bootstrap_servers:
            _split_host_port(server)
        self.group_id = None if group_id is None else validate_group(group_id)
        self.topic_prefix = None if topic_prefix is None else validate_prefix(topic_prefix)
        self.delay_slots = _delay_slots(delay_slots)
        if auth is not None and not isinstance(auth, KafkaAuth):
            raise ConfigurationError(f"auth must be a KafkaAuth, not {type(auth).__name__}")
        if ssl is not None and not isinstance(ssl, KafkaSSL):
            raise ConfigurationError(f"ssl must be a KafkaSSL, not {type(ssl).__name__}")
        if auth is not None and auth.security_protocol == "SASL_PLAINTEXT" and ssl is not None:
            raise ConfigurationError("KafkaAuth('SASL_PLAINTEXT', ...) does not use TLS: drop ssl= or use SASL_SSL")
        for name, value in (
            ("partitions", partitions),
            ("session_timeout_ms", session_timeout_ms),
            ("heartbeat_interval_ms", heartbeat_interval_ms),
            ("max_poll_interval_ms", max_poll_interval_ms),
            ("max_message_bytes", max_message_bytes),
            ("commit_interval_ms", commit_interval_ms),
            ("request_timeout_ms", request_timeout_ms),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive int, not {value!r}")
        if replication_factor is not None and replication_factor < 1:
            raise ConfigurationError(f"replication_factor must be >= 1, not {replication_factor!r}")
        if heartbeat_interval_ms >= session_timeout_ms:
            raise ConfigurationError("heartbeat_interval_ms must be below session_timeout_ms")
        self.auth = auth
        self.ssl = ssl
        self.auto_commit = auto_commit
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.max_message_bytes: int | None = max_message_bytes
        self.commit_interval_ms = commit_interval_ms
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self.client_id = client_id
        self._security_protocol = (
            auth.security_protocol if auth is not None else ("SSL" if ssl is not None else "PLAINTEXT")
        )
        self._ssl_context: _ssl.SSLContext | None = None
        self._producer: Any = None
        self._admin: Any = None
        self._connect_lock = asyncio.Lock()
        self._topics_lock = asyncio.Lock()
        self._known_topics: set[str] = set()
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
        parts = urlsplit(url)
        if parts.scheme != "kafka":
            raise ConfigurationError(f"not a kafka:// URL: {_redact_url(url)!r}")
        netloc = parts.netloc
        username = password = None
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            username, _, password = userinfo.partition(":")
            username, password = unquote(username), unquote(password)
        if not netloc:
            raise ConfigurationError(f"kafka URL has no host: {_redact_url(url)!r}")
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        kwargs: dict[str, Any] = {}
        ints = ("partitions", "replication_factor", "session_timeout_ms", "max_poll_interval_ms")
        for key in ints:
            if key in query:
                try:
                    kwargs[key] = int(query.pop(key))
                except ValueError:
                    raise ConfigurationError(f"kafka URL option {key} must be an integer") from None
        for key in ("group_id", "topic_prefix"):
            if key in query:
                kwargs[key] = query.pop(key)
        if "auto_commit" in query:
            kwargs["auto_commit"] = _parse_bool("auto_commit", query.pop("auto_commit"))
        protocol = query.pop("security_protocol", None)
        mechanism = query.pop("sasl_mechanism", "PLAIN")
        files = {k: query.pop(k) for k in ("ca_file", "cert_file", "key_file") if k in query}
        if query:
            raise ConfigurationError(f"unknown kafka URL option(s): {', '.join(sorted(query))}")
        if protocol is None:
            protocol = "SASL_PLAINTEXT" if username else ("SSL" if files else "PLAINTEXT")
        protocol = protocol.upper()
        if protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl"] = KafkaSSL(files.get("ca_file"), files.get("cert_file"), files.get("key_file"))
        elif files:
            raise ConfigurationError("ca_file/cert_file/key_file need security_protocol SSL or SASL_SSL")
        if protocol.startswith("SASL_"):
            if not username:
                raise ConfigurationError(f"security_protocol {protocol} needs user:password@ in the URL")
            kwargs["auth"] = KafkaAuth(protocol, mechanism.upper(), username, password or "")  # type: ignore[arg-type]
        elif protocol not in ("PLAINTEXT", "SSL"):
            raise ConfigurationError(
                f"security_protocol {protocol!r} is invalid: use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            )
        elif username:
            raise ConfigurationError("credentials in the URL need security_protocol SASL_PLAINTEXT or SASL_SSL")
        kwargs.update(overrides)
        return cls(netloc.split(","), **kwargs)

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
                await _quietly(producer.stop())
                await _quietly(admin.close())
                if isinstance(exc, kafka_errors.KafkaError | OSError):
                    raise self._translate(exc, "cannot start the Kafka producer") from exc
                raise
            self._producer, self._admin = producer, admin

    async def _probe(self) -> None:
        """Open one connection to a bootstrap server so its real error surfaces
        (aiokafka's own bootstrap only logs it and says "Unable to bootstrap")."""
        errors: list[tuple[str, BaseException]] = []
        for server in self.bootstrap_servers:
            host, port = _split_host_port(server)
            kw = self._client_kwargs()
            del kw["bootstrap_servers"]
            kw["request_timeout_ms"] = int(self.connect_timeout_s * 1000)
            conn = AIOKafkaConnection(host, port, **kw)
            try:
                await asyncio.wait_for(conn.connect(), self.connect_timeout_s)
            except (OSError, kafka_errors.KafkaError, TimeoutError) as exc:
                errors.append((server, exc))
                if _is_auth_failure(exc):
                    break  # the same credentials will be refused everywhere
                continue
            else:
                return
            finally:
                await _closed(conn)
        server, error = errors[-1]
        raise self._translate(error, f"cannot connect to Kafka at {server}") from error

    def _translate(self, exc: BaseException, what: str) -> BrokerError:
        """A nova error naming what went wrong (never the password)."""
        if isinstance(exc, _ssl.SSLCertVerificationError):
            return AuthenticationError(
                f"{what}: the broker's TLS certificate is not trusted ({exc.verify_message}); "
                f"check KafkaSSL(ca_file=...) (now {self.ssl.ca_file if self.ssl else None!r})"
            )
        if isinstance(exc, _ssl.SSLError):
            return AuthenticationError(f"{what}: TLS handshake failed ({exc}); check KafkaSSL settings")
        if isinstance(exc, kafka_errors.SaslAuthenticationFailed | kafka_errors.UnsupportedSaslMechanismError):
            assert self.auth is not None
            return AuthenticationError(
                f"{what}: the broker refused user {self.auth.username!r} with SASL "
                f"{self.auth.mechanism} over {self.auth.security_protocol} ({exc}); check the username "
                "and password"
            )
        if isinstance(exc, kafka_errors.TopicAuthorizationFailedError | kafka_errors.GroupAuthorizationFailedError):
            return AuthenticationError(f"{what}: not authorized ({exc})")
        if isinstance(exc, TimeoutError | kafka_errors.KafkaTimeoutError):
            return ConnectionError(
                f"{what}: no answer within {self.connect_timeout_s:g} s; is it running, and is it a "
                f"{self._security_protocol} listener?"
            )
        if isinstance(exc, OSError | kafka_errors.KafkaConnectionError):
            return ConnectionError(
                f"{what}: {exc} (this client speaks {self._security_protocol}: check the address and "
                "that the listener expects that protocol)"
            )
        return BrokerError(f"{what}: {exc}")

    # --- topics ---------------------------------------------------------------------------------

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create the topics that do not exist yet (existing ones are left alone)."""
        missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
        if not missing:
            return
        await self.connect()
        async with self._topics_lock:
            missing = [t for t in missing if t not in self._known_topics]
            if not missing:
                return
            try:
                replication = self.replication_factor
                if replication is None:
                    cluster = await self._admin.describe_cluster()
                    replication = max(1, min(3, len(cluster.get("brokers", ()))))
                response = await self._admin.create_topics([NewTopic(t, self.partitions, replication) for t in missing])
            except (kafka_errors.KafkaError, OSError) as exc:
                raise self._translate(exc, f"cannot create topics {missing}") from exc
            for entry in response.topic_errors:
                topic, code = entry[0], entry[1]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    error = kafka_errors.for_code(code)
                    raise BrokerError(f"cannot create topic {topic!r}: {error.__name__} ({entry[2:]})")
            await self._await_leaders(missing)
            self._known_topics.update(missing)

    async def _await_leaders(self, topics: list[str], within: float = 10.0) -> None:
        """Wait (up to ``within`` seconds) until every partition of freshly created topics has
        a leader that answers for it. A client that asks sooner is told the topic is unknown
        ("Topic ... not found in cluster metadata") or that the broker is not its leader
        (KRaft shows the leader in the metadata ~10-40 ms before the broker takes the
        partition), and aiokafka logs it as an error or a warning before retrying."""
        backoff = _Backoff(within)
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
                waiting = await self._not_led_yet(node, partitions)
                if waiting:
                    leaders[node] = waiting
                else:
                    del leaders[node]
            if leaders and not await backoff.wait():
                log.debug("partitions %s not served by their leader yet after %g s", leaders, within)
                return

    async def _not_led_yet(self, node: int, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The partitions whose leader ``node`` does not answer for yet: one ListOffsets
        request (aiokafka internals; anything unexpected counts as answered)."""
        by_topic: dict[str, list[tuple[int, int]]] = {}
        for topic, partition in partitions:
            by_topic.setdefault(topic, []).append((partition, -1))  # -1: the latest offset
        try:
            response = await self._admin._client.send(node, OffsetRequest(-1, 0, list(by_topic.items())))
            return [(topic, answer[0]) for topic, answers in response.topics for answer in answers if answer[1]]
        except (kafka_errors.KafkaError, OSError, AttributeError, TypeError, IndexError) as exc:
            log.debug("asking the leaders of new partitions failed: %r", exc)
            return []

    # --- publish --------------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send every message and wait until Kafka acknowledged all of them (acks=all).

        >>> await broker.publish([Message("shop_default_normal", b"...", {"nova-id": "1"})])  # doctest: +SKIP
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
        pending: list[tuple[asyncio.Future[Any], int]] = []  # (ack future, records it covers)
        first_error: BaseException | None = None
        try:
            for (topic, partition), group in (await self._by_partition(messages, topics)).items():
                rest = group
                if len(group) >= _BATCH_MIN and self._nothing_queued(topic, partition):
                    # One record batch built here: far cheaper than a send() per record.
                    # Only when nothing else waits for this partition: send_batch queues
                    # behind a pending batch, and many concurrent callers would take turns.
                    builder = producer.create_batch()
                    count = 0
                    headers = self._packer.headers
                    for message in group:
                        if builder.append(timestamp=None, key=_key(message), value=message.body,
                                          headers=headers(message)) is None:
                            break  # full: the rest joins the producer's own batches
                        count += 1
                    pending.append((await producer.send_batch(builder, topic, partition=partition), count))
                    rest = group[count:]
                for message in rest:
                    future = await producer.send(topic, value=message.body, key=_key(message),
                                                 headers=self._packer.headers(message), partition=partition)
                    pending.append((future, 1))
        except (kafka_errors.KafkaError, OSError) as exc:
            first_error = exc
        # Wait for every ack even after a failure, so none is left unobserved.
        results = await asyncio.gather(*(future for future, _ in pending), return_exceptions=True)
        failed = 0
        for result, (_, count) in zip(results, pending, strict=True):
            if isinstance(result, BaseException):
                first_error = first_error or result
                failed += count
            elif self._subscriptions:
                # Our own subscriptions learn the new end offsets for free, so backlog()
                # sees a task this process just published (strict priority relies on it).
                for sub in self._subscriptions:
                    sub._note_end_offset(result.topic, result.partition, result.offset + count)
        if first_error is not None:
            if isinstance(first_error, kafka_errors.ProducerClosed) and self._closed:
                raise ClosedError("KafkaBroker was closed while publishing") from first_error
            raise EnqueueError(
                f"Kafka did not acknowledge {failed or 'all'} of {len(messages)} message(s): {first_error!r}"
            ) from first_error

    def _nothing_queued(self, topic: str, partition: int) -> bool:
        """No batch for this partition is waiting in the producer (aiokafka internals: False
        when they are not where expected, which only means the slower path)."""
        try:
            return not self._producer._message_accumulator._batches.get(aiokafka.TopicPartition(topic, partition))
        except AttributeError:
            return False

    async def _by_partition(
        self, messages: Sequence[Message], topics: Sequence[str]
    ) -> dict[tuple[str, int], Sequence[Message]]:
        """Spread messages over their topic's partitions, round robin, order kept per partition.

        Keys are task ids (unique), so hashing them buys no ordering; one record batch per
        partition per call is what makes a batch publish cheap.
        """
        groups: dict[tuple[str, int], Sequence[Message]] = {}
        for topic in topics:
            same = messages if len(topics) == 1 else [m for m in messages if m.topic == topic]
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
            await _quietly(self._producer.stop())
        if self._admin is not None:
            await _quietly(self._admin.close())
        self._producer = self._admin = None


class KafkaDelivery:
    """One consumed record. ``partition`` and ``offset`` say where it came from."""

    __slots__ = ("_headers", "_record", "_settled", "_state", "_sub", "topic")

    def __init__(self, sub: KafkaSubscription, state: _PartitionState, record: Any) -> None:
        self._sub = sub
        self._state = state
        self._record = record
        self._settled = False
        self._headers: dict[str, str] | None = None
        self.topic: str = state.tp.topic

    # Read from the record when asked: the engine only reads topic, headers and body.
    @property
    def partition(self) -> int:
        return int(self._state.tp.partition)

    @property
    def offset(self) -> int:
        return int(self._record.offset)

    @property
    def key(self) -> str | None:
        key: bytes | None = self._record.key
        return None if key is None else key.decode("utf-8", "replace")

    @property
    def headers(self) -> Mapping[str, str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = self._sub._packed.decode(self._record.headers)
        return headers

    @property
    def published_at(self) -> float:
        return float(self._record.timestamp) / 1000

    @property
    def owned(self) -> bool:
        """False once a rebalance gave this record's partition to another member, which
        will deliver it again: a holder (like the delay forwarder) should nack and drop it."""
        return self._state.current

    @property
    def body(self) -> bytes:
        value: bytes | None = self._record.value
        return b"" if value is None else value

    async def ack(self) -> None:
        """Done: the offset may be committed once everything below it is done too."""
        if not self._settled:
            self._settled = True
            self._sub._settle(self._state, self._record, done=True)

    async def nack(self) -> None:
        """Give it back: this member delivers it again (the offset stays uncommitted)."""
        if not self._settled:
            self._settled = True
            self._sub._settle(self._state, self._record, done=False)

    def __repr__(self) -> str:
        return f"KafkaDelivery(topic={self.topic!r}, partition={self.partition}, offset={self.offset})"


def _bare(tp: Any, record: Any) -> Any:
    """The record maker of nova's fetch results: the parsed record itself."""
    return record


class _BareRecordResults(OrderedDict[Any, Any]):
    """aiokafka's fetched results by partition, whose records come out as they were parsed.

    aiokafka's consumer wraps every record it hands out in a ConsumerRecord (a dataclass
    of eleven fields, ~1 us a record: ~12 % of a nova drain). nova reads five of them, which
    the parsed record (aiokafka's DefaultRecord) has under the same names: offset, timestamp,
    key, value, headers (a list instead of a tuple); topic and partition come from the
    partition's state. This dict replaces the fetcher's ``_records`` and gives each fetch
    result stored in it a record maker that returns the record as it is (only for this
    consumer: nothing of aiokafka's is changed for anyone else). aiokafka internals,
    guarded: if they are not where expected, records stay ConsumerRecords and nothing else
    changes (``tests/brokers/test_kafka.py`` fails then, so an aiokafka upgrade says so).
    """

    def __setitem__(self, tp: Any, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if records is not None and hasattr(records, "_consumer_record"):
            with contextlib.suppress(AttributeError):  # (read-only: it keeps making ConsumerRecords)
                records._consumer_record = _bare
        super().__setitem__(tp, result)


def _hand_over_bare_records(consumer: Any) -> None:
    """Have ``consumer`` hand out parsed records as they are (see _BareRecordResults)."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    results = getattr(fetcher, "_records", None)
    if type(results) is not OrderedDict:
        log.debug("aiokafka's fetcher is not as expected: records come as ConsumerRecords")
        return
    fetcher._records = _BareRecordResults(results)  # results fetched already stay as they are


# What became of a delivered offset (values of _PartitionState.entries).
_HELD = 1  # a handler has it
_DONE = 2  # acked (or, with auto_commit, handed out)
_BACK = 0  # nacked: to deliver again


class _PartitionState:
    __slots__ = ("assigned", "buffer", "commit_to", "committed", "current", "entries", "fetch", "held",
                 "order", "paused", "retry", "tp")  # fmt: skip

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.assigned = True
        self.current = True  # False once dropped from the subscription (its acks do nothing)
        self.paused = False
        self.fetch: Any = None  # aiokafka's fetch state (position, highwater), set on assignment
        self.buffer: deque[Any] = deque()  # fetched, never delivered, in offset order
        self.retry: dict[int, Any] = {}  # nacked records to deliver again, by offset
        self.entries: dict[int, int] = {}  # delivered offsets not yet below the commit point
        self.order: deque[int] = deque()  # the same offsets, lowest first
        self.held = 0  # deliveries a handler holds (the window counts these)
        self.commit_to: int | None = None  # everything below is done
        self.committed: int | None = None

    def advance(self) -> None:
        # A deque, not the dict's first key: a dict used as a FIFO leaves a trail of
        # deleted slots that every "first key" lookup walks again.
        order, entries = self.order, self.entries
        while order and entries[order[0]] == _DONE:
            offset = order.popleft()
            del entries[offset]
            self.commit_to = offset + 1


class _StickyAssignor:
    """Keeps partitions with their owners across rebalances; moves busy ones last.

    aiokafka rebalances eagerly: a member joining makes every member give back all its
    partitions, and round-robin may hand a partition to a new member while the old owner
    still holds deliveries from it (the delay forwarder holds them until due). The new
    owner would read them again from the committed offset: duplicates. Here each member
    sends what it owned and how many unacked deliveries each has (``user_data``); the
    leader keeps every partition with its owner, gives unowned ones to the least loaded
    subscriber, then evens out counts moving idle partitions first and busy ones (fewest
    in flight first) only when idle ones cannot balance the load, so a new member still
    gets work when every partition is busy.
    """

    name = "nova-sticky"
    version = 0

    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    def metadata(self, topics: Any) -> Any:
        parts = self._sub._parts
        data = {
            # The generation settles a partition two members both claim (one was expelled).
            "generation": self._sub._generation,
            "owned": [[tp.topic, tp.partition] for tp in parts],
            "busy": [[tp.topic, tp.partition, state.held] for tp, state in parts.items() if state.held > 0],
        }
        return ConsumerProtocolMemberMetadata(self.version, list(topics), json.dumps(data).encode())

    def on_assignment(self, assignment: Any) -> None:
        pass

    @classmethod
    def assign(cls, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
        subscribed = {m: set(meta.subscription) for m, meta in members.items()}
        owned: dict[tuple[str, int], str] = {}
        busy: dict[tuple[str, int], int] = {}
        claims: dict[str, Any] = {}
        for member in members:
            try:
                claims[member] = json.loads(members[member].user_data or b"{}")
            except ValueError:
                claims[member] = {}
        for member in sorted(members, key=lambda m: (-int(claims[m].get("generation", -1)), m)):
            data = claims[member]
            for topic, partition in data.get("owned", ()):
                if topic in subscribed[member]:
                    owned.setdefault((topic, partition), member)
            for topic, partition, held in data.get("busy", ()):
                if owned.get((topic, partition)) == member:
                    busy[topic, partition] = int(held)
        everything: list[tuple[str, int]] = []
        for topic in sorted(set().union(*subscribed.values())):
            everything += [(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        load: dict[str, list[tuple[str, int]]] = {m: [] for m in members}
        unowned = []
        for tp in everything:
            if tp in owned:
                load[owned[tp]].append(tp)
            else:
                unowned.append(tp)
        for tp in unowned:
            candidates = [m for m in sorted(members) if tp[0] in subscribed[m]]
            load[min(candidates, key=lambda m: len(load[m]))].append(tp)
        # Even out, from the most to the least loaded member: idle partitions first.
        for _ in range(len(everything)):
            heavy = max(sorted(load), key=lambda m: len(load[m]))
            movable = [
                (tp, m)
                for tp in load[heavy]
                for m in sorted(load)
                if tp[0] in subscribed[m] and len(load[m]) + 1 < len(load[heavy])
            ]
            if not movable:
                break
            tp, light = min(movable, key=lambda pair: (busy.get(pair[0], 0), len(load[pair[1]])))
            load[heavy].remove(tp)
            load[light].append(tp)
        result = {}
        for member, tps in load.items():
            by_topic: dict[str, list[int]] = {}
            for topic, partition in sorted(tps):
                by_topic.setdefault(topic, []).append(partition)
            result[member] = ConsumerProtocolMemberAssignment(cls.version, sorted(by_topic.items()), b"")
        return result


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._sub._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._sub._on_assigned(assigned)


class KafkaSubscription:
    """A consumer-group member; iterate it for deliveries. See the module docstring.

    >>> async for delivery in sub:  # doctest: +SKIP
    ...     await delivery.ack()
    """

    def __init__(self, broker: KafkaBroker, topics: list[str], group: str, window: int) -> None:
        self._broker = broker
        self.topics = topics
        self.group = group
        self.window = window
        self._parts: dict[Any, _PartitionState] = {}
        self._rotation = 0
        self._wake = asyncio.Event()
        self._assigned = asyncio.Event()
        self._closing = False
        self._error: BrokerError | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._end_offsets: dict[Any, int] = {}
        self._end_offsets_at = 0.0
        self._by_topic: dict[str, list[_PartitionState]] = {}  # backlog() reads it per task
        self._states: list[_PartitionState] = []  # _parts' values, for _take
        # backlog_nowait's answers until something they count changes: records fetched, handed
        # out or given back, own sends, end offsets, assignment. (A partition's highwater can
        # also move in aiokafka's fetcher, but records past it come through _poll, and a paused
        # partition has a full buffer: its answer is not 0 either way.)
        self._known_backlog: dict[str, int] = {}
        self._packed = _PackedHeaders()
        self._auto_commit = broker.auto_commit
        # Fetched records kept per partition before pausing it: several fetches' worth, so
        # the next fetch is in flight long before the handlers run dry (a pause at one window
        # left them idle for a fetch round trip, up to fetch_max_wait_ms, every few thousand).
        self._buffer_limit = max(window, _PREFETCH_RECORDS)
        self._generation = -1
        self._refresh_task: asyncio.Task[None] | None = None
        b = broker
        self._consumer = aiokafka.AIOKafkaConsumer(
            **b._client_kwargs(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a new group reads what was sent before it joined
            session_timeout_ms=b.session_timeout_ms,
            heartbeat_interval_ms=b.heartbeat_interval_ms,
            max_poll_interval_ms=b.max_poll_interval_ms,
            # Short long-polls: a resumed partition is fetched again within 100 ms.
            fetch_max_wait_ms=_LONG_POLL_MS,
            # Sticky first; round-robin only if another kind of client shares the group.
            partition_assignment_strategy=(_StickyAssignor(self), RoundRobinPartitionAssignor),
        )

    async def _start(self) -> None:
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        try:
            await self._consumer.start()
            _hand_over_bare_records(self._consumer)
        except (kafka_errors.KafkaError, OSError) as exc:
            await _quietly(self._consumer.stop())
            raise self._broker._translate(exc, "cannot start the Kafka consumer") from exc
        self._poll_task = asyncio.create_task(self._poll(), name=f"nova-kafka-poll-{self.group}")
        self._commit_task = asyncio.create_task(self._commit_loop(), name=f"nova-kafka-commit-{self.group}")
        join_timeout = max(30.0, 2 * self._broker.session_timeout_ms / 1000)
        assigned = asyncio.ensure_future(self._assigned.wait())
        try:
            await asyncio.wait({assigned, self._poll_task}, timeout=join_timeout, return_when="FIRST_COMPLETED")
        finally:
            assigned.cancel()
        if not self._assigned.is_set():
            error = self._error
            await self.close()
            if error is not None:
                raise error
            raise ConnectionError(f"consumer group {self.group!r} gave no assignment within {join_timeout:g} s")

    # --- iteration ------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            if self._closing:
                raise StopAsyncIteration
            delivery = self.take_nowait()
            if delivery is not None:
                return delivery
            if self._error is not None:
                raise self._error
            self._wake.clear()
            await self._wake.wait()

    def header_run(self, delivery: Delivery) -> tuple[Mapping[str, str], str] | None:
        """The delivery's headers as one parse per run of records and its id (see HeaderRuns)."""
        return self._packed.run(delivery._record.headers)  # type: ignore[attr-defined]  # (ours: a KafkaDelivery)

    def take_nowait(self) -> KafkaDelivery | None:
        """The next delivery if one is fetched and the window allows it (see InstantDeliveries)."""
        if self._closing:
            return None
        states = self._states
        count = len(states)
        window = self.window
        start = self._rotation if self._rotation < count else 0  # the assignment may have shrunk
        for i in range(count):
            index = start + i
            if index >= count:
                index -= count
            state = states[index]
            if not (state.buffer or state.retry) or state.held >= window or not state.assigned:
                continue
            record = self._next_record(state)
            if record is None:
                continue
            self._rotation = index  # looked at first next time (fewer empty ones scanned)
            state.held += 1
            self._known_backlog.pop(state.tp.topic, None)
            if self._auto_commit:  # at-most-once: done as soon as it is handed out
                state.entries[record.offset] = _DONE
                state.advance()
            if state.paused:
                self._update_pause(state)
            return KafkaDelivery(self, state, record)
        return None

    @staticmethod
    def _next_record(state: _PartitionState) -> Any:
        """The next record to hand out (marked held), nacked ones first; None if none."""
        entries = state.entries
        while state.retry:  # nacked records first, lowest offset first
            record = state.retry.pop(min(state.retry))
            if entries.get(record.offset) == _BACK:
                entries[record.offset] = _HELD
                return record
        if state.buffer:
            record = state.buffer.popleft()
            entries[record.offset] = _HELD
            state.order.append(record.offset)
            return record
        return None

    def _settle(self, state: _PartitionState, record: Any, *, done: bool) -> None:
        if not state.current:
            return  # the partition moved to another member, which delivers it again
        if self._auto_commit:  # already done when handed out; only the window is freed
            state.held -= 1
            self._wake.set()
            return
        offset = record.offset
        if state.entries.get(offset) != _HELD:
            return  # settled already
        state.held -= 1
        if done:
            state.entries[offset] = _DONE
            state.advance()
        else:
            state.entries[offset] = _BACK
            state.retry[offset] = record
            self._known_backlog.pop(state.tp.topic, None)
            self._update_pause(state)
        self._wake.set()

    def _update_pause(self, state: _PartitionState) -> None:
        """Fetch a partition only while fewer than ``_buffer_limit`` fetched records wait to
        be handed out: bounded prefetch. Deliveries a handler holds do not count (``window``
        caps those in ``_take``); pausing on them flipped the partition on every ack."""
        if not state.assigned:
            return
        full = len(state.buffer) + len(state.retry) >= self._buffer_limit
        if full and not state.paused:
            self._consumer.pause(state.tp)
            state.paused = True
            self._poll_wait()
        elif not full and state.paused:
            self._consumer.resume(state.tp)
            state.paused = False
            self._poll_wait()

    def _poll_wait(self) -> None:
        """Short long-polls while a partition is paused.

        aiokafka keeps one fetch in flight per broker. While a partition is paused that fetch
        asks only for the others, and when they have nothing new the broker holds it for the
        whole fetch_max_wait_ms; a partition resumed meanwhile waits for it to come back. At
        100 ms that left the handlers idle once per pause (the last records of the buffer
        take less), so fetches wait 10 ms while one is paused (aiokafka internals: nothing
        changes if they are not where expected).
        """
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            paused = any(state.paused for state in self._states)
            fetcher._fetch_max_wait_ms = _SHORT_POLL_MS if paused else _LONG_POLL_MS

    # --- background -----------------------------------------------------------------------------

    async def _poll(self) -> None:
        # Never blocks on handlers: it only fills buffers, so getmany runs every ~100 ms
        # and max_poll_interval_ms is never exceeded however long deliveries stay unacked.
        while not self._closing:
            try:
                batch = await self._consumer.getmany(timeout_ms=100)
            except Exception as exc:  # noqa: BLE001 - whatever kills polling must reach the iterator
                if isinstance(exc, kafka_errors.KafkaError) and exc.retriable:
                    log.warning("kafka poll failed, retrying: %r", exc)
                    await asyncio.sleep(0.5)
                    continue
                self._error = self._broker._translate(exc, f"consumer group {self.group!r} failed")
                self._error.__cause__ = exc
                log.error("kafka consumer stopped: %r", exc)
                self._wake.set()
                return
            woke = False
            if batch:
                log.debug("fetched %s", {tp: len(r) for tp, r in batch.items()})
            for tp, records in batch.items():
                state = self._parts.get(tp)
                if state is None or not state.assigned or not records:
                    continue
                self._known_backlog.pop(tp.topic, None)
                first = records[0].offset
                if (not state.order or first > state.order[-1]) and (
                    state.commit_to is None or first >= state.commit_to
                ):  # the common case: all new (past every delivered offset and the commit point)
                    state.buffer.extend(records)
                    woke = True
                else:
                    for record in records:
                        if state.commit_to is not None and record.offset < state.commit_to:
                            continue
                        entry = state.entries.get(record.offset)
                        if entry is None:
                            state.buffer.append(record)
                        elif entry == _BACK:
                            state.retry[record.offset] = record  # re-fetched after a rebalance
                        woke = True
                self._update_pause(state)
            if woke:
                self._wake.set()

    async def _commit_loop(self) -> None:
        interval = self._broker.commit_interval_ms / 1000
        while not self._closing:
            await asyncio.sleep(interval)
            await self._commit(limit_s=interval * 10 + 5)

    async def _commit(self, *, limit_s: float, only: Any = None) -> None:
        async with self._commit_lock:
            offsets = {
                tp: state.commit_to
                for tp, state in self._parts.items()
                if state.assigned
                and state.commit_to is not None
                and state.commit_to != state.committed
                and (only is None or tp in only)
            }
            if not offsets:
                return
            try:
                await asyncio.wait_for(self._consumer.commit(offsets), limit_s)
            except Exception as exc:  # noqa: BLE001 - a failed commit is retried, never fatal
                # Nothing is lost: the offsets stay pending and are committed next time.
                log.warning("kafka commit of %s failed, will retry: %r", self.group, exc)
                return
            for tp, offset in offsets.items():
                state = self._parts.get(tp)
                if state is not None:
                    state.committed = offset

    async def _on_revoked(self, revoked: Any) -> None:
        await self._commit(limit_s=10.0, only=set(revoked))
        self._known_backlog.clear()
        for tp in revoked:
            state = self._parts.get(tp)
            if state is not None:
                # Undelivered records are dropped; the next owner reads from the commit point.
                state.assigned = False
                state.paused = False
                state.buffer.clear()
                state.retry.clear()
        self._poll_wait()

    async def _on_assigned(self, assigned: Any) -> None:
        assigned = set(assigned)
        log.debug("group %s assigned %s", self.group, sorted(assigned))
        for tp in list(self._parts):
            if tp not in assigned:
                self._parts.pop(tp).current = False
        for tp in assigned:
            state = self._parts.get(tp)
            if state is None:
                self._parts[tp] = _PartitionState(tp)
            else:
                # Kept across the rebalance: in-flight deliveries stay tracked; the pause is
                # gone (aiokafka resets it), so re-apply it.
                state.assigned = True
                state.committed = None
                state.fetch = None  # a new assignment has new fetch states
                self._update_pause(state)
        self._by_topic = {}
        for tp, state in self._parts.items():
            self._by_topic.setdefault(tp.topic, []).append(state)
        self._states = list(self._parts.values())
        self._known_backlog.clear()
        self._generation = int(getattr(self._consumer._coordinator, "generation", -1))
        self._assigned.set()
        self._wake.set()

    def _note_end_offset(self, topic: str, partition: int, end: int) -> None:
        for tp, state in self._parts.items():
            if tp.partition == partition and tp.topic == topic and state.assigned:
                self._end_offsets[tp] = max(end, self._end_offsets.get(tp, 0))
                self._known_backlog.pop(topic, None)

    # --- public ---------------------------------------------------------------------------------

    def backlog_nowait(self, topic: str) -> int | None:
        """Records of ``topic`` in Kafka not yet delivered to this member (best effort), from
        what the member already knows; None if a partition's position must be asked first.

        End offsets are refreshed in the background (highwater marks from fetches go stale
        while a partition is paused).
        """
        known = self._known_backlog.get(topic)
        if known is not None and not self._closing:
            return known
        states = self._by_topic.get(topic)
        if not states or self._closing:
            return 0
        now = time.monotonic()
        if now - self._end_offsets_at > 0.25 and self._refresh_task is None:
            self._end_offsets_at = now
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_end_offsets())
        total = 0
        for state in states:
            if not state.assigned:
                continue
            fetch = state.fetch
            if fetch is None:
                fetch = state.fetch = self._fetch_state(state.tp)
            if fetch is None or not fetch.has_valid_position:
                return None
            end = max(fetch.highwater or 0, self._end_offsets.get(state.tp, 0))
            total += len(state.buffer) + len(state.retry) + max(0, end - int(fetch.position))
        self._known_backlog[topic] = total
        return total

    async def backlog(self, topic: str) -> int:
        """Records of ``topic`` in Kafka not yet delivered to this member (best effort).

        Answers from what the member already knows without yielding to the event loop
        (the caller compares it with deliveries it holds, and a yield would let one move
        from here to there unseen), unless a partition has no position yet.
        """
        known = self.backlog_nowait(topic)
        if known is not None:
            return known
        total = 0
        for state in self._by_topic.get(topic, ()):
            if not state.assigned:
                continue
            total += len(state.buffer) + len(state.retry)
            try:
                position = int(await asyncio.wait_for(self._consumer.position(state.tp), 1))
            except (kafka_errors.KafkaError, TimeoutError, AssertionError):
                continue
            fetched_high = self._consumer.highwater(state.tp) or 0
            total += max(0, max(fetched_high, self._end_offsets.get(state.tp, 0)) - position)
        return total

    def _fetch_state(self, tp: Any) -> Any:
        """aiokafka's fetch state of ``tp`` (position, highwater), read without awaiting."""
        try:
            return self._consumer._subscription.subscription.assignment.state_value(tp)
        except (AttributeError, KeyError, TypeError):
            return None

    async def _refresh_end_offsets(self) -> None:
        try:
            tps = [s.tp for s in self._parts.values() if s.assigned]
            if tps:
                fresh = await asyncio.wait_for(self._consumer.end_offsets(tps), 5)
                for tp, end in fresh.items():
                    self._end_offsets[tp] = max(end, self._end_offsets.get(tp, 0))
                self._known_backlog.clear()
        except Exception as exc:  # noqa: BLE001 - best effort: the next call tries again
            log.debug("kafka end offsets refresh failed: %r", exc)
        finally:
            self._end_offsets_at = time.monotonic()
            self._refresh_task = None

    async def close(self) -> None:
        """Commit what is done and leave the group; unacked deliveries go to other members."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        for task in (self._poll_task, self._commit_task, self._refresh_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._commit(limit_s=10.0)
        for state in self._parts.values():
            state.assigned = state.current = False
        try:
            await asyncio.wait_for(self._consumer.stop(), 15)
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            log.warning("kafka consumer %s did not stop cleanly: %r", self.group, exc)
        self._parts.clear()
        self._states = []
        self._broker._subscriptions.discard(self)


# --- helpers ------------------------------------------------------------------------------------


def _split_host_port(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigurationError(f"bootstrap server {server!r} is not host:port")
    return host.strip("[]"), int(port)


def _delay_slots(value: tuple[int, timedelta | float] | None) -> tuple[int, timedelta] | None:
    if value is None:
        return None
    try:
        count, duration = value
    except (TypeError, ValueError):
        raise ConfigurationError(f"delay_slots must be (count, duration), not {value!r}") from None
    if not isinstance(duration, timedelta):
        duration = timedelta(seconds=duration)
    if not isinstance(count, int) or count < 1 or duration <= timedelta(0):
        raise ConfigurationError(f"delay_slots must be (count >= 1, duration > 0), not {value!r}")
    return count, duration


def _parse_bool(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"kafka URL option {name} must be true or false, not {value!r}")


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}").geturl()


def _is_auth_failure(exc: BaseException) -> bool:
    return isinstance(
        exc,
        _ssl.SSLError | kafka_errors.SaslAuthenticationFailed | kafka_errors.UnsupportedSaslMechanismError,
    )


async def _closed(conn: Any) -> None:
    """Close a probe connection and wait (up to a second) until its socket is closed.

    A TLS connection closes only after its close_notify exchange: left to finish in the
    background, its socket outlives a caller that stops the event loop right after a
    refused connect (an "unclosed transport" when collected later)."""
    closing = conn.close()
    if conn._protocol is None or closing is None:  # no socket was ever opened
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closing), 1.0)


async def _quietly(awaitable: Any) -> None:
    """Best-effort cleanup: a failure to stop must not hide the error being raised."""
    try:
        await asyncio.wait_for(awaitable, 15)
    except Exception as exc:  # noqa: BLE001
        log.debug("kafka cleanup failed: %r", exc)
