"""nova.App: handlers registered by task type, run by ``nova worker`` (or ``await app.start()``).

    app = nova.App("kafka://127.0.0.1:9092?group_id=shop&topic_prefix=shop",
                   retry=nova.RetryPolicy(max_retries=3))

    @app.task("email")                                   # queue "default"
    async def send_email(task: nova.Task) -> None: ...

    @app.task("resize", queue="images", timeout=timedelta(seconds=30))
    def resize(task: nova.Task) -> None: ...             # sync: runs in a thread

    @app.batch("report", nova.TimeCountAggregator(100, timedelta(seconds=5)), queue="reports")
    async def reports(tasks: list[nova.Task]) -> None: ...

    await app.enqueue(nova.Task("resize", b"..."))       # to "images", where its handler is

An App is a TaskQueue per consumer over one broker: each queue it has handlers for gets
its own consumer (a queue's handlers are looked up by task type, a dict lookup per task),
and one of them runs the delay forwarder. A task whose type has no handler on the queue
it arrived on goes to the dead-letter queue at once, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

from nova._aggregators import Aggregator
from nova._broker import Broker
from nova._errors import (
    ConfigurationError,
    ConfigurationTypeError,
    StateError,
    ValidationError,
    ValidationTypeError,
)
from nova._handlers import HandlerSpec
from nova._middleware import Middleware, combine
from nova._naming import validate_queue
from nova._queue import TaskQueue, _check_count, handler_timeout
from nova._task import Priority, Result, Task
from nova._worker import BatchWorker, Worker
from nova.brokers import broker_from_url

__all__ = ["App"]

F = TypeVar("F", bound=Callable[..., Any])

TaskHandler = Callable[[Task], Awaitable[None] | None]
BatchHandler = Callable[[list[Task]], Awaitable[None] | None]


@dataclass
class _Batch:
    task_type: str
    handler: BatchHandler
    aggregator: Aggregator
    timeout: float | None


@dataclass
class _QueueHandlers:
    """What one queue runs: handlers by task type, or one batch handler."""

    tasks: dict[str, HandlerSpec] = field(default_factory=dict)
    batch: _Batch | None = None

    @property
    def types(self) -> list[str]:
        return [self.batch.task_type] if self.batch is not None else list(self.tasks)


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _check_type(task_type: object) -> str:
    if not isinstance(task_type, str):
        raise ConfigurationTypeError(f"the task type must be a str, got {task_type!r}")
    if not task_type or len(task_type) > 255:
        raise ConfigurationError(f"the task type must be a non-empty str of at most 255 characters, "
                                 f"got {task_type!r}")
    return task_type


class App:
    """Handlers by task type over one broker, run by ``nova worker module:app``.

    ``broker`` is a URL (``kafka://``, ``amqp://``, ``rocketmq://``, ``sim://``; the App
    then owns the broker and closes it on ``stop()``) or a broker object. ``options`` are
    any ``nova.TaskQueue`` options (``group_id``, ``topic_prefix``, ``retry``,
    ``middleware=[nova.PrometheusMetrics(), nova.OpenTelemetryTracing()]``, ...): the
    middleware sees the App's enqueues and every consumer's tasks.
    """

    def __init__(self, broker: str | Broker, /, **options: Any) -> None:
        owns = isinstance(broker, str)
        #: Left out of the messages ``nova worker`` prints.
        self._url_password: str | None = None
        if isinstance(broker, str):
            self._url_password = unquote(urlsplit(broker).password or "") or None
            made = broker_from_url(broker)
        elif callable(getattr(broker, "subscribe", None)) and callable(getattr(broker, "publish", None)):
            made = broker
        else:
            raise ConfigurationTypeError("nova.App takes a broker URL (e.g. 'kafka://127.0.0.1:9092') or a "
                                         f"broker object, not {type(broker).__name__}")
        self.broker: Broker = made
        #: The URL the broker was made from (None: a broker object), for SyncTaskQueue(app).
        self._url: str | None = broker if isinstance(broker, str) else None
        self._owns_broker = bool(options.pop("close_broker", owns))
        self._options = options
        try:
            self._producer = TaskQueue(made, **options, close_broker=False)
        except TypeError as exc:
            raise ConfigurationTypeError(f"nova.App: {exc} (App takes the options of nova.TaskQueue)") from exc
        self._queues: dict[str, _QueueHandlers] = {}
        self._consumers: list[TaskQueue] = []
        self._state = "idle"  # idle -> running -> stopping -> stopped
        self._forced = False

    def __repr__(self) -> str:
        return f"App(broker={type(self.broker).__name__}, queues={self.queues}, state={self._state})"

    # -- registration -------------------------------------------------------------
    def task(self, task_type: str, /, *, queue: str = "default",
             timeout: timedelta | float | None = None) -> Callable[[F], F]:
        """Register the decorated function as the handler of ``task_type`` on ``queue``.

        The handler takes a ``nova.Task``; async, or sync (run in a thread). Raise to fail
        the attempt (retried per ``retry=``, then dead-lettered). An attempt still running
        after ``timeout`` fails with ``nova.TaskTimeout``.

            @app.task("resize", queue="images", timeout=timedelta(seconds=30))
            def resize(task: nova.Task) -> None: ...
        """
        _check_type(task_type)
        validate_queue(queue)
        limit = handler_timeout(timeout)

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationTypeError(f"@app.task({task_type!r}) decorates a function, not {fn!r}")
            self._check_open()
            handlers = self._queues.setdefault(queue, _QueueHandlers())
            if handlers.batch is not None:
                raise ConfigurationError(
                    f"queue {queue!r} has a batch handler ({_name(handlers.batch.handler)}); a queue takes "
                    f"task handlers or one batch handler: give {_name(fn)} another queue=")
            if task_type in handlers.tasks:
                raise ConfigurationError(f"task type {task_type!r} on queue {queue!r} already has a handler "
                                         f"({_name(handlers.tasks[task_type].fn)})")
            handlers.tasks[task_type] = HandlerSpec.of(fn, limit)
            return fn

        return register

    def batch(self, task_type: str, aggregator: Aggregator, /, *, queue: str = "default",
              timeout: timedelta | float | None = None) -> Callable[[F], F]:
        """Register the decorated function as the batch handler of ``task_type`` on ``queue``.

        It takes a ``list[nova.Task]`` as ``aggregator`` makes them; raise to fail every task
        of the batch. A queue with a batch handler has only that one.

            @app.batch("report", nova.TimeCountAggregator(100, timedelta(seconds=5)), queue="reports")
            async def reports(tasks: list[nova.Task]) -> None: ...
        """
        _check_type(task_type)
        validate_queue(queue)
        if not isinstance(aggregator, Aggregator):
            raise ConfigurationTypeError("aggregator must be a nova.CountAggregator, TimeAggregator or "
                                         f"TimeCountAggregator, not {aggregator!r}")
        limit = handler_timeout(timeout)

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationTypeError(f"@app.batch({task_type!r}, ...) decorates a function, not {fn!r}")
            self._check_open()
            handlers = self._queues.setdefault(queue, _QueueHandlers())
            if handlers.batch is not None:
                raise ConfigurationError(
                    f"queue {queue!r} already has a batch handler ({_name(handlers.batch.handler)} for "
                    f"{handlers.batch.task_type!r}); one batch handler per queue: give {_name(fn)} another queue=")
            if handlers.tasks:
                raise ConfigurationError(
                    f"queue {queue!r} has task handlers ({', '.join(handlers.tasks)}); a queue takes task "
                    f"handlers or one batch handler: give {_name(fn)} another queue=")
            handlers.batch = _Batch(task_type, fn, aggregator, limit)
            return fn

        return register

    def _check_open(self) -> None:
        if self._state != "idle":
            raise StateError("register handlers before app.start()")

    @property
    def middleware(self) -> list[Middleware]:
        """The middleware given to the App (``middleware=``)."""
        return list(self._options.get("middleware") or ())

    def _add_middleware(self, middleware: Middleware) -> None:
        """Add one before ``start()`` (``nova worker --metrics-port`` adds a PrometheusMetrics)."""
        self._check_open()
        members = [*self.middleware, middleware]
        self._options["middleware"] = members
        self._producer._middleware = combine(members)
        middleware.bind(self._producer)

    @property
    def queues(self) -> dict[str, list[str]]:
        """Each queue the app has handlers for, with its task types."""
        return {q: h.types for q, h in self._queues.items()}

    def queue_for(self, task_type: str) -> str:
        """The queue where ``task_type`` has a handler ("default" if none has one)."""
        found = [q for q, h in self._queues.items() if task_type in h.types]
        if len(found) > 1:
            raise ValidationError(f"task type {task_type!r} has handlers on queues {', '.join(found)}: "
                                  "pass queue= to say which")
        return found[0] if found else "default"

    def queue_for_batch(self, tasks: Sequence[Task]) -> str:
        """The one queue of ``tasks``' types (``queue_for``); an error if they go to several."""
        found = {self.queue_for(t.type) if isinstance(t, Task) else "default" for t in tasks}
        if len(found) > 1:
            raise ValidationError(f"these tasks go to several queues ({', '.join(sorted(found))}); "
                                  "enqueue_batch sends to one: call it once per queue, or pass queue=")
        return found.pop() if found else "default"

    # -- producing ------------------------------------------------------------------
    async def enqueue(self, task: Task, *, priority: Priority = Priority.NORMAL,
                      process_in: timedelta | float | None = None, process_at: datetime | None = None,
                      queue: str | None = None) -> Result:
        """``TaskQueue.enqueue``; the queue defaults to the one with a handler for ``task.type``."""
        if queue is None:
            queue = self.queue_for(task.type) if isinstance(task, Task) else "default"
        return await self._producer.enqueue(task, priority=priority, process_in=process_in,
                                            process_at=process_at, queue=queue)

    async def enqueue_batch(self, tasks: Sequence[Task], *, priority: Priority = Priority.NORMAL,
                            process_in: timedelta | float | None = None, process_at: datetime | None = None,
                            queue: str | None = None) -> list[Result]:
        """``TaskQueue.enqueue_batch`` to one queue: by default the one of the tasks' types."""
        if queue is None:
            queue = self.queue_for_batch(tasks)
        return await self._producer.enqueue_batch(tasks, priority=priority, process_in=process_in,
                                                  process_at=process_at, queue=queue)

    # -- running --------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect to the broker (``start`` does it too): raises nova.ConnectionError or
        nova.AuthenticationError if it is unreachable or refuses the credentials."""
        await self._producer._connect()

    async def start(self, queues: Sequence[str] | None = None, *, concurrency: int = 8,
                    prefetch: int = 32) -> None:
        """Run the handlers of ``queues`` (default: every queue with handlers) in this process.

        One consumer per queue, each with up to ``concurrency`` handlers at once and
        ``prefetch`` tasks fetched ahead per priority level. Returns once every consumer
        is subscribed.
        """
        if self._state != "idle":
            raise StateError(f"this App is {self._state}; an App starts once (make a new one)")
        chosen = self._choose(queues)
        _check_count("concurrency", concurrency)
        _check_count("prefetch", prefetch)
        self._state = "running"
        try:
            await self.connect()
            consumers: list[tuple[TaskQueue, Worker | BatchWorker]] = []
            for i, queue in enumerate(chosen):
                tq = TaskQueue(self.broker, **self._options, close_broker=False)
                tq._runs_forwarder = i == 0
                consumers.append((tq, self._worker(tq, queue, concurrency, prefetch)))
            self._consumers = [tq for tq, _ in consumers]
            outcomes = await asyncio.gather(*(tq._start_worker(w) for tq, w in consumers), return_exceptions=True)
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                raise failure
        except BaseException:
            for tq in self._consumers:
                with contextlib.suppress(Exception):
                    await tq.stop(graceful=False)
            self._consumers = []
            self._state = "idle"
            raise

    def _choose(self, queues: Sequence[str] | None) -> list[str]:
        if not self._queues:
            raise ConfigurationError("this App has no handlers: register some with @app.task(...) or "
                                     "@app.batch(...)")
        if queues is None:
            return list(self._queues)
        if isinstance(queues, str):
            raise ValidationTypeError("queues must be a list of queue names, e.g. ['images']")
        unknown = [q for q in queues if q not in self._queues]
        if unknown:
            raise ConfigurationError(f"no handlers on queue(s) {', '.join(map(repr, unknown))}; this app has "
                                     f"handlers on {', '.join(map(repr, self._queues))}")
        if not queues:
            raise ValidationError("queues is empty: name at least one queue, or pass None for all")
        return list(dict.fromkeys(queues))

    def _worker(self, tq: TaskQueue, queue: str, concurrency: int, prefetch: int) -> Worker | BatchWorker:
        handlers = self._queues[queue]
        if handlers.batch is not None:
            b = handlers.batch
            return BatchWorker(tq, b.handler, b.aggregator, [queue], timeout=b.timeout,
                               types=frozenset((b.task_type,)))
        return Worker(tq, None, [queue], concurrency, prefetch, handlers=dict(handlers.tasks))

    @property
    def consuming(self) -> bool:
        """Started, and every consumer still subscribed and reading (what /readyz reports)."""
        return self._state == "running" and all(
            tq.worker is not None and tq.worker.consuming for tq in self._consumers)

    @property
    def stalled_queues(self) -> list[str]:
        """Queues whose consumer stopped reading while the app runs (its subscription failed)."""
        if self._state != "running":
            return []
        return [w.queues[0] for tq in self._consumers if (w := tq.worker) is not None and not w.consuming]

    @property
    def running_handlers(self) -> int:
        """Task handlers running now (batch handlers not counted)."""
        return sum(w.running for tq in self._consumers if isinstance(w := tq.worker, Worker))

    async def stop(self, *, graceful: bool = True, timeout: timedelta | None = None) -> None:
        """Stop every consumer (see ``TaskQueue.stop``), then close the broker if the App owns it.

        Graceful: running handlers finish (up to ``timeout``, default the TaskQueue's
        ``stop_timeout``, then they are cancelled and their tasks stay unacked), partial
        batches go to the batch handler, acks are flushed. ``graceful=False``: cancel at once,
        ack nothing more; it also cuts short a graceful stop under way (cancel that caller first).
        """
        if self._state == "stopped" and (graceful or self._forced):
            return
        if self._state == "stopping" and graceful:
            return
        self._forced = self._forced or not graceful
        self._state = "stopping"
        # (Cancelled here, e.g. by a second signal, it leaves the rest to the forced stop that follows.)
        outcomes = await asyncio.gather(
            *(tq.stop(graceful=graceful, timeout=timeout) for tq in self._consumers), return_exceptions=True)
        await self._producer.stop(graceful=graceful)
        if self._owns_broker:
            await self.broker.close()
        self._state = "stopped"
        # (A consumer's stop that was cancelled from inside, not by our caller, is not re-raised
        # as a CancelledError: that would read as this stop being cancelled.)
        failure = next((o for o in outcomes if isinstance(o, Exception)), None)
        if failure is not None:
            raise failure

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
