"""SyncTaskQueue: enqueue from code without an event loop (Django, Flask, scripts).

    with nova.SyncTaskQueue("amqp://guest:guest@127.0.0.1:5672/", topic_prefix="shop") as queue:
        result = queue.enqueue(nova.Task("email", b"hi"), priority=nova.Priority.HIGH)

    queue = nova.SyncTaskQueue(app)   # an App's broker URL, options and routing by task type

It runs a TaskQueue on its own event loop in one background thread; ``enqueue`` and
``enqueue_batch`` block the calling thread until the broker confirmed, and are safe from
any number of threads at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, wait
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from nova._app import App
from nova._broker import Broker
from nova._errors import ClosedError, ConfigurationError, StateError
from nova._queue import TaskQueue
from nova._task import Priority, Result, Task
from nova.brokers import broker_from_url

__all__ = ["SyncTaskQueue"]

T = TypeVar("T")


class SyncTaskQueue:
    """A blocking, thread-safe producer: ``enqueue`` / ``enqueue_batch`` as on ``nova.TaskQueue``.

    ``broker`` is a URL or a broker object; ``options`` are ``nova.TaskQueue``'s. The broker
    lives on this queue's own event loop, so a broker object given here must not be used
    elsewhere; ``close()`` closes it (``close_broker=False`` keeps it open).

        queue = nova.SyncTaskQueue("kafka://127.0.0.1:9092", topic_prefix="shop")
        queue.enqueue(nova.Task("email", b"hi"))
        queue.close()

    Or a ``nova.App`` made from a URL: its own connection to that URL, the App's options
    (``options`` here add to them), and a task goes to the queue its type has a handler on
    unless ``queue=`` says otherwise, as with ``app.enqueue``:

        queue = nova.SyncTaskQueue(app)
        queue.enqueue(nova.Task("resize", b"cat.jpg"))   # -> the queue of @app.task("resize", ...)
    """

    def __init__(self, broker: str | Broker | App, /, **options: Any) -> None:
        #: the queue of an enqueue without queue= ("default", or made from an App, its routing)
        self._route: Callable[[Sequence[Task]], str] = _default_queue
        if isinstance(broker, App):
            app = broker
            broker, options = _app_url(app), {**app._options, **options}
            self._route = app.queue_for_batch
        made = broker_from_url(broker) if isinstance(broker, str) else broker
        options.setdefault("close_broker", True)
        self._queue = TaskQueue(made, **options)
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[Future[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nova-sync-queue", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"SyncTaskQueue(broker={type(self._queue.broker).__name__}, prefix={self._queue.prefix!r}, {state})"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise StateError("SyncTaskQueue blocks until the broker confirmed: call it from another thread "
                             "than its own (here, use an async nova.TaskQueue)")
        with self._lock:  # close() cannot slip in between the check and the submission
            if self._closed:
                coro.close()
                raise ClosedError("this SyncTaskQueue was closed; make a new one")
            future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future.result()

    def enqueue(self, task: Task, *, priority: Priority = Priority.NORMAL,
                process_in: timedelta | float | None = None, process_at: datetime | None = None,
                queue: str | None = None) -> Result:
        """Publish one task; returns once the broker holds it (raises EnqueueError otherwise).
        ``queue`` defaults to "default", or made from an App, to the queue of the task's type."""
        if queue is None:
            queue = self._route((task,))
        return self._submit(self._queue.enqueue(task, priority=priority, process_in=process_in,
                                                process_at=process_at, queue=queue))

    def enqueue_batch(self, tasks: Sequence[Task], *, priority: Priority = Priority.NORMAL,
                      process_in: timedelta | float | None = None, process_at: datetime | None = None,
                      queue: str | None = None) -> list[Result]:
        """Publish several tasks in one confirmed batch; one Result per task, in order (to one
        queue: by default "default", or made from an App, the one of the tasks' types)."""
        if queue is None:
            queue = self._route(tasks)
        return self._submit(self._queue.enqueue_batch(tasks, priority=priority, process_in=process_in,
                                                      process_at=process_at, queue=queue))

    def close(self) -> None:
        """Wait for enqueues under way, close the connection (and the broker), stop the thread.

        Idempotent; ``enqueue`` after it raises ``nova.ClosedError``.
        """
        if threading.current_thread() is self._thread:
            raise StateError("close() a SyncTaskQueue from another thread than its own")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
        wait(pending)
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    async def _shutdown(self) -> None:
        try:
            await self._queue.stop()
        finally:  # what asyncio.run does when its main coroutine ends
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._loop.shutdown_asyncgens()
            await self._loop.shutdown_default_executor()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _default_queue(tasks: Sequence[Task]) -> str:
    return "default"


def _app_url(app: App) -> str:
    """The URL SyncTaskQueue(app) connects to: the App's, which must name a shared broker."""
    url = app._url
    if url is None:
        raise ConfigurationError(
            "SyncTaskQueue(app) opens its own connection to the App's broker URL, and this App was "
            "given a broker object: make the App from a URL (nova.App('amqp://...')), or give "
            "SyncTaskQueue the URL and pass queue= to each enqueue")
    if url.startswith("sim:"):
        raise ConfigurationError(
            "SyncTaskQueue(app) would make a second, separate in-memory broker from a sim:// URL "
            "(the App's workers would never see its tasks): use a real broker's URL")
    return url
