"""TaskQueue: the one API over every broker.

    async with nova.TaskQueue(broker, group_id="my-group", topic_prefix="myapp") as queue:
        result = await queue.enqueue(nova.Task("email", b"hi"), priority=nova.Priority.HIGH,
                                     process_in=timedelta(minutes=5))
        await queue.start(handle, queues=["default"], concurrency=8)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from nova._aggregators import Aggregator
from nova._broker import Broker, DelayTierAware, Message, new_message
from nova._clock import Clock, SystemClock
from nova._coalesce import Coalescer
from nova._codecs import CodecRegistry, MessageCodec, MessageFormat, codec_for, parts_encoder
from nova._delay import DelayForwarder, DelayTiers, Router
from nova._envelope import shared_headers, task_headers
from nova._errors import (
    ClosedError,
    ConfigurationError,
    ConfigurationTypeError,
    PayloadTooLarge,
    StateError,
    ValidationError,
    ValidationTypeError,
)
from nova._middleware import ENQUEUE_HEADERS, Middleware, combine, observed_enqueue
from nova._naming import ready_topic, validate_group, validate_prefix, validate_queue, worker_group
from nova._policies import PriorityPolicy, RetryPolicy, StrictPriority
from nova._recording import TaskRecorder, TaskStatus
from nova._sink import RecordingSink
from nova._task import Priority, Result, Task, coerce_priority, new_result, validate_task
from nova._worker import BatchHandler, BatchWorker, Handler, Worker
from nova.brokers import broker_from_url

__all__ = ["TaskQueue"]

log = logging.getLogger("nova")

DEFAULT_MAX_PAYLOAD = 1024 * 1024

_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)


def new_task_id() -> str:
    """32 hex characters: 64 random bits per process, then a counter (unique, cheap, sortable per process)."""
    return "%s%016x" % (_ID_PREFIX, next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF)  # noqa: UP031 - the fastest here


class TaskQueue:
    """Enqueue tasks and consume them, on any broker.

    Broker-level ``group_id``, ``topic_prefix`` and ``delay_slots`` (set on the
    broker) override the ones given here. The clock comes from the broker
    (SimBroker: its virtual clock; real brokers: the system clock) unless
    ``clock=`` is given.

    With ``recorder=``, every lifecycle step is recorded in the background;
    ``stop()`` then waits at most ``recorder_stop_timeout`` (real time) for the
    recorder to take what is left, and drops (counts, logs) the rest.

    ``middleware`` (e.g. ``[nova.PrometheusMetrics(), nova.OpenTelemetryTracing()]``) sees
    every enqueue, handler call and outcome; see ``nova.Middleware``.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        group_id: str = "default",
        topic_prefix: str = "nova",
        delay_slots: tuple[int, timedelta] = (24, timedelta(hours=1)),
        message_format: MessageFormat = MessageFormat.JSON,
        codec: MessageCodec | None = None,
        recorder: TaskRecorder | None = None,
        retry: RetryPolicy | None = None,
        priority_policy: PriorityPolicy | None = None,
        clock: Clock | None = None,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD,
        stop_timeout: timedelta = timedelta(seconds=30),
        recorder_stop_timeout: timedelta = timedelta(seconds=5),
        close_broker: bool = False,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.broker = broker
        self.group_id = validate_group(broker.group_id or group_id)
        self.prefix = validate_prefix(broker.topic_prefix or topic_prefix)
        self.group = worker_group(self.prefix, self.group_id)
        slots = broker.delay_slots or delay_slots
        if not isinstance(slots, tuple):
            raise ConfigurationTypeError(
                f"delay_slots must be a (count, timedelta) pair, e.g. (24, timedelta(hours=1)), got {slots!r}")
        if len(slots) != 2:
            raise ConfigurationError("delay_slots must be a (count, timedelta) pair, e.g. (24, timedelta(hours=1))")
        self.tiers = DelayTiers(*slots)
        if codec is None:
            if not isinstance(message_format, MessageFormat):
                raise ConfigurationTypeError(f"message_format must be a nova.MessageFormat, got {message_format!r}")
            codec = codec_for(message_format)
        elif not isinstance(codec, MessageCodec):
            raise ConfigurationTypeError("codec must have content_type, carries_envelope, encode() and decode()")
        self.codec = codec
        self.codecs = CodecRegistry(codec)
        self.clock: Clock = clock or broker.clock or SystemClock()
        if retry is None:
            # The seed's WithRocketMQMaxReconsumeTimes: a broker-level retry limit is the default.
            limit = getattr(broker, "max_reconsume_times", None)
            retry = RetryPolicy(max_retries=limit) if isinstance(limit, int) else RetryPolicy()
        elif not isinstance(retry, RetryPolicy):
            raise ConfigurationTypeError(f"retry must be a nova.RetryPolicy, got {type(retry).__name__}")
        self.retry = retry
        if priority_policy is not None and not callable(getattr(priority_policy, "choose", None)):
            raise ConfigurationTypeError("priority_policy must be a nova.StrictPriority or WeightedPriority "
                                         f"(anything with choose()), got {type(priority_policy).__name__}")
        self.priority_policy: PriorityPolicy = priority_policy or StrictPriority()
        if isinstance(max_payload_size, bool) or not isinstance(max_payload_size, int):
            raise ConfigurationTypeError(
                f"max_payload_size must be a positive int (bytes), got {type(max_payload_size).__name__}")
        if max_payload_size < 1:
            raise ConfigurationError("max_payload_size must be a positive int (bytes)")
        self.max_payload_size = max_payload_size
        if not isinstance(stop_timeout, timedelta):
            raise ConfigurationTypeError(
                f"stop_timeout must be a timedelta, e.g. timedelta(seconds=30), got {stop_timeout!r}")
        self.stop_timeout = stop_timeout
        self.close_broker = close_broker
        self.recorder = recorder
        if recorder is not None and not isinstance(recorder, TaskRecorder):
            raise ConfigurationTypeError("recorder must be a nova.TaskRecorder (record(), get(), close()), "
                                         f"got {type(recorder).__name__}")
        if not isinstance(recorder_stop_timeout, timedelta):
            raise ConfigurationTypeError("recorder_stop_timeout must be a timedelta >= 0, e.g. "
                                         f"timedelta(seconds=5), got {recorder_stop_timeout!r}")
        if recorder_stop_timeout < timedelta(0):
            raise ConfigurationError("recorder_stop_timeout must be a timedelta >= 0, e.g. timedelta(seconds=5), "
                                     f"got {recorder_stop_timeout!r}")
        self._sink = (None if recorder is None else
                      RecordingSink(recorder, self.clock, stop_timeout=recorder_stop_timeout.total_seconds()))
        self.router = Router(broker, self.clock, self.prefix, self.tiers)
        if isinstance(broker, DelayTierAware):
            broker.declare_delay_tiers(
                {topic: self.tiers.seconds(i) for i, topic in enumerate(self.router.tier_topics)})
        self._publisher = Coalescer(broker)
        self._encode = parts_encoder(codec)
        self._ready_queues: set[str] = set()  # queues whose ready topics exist (enqueue's fast path)
        self._shared_key: tuple[str, Priority, float | None, int] | None = None
        self._shared: dict[str, str] = {}
        self._forwarder: DelayForwarder | None = None
        # nova.App runs one forwarder per process, not one per consumer.
        self._runs_forwarder = True
        self._worker: Worker | BatchWorker | None = None
        self._known_topics: set[str] = set()
        self._connect_lock = asyncio.Lock()
        self._connected = False
        self._stopped = False
        self._forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._middleware = combine(middleware)
        if self._middleware is not None:
            self._middleware.bind(self)

    def __repr__(self) -> str:
        return (f"TaskQueue(broker={type(self.broker).__name__}, prefix={self.prefix!r}, "
                f"group={self.group_id!r})")

    # -- URLs ---------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: Any) -> TaskQueue:
        """Build a TaskQueue and its broker from a URL (the queue owns and closes the broker).

        ``sim://`` (real time; ``sim://?clock=virtual&seed=1`` for a VirtualClock),
        ``kafka://host:9092?group_id=g&topic_prefix=p``, ``amqp://`` / ``amqps://``,
        ``rocketmq://host:8081``.
        """
        broker = broker_from_url(url)
        options.setdefault("close_broker", True)
        return cls(broker, **options)

    # -- lifecycle ----------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def enqueue_from_thread(self, task: Task, **options: Any) -> Result:
        """Enqueue from another thread while this queue's event loop runs elsewhere.

        Blocks the calling thread until the broker confirmed the task (same
        options as ``enqueue``). The queue must have been used (entered,
        started or enqueued to) on its loop first.

            result = queue.enqueue_from_thread(nova.Task("email", b"hi"), priority=nova.Priority.HIGH)
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            raise StateError("enqueue_from_thread needs the queue's event loop: use the queue on it first")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise StateError("enqueue_from_thread would block the event loop: use `await queue.enqueue(...)`")
        return asyncio.run_coroutine_threadsafe(self.enqueue(task, **options), loop).result()

    async def _connect(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._stopped:
            raise ClosedError("this TaskQueue was stopped; make a new one")
        if self._connected:
            return
        async with self._connect_lock:
            if not self._connected:
                await self.broker.connect()
                self._connected = True

    async def _ensure(self, topics: Sequence[str]) -> None:
        missing = [t for t in topics if t not in self._known_topics]
        if missing:
            await self.broker.ensure_topics(missing)
            self._known_topics.update(missing)

    # -- producing ------------------------------------------------------------------
    async def enqueue(
        self,
        task: Task,
        *,
        priority: Priority = Priority.NORMAL,
        process_in: timedelta | float | None = None,
        process_at: datetime | None = None,
        queue: str = "default",
    ) -> Result:
        """Publish one task; returns once the broker holds it (raises EnqueueError otherwise).

            result = await queue.enqueue(nova.Task("email", b"hi"))

        Concurrent calls share publishes: calls made in the same event-loop turn, or while
        a publish is in flight, go to the broker together, each still returning once its
        own task is confirmed and raising its own error. A lone call is sent at once (no
        timer). Cancelling a call cancels no publish: if its publish had begun, the task
        may be stored even though the caller saw ``CancelledError``.
        """
        if self._middleware is not None and ENQUEUE_HEADERS.get() is None:  # (None: not yet inside observed_enqueue)
            return (await observed_enqueue(self, [task], priority, process_in, process_at, queue, one=True))[0]
        if (process_in is None and process_at is None and queue in self._ready_queues
                and type(priority) is Priority and self._connected and not self._stopped):
            # The common call, connected and with its topics known: what enqueue_batch does for one
            # task, without what it needs only the first time, for a delay or for a list.
            messages, results = self._prepare((task,), priority, queue, None)
            await self._publisher.submit(messages)
            if self._sink is not None:
                self._sink.emit_published(results, (task,), TaskStatus.QUEUED)
            return results[0]
        return (await self.enqueue_batch([task], priority=priority, process_in=process_in,
                                         process_at=process_at, queue=queue))[0]

    async def enqueue_batch(
        self,
        tasks: Sequence[Task],
        *,
        priority: Priority = Priority.NORMAL,
        process_in: timedelta | float | None = None,
        process_at: datetime | None = None,
        queue: str = "default",
    ) -> list[Result]:
        """Publish several tasks in one confirmed batch; one Result per task, in order.

            results = await queue.enqueue_batch([nova.Task("email", b"a"), nova.Task("email", b"b")])

        Every task is validated before anything is sent. The tasks stay together and in
        order when concurrent calls share a publish (see ``enqueue``).
        """
        if self._middleware is not None and ENQUEUE_HEADERS.get() is None:  # (None: not yet inside observed_enqueue)
            return await observed_enqueue(self, tasks, priority, process_in, process_at, queue)
        if isinstance(tasks, Task) or not isinstance(tasks, Sequence):
            raise ValidationTypeError(f"enqueue_batch takes a list of nova.Task, got {type(tasks).__name__}")
        level = coerce_priority(priority)
        validate_queue(queue)
        eta = self._eta(process_in, process_at)
        if not tasks:
            return []
        messages, results = self._prepare(tasks, level, queue, eta)
        await self._connect()
        topics = [ready_topic(self.prefix, queue, lvl) for lvl in Priority]
        if eta is not None:
            topics += self.router.tier_topics
        await self._ensure(topics)
        self._ready_queues.add(queue)
        if eta is not None:
            messages = [self.router.route(m.topic, m.body, m.headers, m.key, eta) for m in messages]
        await self._publisher.submit(messages)
        if self._sink is not None:
            self._sink.emit_published(results, tasks, TaskStatus.PENDING if eta is not None else TaskStatus.QUEUED)
        return results

    def _eta(self, process_in: timedelta | float | None, process_at: datetime | None) -> float | None:
        if process_in is not None and process_at is not None:
            raise ValidationError("give process_in or process_at, not both")
        if process_at is not None:
            if not isinstance(process_at, datetime):
                raise ValidationTypeError(f"process_at must be a datetime, got {type(process_at).__name__}")
            if process_at.tzinfo is None or process_at.utcoffset() is None:
                raise ValidationError(
                    "process_at must be timezone-aware, e.g. datetime.now(timezone.utc) + timedelta(...)"
                )
            at = process_at.timestamp()
            return at if at > self.clock.time() else None
        if process_in is not None:
            if isinstance(process_in, timedelta):
                seconds = process_in.total_seconds()
            elif isinstance(process_in, int | float) and not isinstance(process_in, bool):
                seconds = float(process_in)
            else:
                raise ValidationTypeError(f"process_in must be a timedelta (or seconds), got {process_in!r}")
            return self.clock.time() + seconds if seconds > 0 else None
        return None

    def _prepare(self, tasks: Sequence[Task], level: Priority, queue: str,
                 eta: float | None) -> tuple[list[Message], list[Result]]:
        """Validate and encode every task before anything is sent (the enqueue hot path)."""
        codec = self.codec
        limit = self.max_payload_size
        if self.broker.max_message_bytes is not None:
            limit = min(limit, self.broker.max_message_bytes)
        # Calls in the same millisecond share their headers (task_headers copies them).
        now = self.clock.time()
        key = (queue, level, eta, int(now * 1000))
        if key != self._shared_key:
            self._shared = shared_headers(codec=codec, queue=queue, priority=level, attempt=1,
                                          enqueued_at=now, eta=eta)
            self._shared_key = key
        shared = self._shared
        if self._middleware is not None:
            added = ENQUEUE_HEADERS.get()
            if added:  # the middleware's headers (trace context, ...): the same for every task of the call
                shared = {**added, **shared}
        topic = ready_topic(self.prefix, queue, level)
        due = None if eta is None else _dt(eta)
        messages: list[Message] = []
        results: list[Result] = []
        encode = self._encode
        for task in tasks:
            validate_task(task)
            task_id = task.id or new_task_id()
            data = encode(task.type, bytes(task.payload), task.headers)
            if len(data) > limit:
                size = len(data)
                raise PayloadTooLarge(size, self.max_payload_size if size > self.max_payload_size else limit)
            messages.append(new_message(topic, data, task_headers(shared, task_id, task.type, task.headers, codec),
                                        task_id))
            results.append(new_result(task_id, queue, level, due))
        return messages, results

    # -- consuming ------------------------------------------------------------------
    async def start(self, handler: Handler, *, queues: Sequence[str] = ("default",),
                    concurrency: int = 8, prefetch: int = 32,
                    timeout: timedelta | float | None = None) -> None:
        """Consume ``queues`` with ``handler`` (async, or sync run in a thread).

        Returns once consuming. Raise in the handler to fail the task. At most
        ``concurrency`` handlers run at once; up to ``prefetch`` tasks per
        queue and priority level are fetched ahead (never fewer than ``concurrency``).
        An attempt still running after ``timeout`` (the queue's clock) fails with
        ``nova.TaskTimeout``: an async handler is cancelled, a sync one's thread is left to finish.
        """
        if not callable(handler):
            raise ValidationTypeError("handler must be callable: async def handle(task: nova.Task) -> None")
        _check_count("concurrency", concurrency)
        self._check_can_start(queues)
        _check_count("prefetch", prefetch)
        worker = Worker(self, handler, list(queues), concurrency, prefetch, timeout=handler_timeout(timeout))
        await self._start_worker(worker)

    async def start_batch(self, handler: BatchHandler, aggregator: Aggregator, *,
                          queues: Sequence[str] = ("default",), timeout: timedelta | float | None = None) -> None:
        """Consume ``queues`` in batches made by ``aggregator``; ``handler`` gets ``list[Task]``
        (``timeout``: as in ``start``, per batch)."""
        if not callable(handler):
            raise ValidationTypeError("handler must be callable: async def handle(tasks: list[nova.Task]) -> None")
        if not isinstance(aggregator, Aggregator):
            raise ValidationTypeError("aggregator must be a nova.CountAggregator, TimeAggregator or "
                                  "TimeCountAggregator")
        self._check_can_start(queues)
        worker = BatchWorker(self, handler, aggregator, list(queues), timeout=handler_timeout(timeout))
        await self._start_worker(worker)

    def _check_can_start(self, queues: Sequence[str]) -> None:
        if self._stopped:
            raise StateError("this TaskQueue was stopped; make a new one to consume again")
        if self._worker is not None:
            raise StateError("this TaskQueue is already consuming; use one TaskQueue per consumer")
        if isinstance(queues, str) or not isinstance(queues, Sequence):
            raise ValidationTypeError(f"queues must be a non-empty list of queue names, e.g. ['default'], "
                                      f"got {queues!r}")
        if not queues:
            raise ValidationError("queues must be a non-empty list of queue names, e.g. ['default']")
        for q in queues:
            validate_queue(q)

    async def _start_worker(self, worker: Worker | BatchWorker) -> None:
        self._worker = worker  # taken at once: a second start() meanwhile is refused
        forwarder = None
        try:
            await self._connect()
            joins = [worker.join()]
            if self._forwarder is None and self._runs_forwarder:
                forwarder = self._forwarder = DelayForwarder(self.router)
                joins.append(forwarder.start())
            # Both join consumer groups (a broker round trip or several each): side by side.
            # Handlers run only once both have joined, so a failed start() handled nothing.
            outcomes = await asyncio.gather(*joins, return_exceptions=True)
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                raise failure
            worker.run()
        except BaseException:
            # Nothing half-started keeps consuming (what it fetched goes back to the broker),
            # and start() may be called again.
            with contextlib.suppress(Exception):
                await worker.stop(graceful=False, timeout=0)
            if forwarder is not None:
                with contextlib.suppress(Exception):
                    await forwarder.stop()
                self._forwarder = None
            self._worker = None
            raise

    async def stop(self, *, graceful: bool = True, timeout: timedelta | None = None) -> None:
        """Stop consuming. Graceful: wait for running handlers (up to ``timeout``,
        default ``stop_timeout``, then cancel them unacked), hand a partial batch
        to the batch handler, ack, close. ``graceful=False``: cancel at once, ack nothing;
        it also cuts short a graceful stop under way (cancel that one's caller first)."""
        if self._stopped and (graceful or self._forced):
            return
        if timeout is not None and not isinstance(timeout, timedelta):
            raise ValidationTypeError(f"timeout must be a timedelta, e.g. timedelta(seconds=10), got {timeout!r}")
        self._stopped = True
        self._forced = not graceful
        limit = (timeout or self.stop_timeout).total_seconds()
        try:
            if self._worker is not None:
                await self._worker.stop(graceful=graceful, timeout=limit)
            if self._forwarder is not None:
                await self._forwarder.stop()
        finally:
            if self._sink is not None:
                await self._sink.close()
            if self.close_broker:
                await self.broker.close()

    @property
    def worker(self) -> Worker | BatchWorker | None:
        return self._worker

    # -- recording ------------------------------------------------------------------
    # Three steps per task on the hot path (QUEUED in enqueue_batch, PROCESSING and
    # COMPLETED in the workers, which call the sink directly): the sink buffers plain
    # fields and writes in the background.
    @property
    def recording_stats(self) -> dict[str, int]:
        """Events written, dropped and failed writes of the recorder (zeros without one)."""
        if self._sink is None:
            return {"written": 0, "dropped": 0, "failures": 0}
        return {"written": self._sink.written, "dropped": self._sink.dropped, "failures": self._sink.failures}


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationTypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValidationError(f"{name} must be an int >= 1, got {value!r}")


def handler_timeout(timeout: timedelta | float | None) -> float | None:
    """A handler's ``timeout=`` in seconds (None: no limit)."""
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise ValidationTypeError(f"timeout must be a timedelta (or seconds), got {timeout!r}")
    if not seconds > 0:
        raise ValidationError(f"timeout must be > 0, got {timeout!r}")
    return seconds


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
