"""RocketMQBroker: connect, topics, publish; consuming is in ``_subscription``.

The package docstring (``nova.brokers.rocketmq``) says how the broker contract maps onto RocketMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from nova._broker import Message
from nova._errors import (
    AuthenticationError,
    ClosedError,
    ConfigurationError,
    ConnectionError,  # noqa: A004 - nova.ConnectionError on purpose
    EnqueueError,
    NovaError,
)
from nova.brokers._common import delay_slots as _delay_slots
from nova.brokers._common import duration, optional_group, optional_prefix, quietly, raise_refusals, split_host_port
from nova.brokers.rocketmq import _client_patches as patches
from nova.brokers.rocketmq._admin import RocketMQAdmin
from nova.brokers.rocketmq._errors import is_not_found, lost_route, lost_settings, permission_denied, translate
from nova.brokers.rocketmq._subscription import _HEADER_MARK, _Subscription

if TYPE_CHECKING:
    from nova._clock import Clock

__all__ = ["ConsumerModel", "RocketMQAdmin", "RocketMQBroker"]

log = logging.getLogger("nova.rocketmq")
T = TypeVar("T")


class ConsumerModel(enum.Enum):
    """How the workers of one group share tasks."""

    #: Each task goes to one worker of the group (the default).
    CLUSTERING = "clustering"
    #: Every worker gets every task (each subscription has its own group).
    BROADCASTING = "broadcasting"


# ---------------------------------------------------------------- broker


#: The group's retryMaxTimes: give-backs (close, nack, crashes) must never make
#: the broker dead-letter a task behind nova's back.
_BROKER_RETRY_MAX_TIMES = 10_000


def _parse_endpoints(endpoints: Sequence[str] | str) -> list[str]:
    items = endpoints.replace(";", ",").split(",") if isinstance(endpoints, str) else list(endpoints)
    out = [e.strip() for e in items if e and e.strip()]
    if not out:
        raise ConfigurationError("RocketMQBroker needs at least one proxy endpoint host:port")
    for e in out:
        split_host_port(e, "RocketMQ proxy endpoint")
    return out


def _access_key_pair(name: str, value: tuple[str, str] | None) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, tuple | list) or len(value) != 2 or not all(isinstance(x, str) and x for x in value):
        raise ConfigurationError(f"{name} must be (access_key, secret_key), both non-empty strings")
    return value[0], value[1]


def _whole_seconds(value: timedelta) -> int:
    """For the client's settings that are whole seconds (at least 1), rounded up."""
    return max(1, math.ceil(value.total_seconds()))


class RocketMQBroker:
    """A RocketMQ 5 cluster reached through its proxy (gRPC). See the package docstring.

    broker = RocketMQBroker(["127.0.0.1:8081"], namesrv="127.0.0.1:9876",
                            consume_timeout=timedelta(minutes=5))

    Durations are timedeltas (numbers are taken as seconds). ``request_timeout``
    bounds each request to the proxy (the client's own settings get it in whole
    seconds, rounded up); ``poll_seconds`` is how long a receive waits for messages
    (whole seconds, rounded up).
    """

    clock: Clock | None = None

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        group_id: str | None = None,
        topic_prefix: str | None = None,
        consumer_model: ConsumerModel = ConsumerModel.CLUSTERING,
        consume_timeout: timedelta | float = timedelta(minutes=5),
        max_reconsume_times: int = 3,
        auth: tuple[str, str] | None = None,
        credentials: tuple[str, str] | None = None,
        delay_slots: tuple[int, timedelta | float] | None = None,
        namesrv: str | Sequence[str] | None = None,
        admin_auth: tuple[str, str] | None = None,
        namespace: str = "",
        max_delay: timedelta | float = timedelta(days=1),
        topic_message_type: str = "MIXED",
        queues_per_topic: int = 1,
        request_timeout: timedelta | float = timedelta(seconds=5),
        poll_seconds: timedelta | float = timedelta(seconds=2),
        max_message_bytes: int = 4 * 1024 * 1024,
        timer_precision: timedelta | float | None = None,
    ) -> None:
        if auth is not None and credentials is not None and auth != credentials:
            raise ConfigurationError("give auth= or credentials= (the same thing), not both")
        auth = _access_key_pair("auth", auth or credentials)
        admin_auth = _access_key_pair("admin_auth", admin_auth)
        if not isinstance(consumer_model, ConsumerModel):
            raise ConfigurationError(f"consumer_model must be a ConsumerModel, not {consumer_model!r}")
        consume_timeout = duration("consume_timeout", consume_timeout)
        if consume_timeout < timedelta(seconds=10) or consume_timeout > timedelta(hours=12):
            raise ConfigurationError("consume_timeout must be between 10 s and 12 h (RocketMQ invisible time)")
        if max_reconsume_times < 0:
            raise ConfigurationError("max_reconsume_times must be >= 0")
        max_delay = duration("max_delay", max_delay)
        if max_delay <= timedelta(seconds=30):
            raise ConfigurationError("max_delay must be longer than 30 s")
        self.endpoints = _parse_endpoints(endpoints)
        self.group_id = optional_group(group_id)
        self.topic_prefix = optional_prefix(topic_prefix)
        self.delay_slots = _delay_slots(delay_slots)
        self.consumer_model = consumer_model
        self.consume_timeout = consume_timeout
        self.max_reconsume_times = max_reconsume_times
        self.namespace = namespace
        self.max_delay = max_delay
        # A little under the proxy's cap: timestamps are rounded up to whole seconds.
        self.native_delay_max: timedelta | None = max_delay - timedelta(seconds=10)
        self.max_message_bytes: int | None = max_message_bytes
        if timer_precision is None:
            timer_precision = timedelta(seconds=1)  # the broker's default timerPrecisionMs
        self.timer_precision = duration("timer_precision", timer_precision)
        self.topic_message_type = topic_message_type
        self.queues_per_topic = queues_per_topic
        self.request_timeout = duration("request_timeout", request_timeout)
        self._request_s = self.request_timeout.total_seconds()
        # The client tries a send up to 3 times, each up to request_timeout, with backoff between.
        self._confirm_within = 4.0 * _whole_seconds(self.request_timeout) + 5.0
        self.poll_seconds = duration("poll_seconds", poll_seconds)
        self._poll_s = _whole_seconds(self.poll_seconds)
        self._auth = auth
        self._admin: RocketMQAdmin | None = None
        if namesrv is not None:
            self._admin = RocketMQAdmin(namesrv, auth=admin_auth or auth)
        self._secrets = [s for s in ((auth or ("", ""))[1], (admin_auth or ("", ""))[1]) if s]
        self._producer: Any = None
        self._config: Any = None
        self._connect_lock = asyncio.Lock()
        self._known_topics: set[str] = set()
        self._known_groups: set[str] = set()
        # topic -> (broker name, queue id) -> end offset after the messages this broker published
        self._published: dict[str, dict[tuple[str, int], int]] = {}
        self._subscriptions: set[_Subscription] = set()
        self._closed = False
        # The client's *_async ack/renew methods are broken (asyncio futures made
        # off-loop), so blocking calls run here, never on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="nova-rocketmq")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _shut_down(self, client: Any) -> None:
        """Stop a producer or consumer of the client; a failure is logged, never raised."""
        await quietly(self._run(client.shutdown), log, "RocketMQ client shutdown")

    # -- construction helpers

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RocketMQBroker:
        """``rocketmq://[ak:sk@]host:8081[,host2:8081]?group_id=..&topic_prefix=..&namesrv=..``

        Other query keys: ``consumer_model`` (clustering|broadcasting),
        ``consume_timeout`` and ``max_delay`` (seconds), ``timer_precision_ms`` (the
        broker's ``timerPrecisionMs``), ``max_reconsume_times``, ``namespace``,
        ``topic_message_type``.

        >>> RocketMQBroker.from_url("rocketmq://127.0.0.1:8081?timer_precision_ms=100").timer_precision
        datetime.timedelta(microseconds=100000)
        """
        parts = urlsplit(url)
        if parts.scheme != "rocketmq":
            raise ConfigurationError(f"not a rocketmq:// URL: {parts.scheme}://...")
        netloc = parts.netloc
        auth = None
        if "@" in netloc:
            userinfo, _, netloc = netloc.rpartition("@")
            ak, _, sk = userinfo.partition(":")
            auth = (unquote(ak), unquote(sk))
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        kwargs: dict[str, Any] = {"auth": auth}
        try:
            for key in ("group_id", "topic_prefix", "namesrv", "namespace", "topic_message_type"):
                if key in query:
                    kwargs[key] = query.pop(key)
            if "consumer_model" in query:
                kwargs["consumer_model"] = ConsumerModel(query.pop("consumer_model").lower())
            for key in ("consume_timeout", "max_delay"):
                if key in query:
                    kwargs[key] = timedelta(seconds=float(query.pop(key)))
            if "timer_precision_ms" in query:
                kwargs["timer_precision"] = timedelta(milliseconds=int(query.pop("timer_precision_ms")))
            if "max_reconsume_times" in query:
                kwargs["max_reconsume_times"] = int(query.pop("max_reconsume_times"))
        except ValueError as exc:
            raise ConfigurationError(f"bad rocketmq URL option: {exc}") from exc
        if query:
            raise ConfigurationError(f"unknown rocketmq URL option(s): {', '.join(sorted(query))}")
        kwargs.update(overrides)
        return cls(netloc, **kwargs)

    def __repr__(self) -> str:
        auth = f", auth=({self._auth[0]!r}, '***')" if self._auth else ""
        return (
            f"RocketMQBroker({self.endpoints!r}, group_id={self.group_id!r}, "
            f"topic_prefix={self.topic_prefix!r}, consumer_model={self.consumer_model.name}{auth})"
        )

    def _err(self, exc: BaseException, what: str) -> NovaError:
        return translate(exc, what, self._secrets)

    # -- lifecycle

    async def connect(self) -> None:
        if self._closed:
            raise ClosedError("this RocketMQBroker was closed; create a new one")
        async with self._connect_lock:
            if self._producer is not None:
                return
            rmq = patches.client()
            ak, sk = self._auth or ("", "")
            try:
                config = rmq.ClientConfiguration(
                    ";".join(self.endpoints),
                    rmq.Credentials(ak, sk),
                    self.namespace,
                    request_timeout=_whole_seconds(self.request_timeout),
                )
                producer = rmq.Producer(config)
                patches.precise_timestamps(producer)
                patches.no_route_lookups_on_the_io_thread(producer)
                patches.telemetry_streams_on_the_io_thread(producer)
                await self._run(producer.startup)
            except Exception as exc:
                raise self._err(exc, "connect") from exc
            self._config = config
            self._producer = producer
            try:
                # Any RPC checks reachability and credentials: ask for a route.
                await self._query_route(producer, "TBW102")
            except NovaError as exc:
                if permission_denied(exc) or not isinstance(exc, (AuthenticationError, ConnectionError)):
                    return  # reachable and signed in; the topic itself may be hidden
                self._producer = None
                await self._shut_down(producer)
                raise

    async def _query_route(self, client: Any, topic: str) -> None:
        """One QueryRoute RPC; raises nova errors (NotFound -> ConfigurationError)."""
        try:
            await patches.query_route(client, topic, namespace=self.namespace, timeout=self._request_s)
        except Exception as exc:
            if is_not_found(exc):
                raise ConfigurationError(
                    f"RocketMQ topic {topic!r} does not exist. Give RocketMQBroker namesrv= so nova creates "
                    f"it, or run: mqadmin updateTopic -n <namesrv> -c <cluster> -t {topic} "
                    f"-a +message.type={self.topic_message_type}"
                ) from exc
            raise self._err(exc, f"route of topic {topic}") from exc

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        await self.connect()
        missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
        if not missing:
            return
        if self._admin is not None:
            try:
                await self._admin.create_topics(
                    missing, message_type=self.topic_message_type, queues=self.queues_per_topic
                )
            except NovaError:
                raise
            except Exception as exc:  # a reply the admin could not read
                raise self._err(exc, "create topics") from exc
        else:
            for topic in missing:
                await self._query_route(self._producer, topic)
        self._known_topics.update(missing)

    async def _ensure_group(self, group: str) -> None:
        if group in self._known_groups or self._admin is None:
            return
        try:
            await self._admin.create_groups([group], retry_max_times=_BROKER_RETRY_MAX_TIMES)
        except NovaError:
            raise
        except Exception as exc:  # a reply the admin could not read
            raise self._err(exc, f"create consumer group {group}") from exc
        self._known_groups.add(group)

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send every message and wait until RocketMQ confirmed all of them."""
        raise_refusals(await self.publish_each(messages))

    async def publish_each(self, messages: Sequence[Message]) -> list[BaseException | None]:
        """``publish``, with one outcome per message: None once RocketMQ confirmed it, else its
        EnqueueError (see ``nova._broker.PublishEach``); the client's send futures answer per message.

        >>> await broker.publish_each([Message("shop_default_normal", b"...")])  # doctest: +SKIP
        [None]
        """
        if self._closed:
            raise ClosedError("this RocketMQBroker was closed")
        if not messages:
            return []
        await self.connect()
        try:
            native = [self._to_native(m) for m in messages]
        except NovaError:
            raise
        except Exception as exc:
            raise EnqueueError(f"RocketMQ cannot carry this message: {self._err(exc, 'publish')}") from exc
        producer = self._producer

        def submit() -> list[Any]:
            """A send future per message, or what sending it raised (e.g. no route to its topic)."""
            futures: list[Any] = []
            for m in native:
                try:
                    futures.append(producer.send_async(m))
                except Exception as exc:  # noqa: BLE001 - that message's outcome
                    futures.append(exc)
            return futures

        # Bounded: a send the client lost track of must not hang the caller (see
        # patches.no_route_lookups_on_the_io_thread); it is refused like any failure.
        answers = await _answers(await self._run(submit), self._confirm_within)
        outcomes: list[BaseException | None] = [None] * len(messages)
        failed: dict[int, BaseException] = {}
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                failed[i] = answer
        if failed:
            reasons: dict[int, BaseException] = {}  # one error per distinct failure
            for i, failure in failed.items():
                error = reasons.get(id(failure))
                if error is None:
                    error = reasons[id(failure)] = await self._refusal(
                        producer, failure, [messages[j].topic for j, e in failed.items() if e is failure])
                outcomes[i] = error
        sent = [(m, a) for m, a in zip(native, answers, strict=True) if not isinstance(a, BaseException)]
        self._note_published([m for m, _ in sent], [a for _, a in sent])
        if log.isEnabledFor(logging.DEBUG):
            _log_timer_sends([m for m, _ in sent], [a for _, a in sent])
        return outcomes

    async def _refusal(self, producer: Any, exc: BaseException, topics: Sequence[str]) -> EnqueueError:
        """The EnqueueError (its ``__cause__`` set) for a send that failed with ``exc``, for
        messages to ``topics``."""
        if isinstance(exc, _Unconfirmed):
            error = EnqueueError(
                f"RocketMQ did not confirm the publish within {self._confirm_within:g} s (the message may be stored)")
            error.__cause__ = exc
            return error
        cause = self._err(exc, "publish")
        if lost_route(exc):
            # The client hides why a route lookup failed (permission, unknown topic): ask again.
            for topic in dict.fromkeys(topics):
                try:
                    await self._query_route(producer, topic)
                except NovaError as why:
                    error = EnqueueError(f"RocketMQ refused the publish to {topic}: {why}")
                    error.__cause__ = why
                    return error
        if isinstance(cause, ConnectionError) or lost_settings(exc):
            # the next publish starts from a fresh producer (see _Subscription._pump_loop)
            await self._reset_producer(producer)
        error = EnqueueError(f"RocketMQ did not confirm the publish: {cause}")
        error.__cause__ = exc
        return error

    def _note_published(self, native: Sequence[Any], receipts: Sequence[Any]) -> None:
        """Remember the end offset of each queue written to (see ``_Subscription._start_read``)."""
        for message, receipt in zip(native, receipts, strict=True):
            if message.delivery_timestamp:
                continue  # timer messages sit in the timer's own topic until due
            queue = patches.queue_of(receipt)
            offset = receipt.offset
            if queue is None or offset is None:
                return  # the client changed shape: rely on the broker's offsets alone
            ends = self._published.setdefault(message.topic, {})
            ends[queue] = max(ends.get(queue, 0), int(offset) + 1)

    async def _reset_producer(self, producer: Any) -> None:
        async with self._connect_lock:
            if self._producer is producer:
                self._producer = None
                await self._shut_down(producer)

    def _to_native(self, message: Message) -> Any:
        rmq = patches.client()
        native = rmq.Message()
        native.topic = message.topic
        native.body = message.body
        for key, value in message.headers.items():
            native.add_property(key, _HEADER_MARK + value)
        if message.key:
            native.keys = message.key
        if message.deliver_at is not None and message.deliver_at > time.time():
            # The broker's timer fires at the start of a timerPrecisionMs slot:
            # round up to a slot boundary so the message is never early.
            step = self.timer_precision.total_seconds()
            due = math.ceil(round(message.deliver_at / step, 6)) * step
            native.delivery_timestamp = math.ceil(due)  # the client sends whole seconds...
            patches.set_due(native, due)  # ...so precise_timestamps adds the fraction
        return native

    async def subscribe(self, topics: Sequence[str], *, group: str, window: int) -> _Subscription:
        if self._closed:
            raise ClosedError("this RocketMQBroker was closed")
        if window < 1:
            raise ConfigurationError("window must be >= 1")
        await self.connect()
        if self.consumer_model is ConsumerModel.BROADCASTING:
            group = f"{group}-b{uuid.uuid4().hex[:12]}"
        await self._ensure_group(group)
        sub = _Subscription(self, list(dict.fromkeys(topics)), group, window)
        await sub.start()
        self._subscriptions.add(sub)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._shut_down(producer)
        self._executor.shutdown(wait=False)
        if self._admin is not None:
            await quietly(self._admin.aclose(), log, "RocketMQ admin close")


class _Unconfirmed(Exception):
    """The client gave no answer for a send in time."""


async def _answers(futures: Sequence[Any], within: float) -> list[Any]:
    """Each send future's receipt, or its exception (_Unconfirmed if it did not answer in time,
    or the client cancelled it); an exception among ``futures`` stays as it is.

    The event loop is woken once, by the last future to finish, not once per future (as
    ``asyncio.wrap_future`` would): each wake-up from the client's threads is a write to the
    loop's self-pipe, a system call per message that a large publish would pay on the loop's thread.
    """
    pending = [f for f in futures if not isinstance(f, BaseException)]
    if pending:
        loop = asyncio.get_running_loop()
        all_done: asyncio.Future[None] = loop.create_future()
        left = len(pending)
        lock = threading.Lock()

        def settle() -> None:
            if not all_done.done():
                all_done.set_result(None)

        def one_done(_: Any) -> None:  # in the client's thread (or this one, if already done)
            nonlocal left
            with lock:
                left -= 1
                last = left == 0
            if last:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                    loop.call_soon_threadsafe(settle)

        for future in pending:
            future.add_done_callback(one_done)
        await asyncio.wait([all_done], timeout=within)
    unconfirmed = _Unconfirmed()
    answers: list[Any] = []
    for f in futures:
        if isinstance(f, BaseException):
            answers.append(f)
        elif not f.done() or f.cancelled():
            f.cancel()
            answers.append(unconfirmed)
        else:
            answers.append(f.exception() or f.result())
    return answers


def _log_timer_sends(native: Sequence[Any], receipts: Sequence[Any]) -> None:
    """Debug trail of timer messages: when each was confirmed and when it is due.

    With the receive side's record (``_Subscription._wrap``) it tells a late
    timer (the broker held it) from a late receive (nothing polled).
    """
    now = time.time()
    for message, receipt in zip(native, receipts, strict=True):
        due = patches.due_of(message)
        if due is not None:
            log.debug(
                "timer message %s sent to %s, due in %.3f s (at %.3f)",
                getattr(receipt, "message_id", "?"),
                message.topic,
                due - now,
                due,
            )
