"""Consumers: the single-task worker and the batch worker.

Both read the ready topics of their queues (one per priority level) through
one subscription, ack only after the handler returned, and send failures
through retry (the durable delay path) or to the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from nova._aggregators import Aggregator
from nova._broker import (
    Delivery,
    HeaderRuns,
    InstantBacklog,
    InstantDeliveries,
    Message,
    RevokedDeliveries,
    Subscription,
)
from nova._clock import SystemClock, wait_with_timeout
from nova._codecs import BlobCodec
from nova._envelope import MAX_ERROR_CHARS, H, TaskDecoder, ms_ceil
from nova._errors import DecodeError
from nova._handlers import CURRENT_TASK, HandlerSpec, call_handler, is_async_callable
from nova._middleware import BROKEN, Outcome, complain
from nova._naming import dead_letter_queue, ready_topic
from nova._policies import StrictPriority
from nova._recording import TaskStatus
from nova._task import Priority, Task

if TYPE_CHECKING:
    from nova._queue import TaskQueue

__all__ = ["BatchWorker", "Worker", "is_async_callable"]

log = logging.getLogger("nova.worker")

Handler = Callable[[Task], Awaitable[None] | None]
BatchHandler = Callable[[list[Task]], Awaitable[None] | None]

LEVELS = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_HIGH, _NORMAL, _LOW = LEVELS  # (an enum member read from its class costs a lookup each time)


def _nothing() -> None:
    return None


_COMPLETED, _RETURNED = Outcome.COMPLETED, Outcome.RETURNED

#: W3C trace context headers (see nova.OpenTelemetryTracing), kept on an undecodable message's dead letter.
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


@dataclass(frozen=True, slots=True)
class _Route:
    queue: str
    priority: Priority


class _BaseWorker:
    """What both workers share: subscription, topic map, failure handling."""

    def __init__(self, tq: TaskQueue, queues: Sequence[str], window: int) -> None:
        self.tq = tq
        self.queues = list(dict.fromkeys(queues))
        self.window = window
        self.routes: dict[str, _Route] = {
            ready_topic(tq.prefix, q, lvl): _Route(q, lvl) for q in self.queues for lvl in LEVELS
        }
        self.sub: Subscription | None = None
        self._pull_task: asyncio.Task[None] | None = None
        self.stopping = False
        self.handled = 0
        decoder = TaskDecoder(tq.codecs)
        self._decode, self._decode_run = decoder.decode, decoder.decode_run
        self._header_run: Callable[[Delivery], tuple[Mapping[str, str], str] | None] | None = None
        # Deliveries the broker took back while they waited here are dropped, not run (None: the
        # broker never takes one back); ``revoked`` counts them.
        self._revoked: Callable[[Delivery], bool] | None = None
        self.revoked = 0
        # The recorder's steps, called straight on the sink (None: no recorder, no call).
        sink = tq._sink
        self.record = sink.emit_task if sink is not None else None
        self.record_start = sink.emit_started if sink is not None else None
        self.record_all = sink.emit_tasks if sink is not None else None
        # Middleware (None: none, and the paths below never look for it).
        self.middleware = tq._middleware
        # Handler seconds for middleware, on the queue's clock (SystemClock.time() is time.time()).
        self._now = time.time if type(tq.clock) is SystemClock else tq.clock.time

    @property
    def consuming(self) -> bool:
        """Subscribed and still reading (False before ``join``, after ``stop`` or if the subscription failed)."""
        return self._pull_task is not None and not self._pull_task.done()

    async def join(self) -> None:
        """Subscribe: deliveries start filling the buffers; no handler runs until ``run()``."""
        dlq_topics = [ready_topic(self.tq.prefix, dead_letter_queue(q), lvl)
                      for q in self.queues for lvl in LEVELS]
        await self.tq.broker.ensure_topics([*self.routes, *dlq_topics])
        self.sub = await self.tq.broker.subscribe(list(self.routes), group=self.tq.group, window=self.window)
        if isinstance(self.sub, HeaderRuns):
            self._header_run = self.sub.header_run
        if isinstance(self.sub, RevokedDeliveries):
            self._revoked = self.sub.revoked
        self._pull_task = asyncio.get_running_loop().create_task(self._pull(self.sub), name="nova-pull")

    async def _pull(self, sub: Subscription) -> None:
        take_nowait = sub.take_nowait if isinstance(sub, InstantDeliveries) else _nothing
        routes, accept = self.routes, self.accept
        try:
            async for first in sub:
                delivery: Delivery | None = first
                while delivery is not None:  # and whatever else is ready, without a step each
                    route = routes.get(delivery.topic)
                    if route is None:
                        await delivery.nack()
                    else:
                        accept(delivery, route)
                    delivery = take_nowait()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("consuming stopped: the subscription failed")

    def accept(self, delivery: Delivery, route: _Route) -> None:
        raise NotImplementedError

    def decode(self, delivery: Delivery, route: _Route) -> Task | None:
        try:
            run = None if self._header_run is None else self._header_run(delivery)
            if run is None:
                task = self._decode(delivery.body, delivery.headers)
            else:
                task = self._decode_run(delivery.body, *run)
        except DecodeError as exc:
            asyncio.get_running_loop().create_task(self._poison(delivery, route, exc))
            return None
        task.queue = route.queue
        return task

    async def _poison(self, delivery: Delivery, route: _Route, exc: DecodeError) -> None:
        """Undecodable bytes go to the dead-letter queue with the decode error.

        They travel on as a Blob task (type ``nova.undecodable`` unless the
        headers named one) so a dead-letter consumer sees the raw bytes and the
        error instead of failing on them again.
        """
        original = delivery.headers
        dlq = dead_letter_queue(route.queue)
        headers = {
            H.ID: original.get(H.ID) or uuid.uuid4().hex,
            H.TYPE: original.get(H.TYPE) or "nova.undecodable",
            H.QUEUE: dlq,
            H.PRIORITY: str(int(Priority.NORMAL)),
            H.ATTEMPT: "1",
            H.CONTENT_TYPE: BlobCodec.content_type,
            H.ERROR: f"DecodeError: {exc}"[:MAX_ERROR_CHARS],
        }
        if H.CONTENT_TYPE in original:
            headers["nova-original-content-type"] = original[H.CONTENT_TYPE][:200]
        for name in _TRACE_HEADERS:  # the dead letter stays in the trace of its enqueue
            if name in original:
                headers[name] = original[name]
        topic = ready_topic(self.tq.prefix, dlq, Priority.NORMAL)
        log.error("undecodable message on %s sent to %s: %s", delivery.topic, dlq, exc)
        await self._publish_then_ack(delivery, Message(topic, delivery.body, headers, headers[H.ID]))

    async def _publish_then_ack(self, delivery: Delivery, message: Message) -> bool:
        try:
            await self.tq.broker.publish([message])
        except Exception as exc:  # noqa: BLE001 - give it back; it will be redelivered
            log.warning("could not publish to %s (%r); the task will be redelivered", message.topic, exc)
            with contextlib.suppress(Exception):
                await delivery.nack()
            return False
        await delivery.ack()
        return True

    async def fail(self, delivery: Delivery, task: Task, route: _Route, exc: BaseException | str, *,
                   retry: bool = True) -> Outcome:
        """Retry with backoff through the delay path, or dead-letter after max_retries (at once
        with ``retry=False``). An ``exc`` given as a str is the error as it is. Returns what became
        of the task (RETURNED: the publish failed, the task was nacked)."""
        error = (exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}")[:MAX_ERROR_CHARS]
        tq = self.tq
        headers = {k: v for k, v in delivery.headers.items() if k not in (H.TARGET, H.HOLD_UNTIL, H.ETA)}
        headers[H.ERROR] = error
        if retry and task.attempt <= tq.retry.max_retries:
            eta = tq.clock.time() + tq.retry.backoff.delay(task.attempt).total_seconds()
            headers[H.ATTEMPT] = str(task.attempt + 1)
            headers[H.ETA] = ms_ceil(eta)
            message = tq.router.route(delivery.topic, delivery.body, headers, task.id, eta)
            if not await self._publish_then_ack(delivery, message):
                return Outcome.RETURNED
            if self.record is not None:
                self.record(task, TaskStatus.RETRYING, error)
            return Outcome.RETRIED
        dlq = dead_letter_queue(route.queue)
        headers[H.QUEUE] = dlq
        message = Message(ready_topic(tq.prefix, dlq, Priority.NORMAL), delivery.body, headers, task.id)
        if not await self._publish_then_ack(delivery, message):
            return Outcome.RETURNED
        log.warning("task %s (%s) went to %s after %d attempt(s): %s",
                    task.id, task.type, dlq, task.attempt, error)
        if self.record is not None:
            self.record(task, TaskStatus.FAILED, error)
        return Outcome.DEAD_LETTERED

    async def _stop_fetching(self) -> None:
        """No more deliveries enter the buffers (what was fetched stays unacked)."""
        if self._pull_task is not None:
            self._pull_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pull_task
            self._pull_task = None

    async def _close_subscription(self) -> None:
        await self._stop_fetching()
        if self.sub is not None:
            await self.sub.close()


class Worker(_BaseWorker):
    """Runs one handler per task, up to ``concurrency`` at once, by priority.

    ``concurrency`` runner coroutines each take the next task the priority
    policy picks from the fetched buffers, run it, ack it, and take the next.
    """

    def __init__(self, tq: TaskQueue, handler: Handler | None, queues: Sequence[str], concurrency: int,
                 prefetch: int, *, timeout: float | None = None,
                 handlers: Mapping[str, HandlerSpec] | None = None) -> None:
        super().__init__(tq, queues, window=max(prefetch, concurrency))
        self.handler = cast(Handler, handler)  # None only with handlers=, where _run is not used
        self.is_async = is_async_callable(handler)
        # ``handlers``: one handler per task type (nova.App); a type without one is dead-lettered.
        self.handlers = handlers
        self._spec = None if handler is None else HandlerSpec(handler, self.is_async, timeout)
        # The plain path (one handler, no time limit) is the tuned one; the other one routes by
        # type, applies time limits and names the task in log records; the observed one does that
        # and calls the middleware.
        if self.middleware is not None:
            self._run_one = self._run_observed
            self._process, self._processed = self.middleware.process, self.middleware.processed
            # As on the routed path: the task in log records (the tuned path leaves that out).
            self._names_tasks = handlers is not None or timeout is not None
        elif handlers is None and timeout is None:
            self._run_one = self._run
        else:
            self._run_one = self._run_routed
        self.concurrency = concurrency
        self.buffers: dict[Priority, deque[tuple[Delivery, _Route]]] = {lvl: deque() for lvl in LEVELS}
        self.running = 0
        self._work = asyncio.Event()  # any delivery arrived (waiting for a higher level)
        self._idle: deque[asyncio.Future[None]] = deque()  # runners waiting for any task
        self._runners: list[asyncio.Task[None]] = []
        self._current: dict[int, asyncio.Task[None]] = {}
        self._patience = 0
        self._strict = isinstance(tq.priority_policy, StrictPriority)
        self._level_topics = {lvl: [ready_topic(tq.prefix, q, lvl) for q in self.queues] for lvl in LEVELS}
        # The ready topics of the levels above each one (what strict priority waits for).
        self._topics_above = {lvl: [t for above in LEVELS if above > lvl for t in self._level_topics[above]]
                              for lvl in LEVELS}
        self._levels = (self.buffers[Priority.HIGH], self.buffers[Priority.NORMAL], self.buffers[Priority.LOW])
        self._backlog_now: Callable[[str], int | None] | None = None

    async def join(self) -> None:
        await super().join()
        if self._strict and isinstance(self.sub, InstantBacklog):
            self._backlog_now = self.sub.backlog_nowait

    def run(self) -> None:
        """Start the runners."""
        loop = asyncio.get_running_loop()
        self._runners = [loop.create_task(self._runner(i), name=f"nova-runner-{i}")
                         for i in range(self.concurrency)]

    def accept(self, delivery: Delivery, route: _Route) -> None:
        self.buffers[route.priority].append((delivery, route))
        self._work.set()
        if self._idle:
            self._wake_one()

    def _wake_one(self) -> None:
        """Wake one idle runner per delivery, not all of them (a herd that mostly sleeps again)."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _runner(self, index: int) -> None:
        streak = 0
        while not self.stopping:
            picked = self._pick_now()
            if picked is None:
                picked = await self._pick()
                if picked is None:
                    continue
            revoked = self._revoked
            if revoked is not None and revoked(picked[0]):
                self.revoked += 1  # the broker delivers it again: that copy runs
                continue
            self.running += 1
            try:
                await self._run_one(*picked)
            finally:
                self.running -= 1
            streak += 1
            if streak >= 64:  # a handler that never suspends must not starve the event loop
                streak = 0
                await asyncio.sleep(0)

    def _pick_now(self) -> tuple[Delivery, _Route] | None:
        """What ``_pick`` would pick under strict priority, when that needs no await (the
        common case: the subscription answers backlogs at once); None to ask ``_pick``."""
        backlog_now = self._backlog_now
        if backlog_now is None:
            return None
        held = self._best_held()
        if held is None:
            return None
        if self._patience < 20:
            for topic in self._topics_above[held]:
                waiting = backlog_now(topic)
                if waiting is None or waiting > 0:
                    return None  # unknown, or a higher level to wait for: _pick decides
        self._patience = 0
        return self.buffers[held].popleft()

    async def _pick(self) -> tuple[Delivery, _Route] | None:
        """The next delivery by priority policy; None to look again."""
        buffers = self.buffers
        if not (buffers[Priority.HIGH] or buffers[Priority.NORMAL] or buffers[Priority.LOW]):
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter
            return None
        if self._strict:
            level = await self._strict_level()
        else:
            level = await self._weighted_level()
        if level is None:
            return None
        if not buffers[level]:
            self._patience += 1
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                await wait_with_timeout(self.tq.clock, self._work.wait(), 0.05)
            return None
        self._patience = 0
        return buffers[level].popleft()

    async def _strict_level(self) -> Priority | None:
        """The highest level with work, here or (not yet fetched) in the broker."""
        held = self._best_held()
        assert held is not None  # _pick saw a delivery and nothing awaited since
        if held is Priority.HIGH or self._patience >= 20:
            return held
        # A level above the best one we hold may have work waiting in the broker: it wins.
        waiting = None
        for above in LEVELS:
            if above is held:
                break
            if await self._backlog(above):
                waiting = above
                break
        # Deliveries may have arrived during those awaits: look at the buffers again.
        now_held = self._best_held()
        if waiting is not None and (now_held is None or now_held < waiting):
            return waiting
        return now_held

    def _best_held(self) -> Priority | None:
        high, normal, low = self._levels
        if high:
            return _HIGH
        if normal:
            return _NORMAL
        return _LOW if low else None

    async def _weighted_level(self) -> Priority | None:
        buffers = self.buffers
        candidates = [lvl for lvl in LEVELS if buffers[lvl]]
        if len(candidates) < len(LEVELS) and self._patience < 20:
            # A level we hold nothing of may still have work waiting in the broker
            # (not yet fetched): it counts as ready, so priority holds across topics.
            waiting = {lvl for lvl in LEVELS if not buffers[lvl] and await self._backlog(lvl)}
            # Deliveries may have arrived during those awaits: look at the buffers again.
            candidates = [lvl for lvl in LEVELS if buffers[lvl] or lvl in waiting]
            if not candidates:
                return None
        return self.tq.priority_policy.choose(candidates)

    async def _backlog(self, level: Priority) -> bool:
        """Whether the broker reports work of ``level`` not yet handed to us."""
        assert self.sub is not None
        for topic in self._level_topics[level]:
            if await self.sub.backlog(topic) > 0:
                return True
        return False

    async def _run(self, delivery: Delivery, route: _Route) -> None:
        task = self.decode(delivery, route)
        if task is None:
            return
        record = self.record
        if record is not None:
            self.record_start(task)  # type: ignore[misc]
        try:
            if self.is_async:
                await self.handler(task)  # type: ignore[misc]
            else:
                await self.tq.clock.run_sync(functools.partial(self.handler, task))
        except asyncio.CancelledError:
            raise  # stopped without grace: not acked, the broker redelivers
        except Exception as exc:  # noqa: BLE001 - any handler error is a task failure
            await self.fail(delivery, task, route, exc)
            return
        await delivery.ack()
        self.handled += 1
        if record is not None:
            record(task, TaskStatus.COMPLETED)

    async def _run_routed(self, delivery: Delivery, route: _Route) -> None:
        task = self.decode(delivery, route)
        if task is None:
            return
        spec = self._spec if self.handlers is None else self.handlers.get(task.type)
        token = CURRENT_TASK.set(task)
        try:
            if spec is None:
                await self.fail(delivery, task, route,
                                f"no handler for task type {task.type!r} on queue {route.queue!r}", retry=False)
                return
            record = self.record
            if record is not None:
                self.record_start(task)  # type: ignore[misc]
            try:
                await call_handler(self.tq.clock, spec, task)
            except asyncio.CancelledError:
                raise  # stopped without grace: not acked, the broker redelivers
            except Exception as exc:  # noqa: BLE001 - any handler error (TaskTimeout too) is a task failure
                await self.fail(delivery, task, route, exc)
                return
            await delivery.ack()
            self.handled += 1
            if record is not None:
                record(task, TaskStatus.COMPLETED)
        finally:
            CURRENT_TASK.reset(token)

    async def _run_observed(self, delivery: Delivery, route: _Route) -> None:
        """``_run`` (or ``_run_routed``) between the middleware's ``process`` and ``processed``."""
        task = self.decode(delivery, route)
        if task is None:
            return
        handlers = self.handlers
        spec = self._spec if handlers is None else handlers.get(task.type)
        tq = self.tq
        token = CURRENT_TASK.set(task) if self._names_tasks else None
        try:
            state = self._process(tq, task, delivery)
        except Exception:  # noqa: BLE001 - an observer must not fail the task
            complain(self.middleware, "process")
            state = BROKEN
        outcome = _RETURNED  # unless it gets further
        error: BaseException | str | None = None
        elapsed: float | None = None
        try:
            if spec is None:
                error = f"no handler for task type {task.type!r} on queue {route.queue!r}"
                outcome = await self.fail(delivery, task, route, error, retry=False)
                return
            record = self.record
            if record is not None:
                self.record_start(task)  # type: ignore[misc]
            fn, is_async, limit = spec
            now = self._now
            started = now()
            try:
                if is_async and limit is None:
                    await fn(task)  # type: ignore[misc]
                else:
                    await call_handler(tq.clock, spec, task)
            except asyncio.CancelledError as exc:
                elapsed, error = now() - started, exc
                raise  # stopped without grace: not acked, the broker redelivers
            except Exception as exc:  # noqa: BLE001 - any handler error (TaskTimeout too) is a task failure
                elapsed, error = now() - started, exc
                outcome = await self.fail(delivery, task, route, exc)
                return
            elapsed = now() - started
            await delivery.ack()
            outcome = _COMPLETED
            self.handled += 1
            if record is not None:
                record(task, TaskStatus.COMPLETED)
        finally:
            if state is not BROKEN:
                try:
                    self._processed(tq, state, task, outcome, error, elapsed)
                except Exception:  # noqa: BLE001
                    complain(self.middleware, "processed")
            if token is not None:
                CURRENT_TASK.reset(token)

    async def stop(self, *, graceful: bool, timeout: float) -> None:
        self.stopping = True
        self._work.set()  # runners waiting for a higher level wake, see stopping, and end
        for waiter in self._idle:  # and so do idle ones
            if not waiter.done():
                waiter.set_result(None)
        self._idle.clear()
        await self._stop_fetching()
        runners = list(self._runners)
        if runners and graceful:
            with contextlib.suppress(TimeoutError):
                await wait_with_timeout(self.tq.clock, asyncio.gather(*runners, return_exceptions=True),
                                        timeout)
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)
        await self._close_subscription()


class BatchWorker(_BaseWorker):
    """Buffers tasks and hands them to a batch handler as the aggregator says."""

    def __init__(self, tq: TaskQueue, handler: BatchHandler, aggregator: Aggregator,
                 queues: Sequence[str], *, timeout: float | None = None,
                 types: frozenset[str] | None = None) -> None:
        # The in-flight window is never smaller than a batch, so a batch can always fill.
        super().__init__(tq, queues, window=aggregator.max_size)
        self.handler = handler
        self.is_async = is_async_callable(handler)
        self._spec = HandlerSpec(handler, self.is_async, timeout)
        # ``types``: the task types the handler takes (nova.App); others are dead-lettered.
        self.types = types
        self._rejects: set[asyncio.Task[None]] = set()
        self.aggregator = aggregator
        self.buffer: list[tuple[Delivery, Task, _Route]] = []
        self.first_at: float | None = None
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.batches = 0

    def run(self) -> None:
        """Start handing batches to the handler."""
        self._loop_task = asyncio.get_running_loop().create_task(self._flush_loop(), name="nova-batch")

    def accept(self, delivery: Delivery, route: _Route) -> None:
        task = self.decode(delivery, route)
        if task is None:
            return
        if self.types is not None and task.type not in self.types:
            error = f"no handler for task type {task.type!r} on queue {route.queue!r}"
            reject = asyncio.get_running_loop().create_task(self._reject(delivery, task, route, error))
            self._rejects.add(reject)
            reject.add_done_callback(self._rejects.discard)
            return
        if not self.buffer:
            self.first_at = self.tq.clock.time()
        self.buffer.append((delivery, task, route))
        self._wakeup.set()

    async def _flush_loop(self) -> None:
        clock = self.tq.clock
        window = self.aggregator.window
        while True:
            if self.stopping:
                while self.buffer:  # stop() hands the partial batch over
                    await self.flush()
                return
            if len(self.buffer) >= self.aggregator.max_size:
                await self.flush()
                continue
            if self.buffer and window is not None and self.first_at is not None:
                deadline = self.first_at + window.total_seconds()
                if clock.time() >= deadline:
                    await self.flush()
                    continue
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_with_timeout(clock, self._wakeup.wait(), deadline - clock.time())
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    async def flush(self) -> None:
        """Hand up to max_size buffered tasks (highest priority first) to the handler."""
        if not self.buffer:
            return
        self.buffer.sort(key=lambda item: -item[1].priority)  # stable: FIFO within a level
        batch = self.buffer[: self.aggregator.max_size]
        del self.buffer[: self.aggregator.max_size]
        self.first_at = self.tq.clock.time() if self.buffer else None
        revoked = self._revoked
        if revoked is not None:
            kept = [item for item in batch if not revoked(item[0])]
            self.revoked += len(batch) - len(kept)  # the broker delivers them again: those copies run
            if not kept:
                return
            batch = kept
        tasks = [task for _, task, _ in batch]
        if self.middleware is not None:
            await self._flush_observed(batch, tasks)
            return
        tq = self.tq
        if self.record_all is not None:
            self.record_all(tasks, TaskStatus.PROCESSING)
        token = CURRENT_TASK.set(tasks)
        try:
            await call_handler(tq.clock, self._spec, tasks)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: retry each task
            for delivery, task, route in batch:
                await self.fail(delivery, task, route, exc)
            return
        finally:
            CURRENT_TASK.reset(token)
        for delivery, _, _ in batch:
            await delivery.ack()
        if self.record_all is not None:
            self.record_all(tasks, TaskStatus.COMPLETED)
        self.batches += 1
        self.handled += len(batch)

    async def _flush_observed(self, batch: list[tuple[Delivery, Task, _Route]], tasks: list[Task]) -> None:
        """``flush``'s handler call and settling, between the middleware's ``process_batch`` and
        ``processed_batch``."""
        mw = self.middleware
        assert mw is not None
        tq = self.tq
        if self.record_all is not None:
            self.record_all(tasks, TaskStatus.PROCESSING)
        token = CURRENT_TASK.set(tasks)
        try:
            state = mw.process_batch(tq, tasks, [delivery for delivery, _, _ in batch])
        except Exception:  # noqa: BLE001 - an observer must not fail the batch
            complain(mw, "process_batch")
            state = BROKEN
        outcomes = [Outcome.RETURNED] * len(batch)
        error: BaseException | None = None
        elapsed: float | None = None
        now = self._now
        started = now()
        try:
            try:
                await call_handler(tq.clock, self._spec, tasks)
            except asyncio.CancelledError as exc:
                elapsed, error = now() - started, exc
                raise
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: retry each task
                elapsed, error = now() - started, exc
                for i, (delivery, task, route) in enumerate(batch):
                    outcomes[i] = await self.fail(delivery, task, route, exc)
                return
            elapsed = now() - started
            for i, (delivery, _, _) in enumerate(batch):
                await delivery.ack()
                outcomes[i] = Outcome.COMPLETED
            if self.record_all is not None:
                self.record_all(tasks, TaskStatus.COMPLETED)
            self.batches += 1
            self.handled += len(batch)
        finally:
            if state is not BROKEN:
                try:
                    mw.processed_batch(tq, state, tasks, outcomes, error, elapsed)
                except Exception:  # noqa: BLE001
                    complain(mw, "processed_batch")
            CURRENT_TASK.reset(token)

    async def _reject(self, delivery: Delivery, task: Task, route: _Route, error: str) -> None:
        """A task of a type the batch handler does not take: to the dead-letter queue, at once."""
        mw = self.middleware
        if mw is None:
            await self.fail(delivery, task, route, error, retry=False)
            return
        tq = self.tq
        try:
            state = mw.process(tq, task, delivery)
        except Exception:  # noqa: BLE001
            complain(mw, "process")
            state = BROKEN
        outcome = Outcome.RETURNED
        try:
            outcome = await self.fail(delivery, task, route, error, retry=False)
        finally:
            if state is not BROKEN:
                try:
                    mw.processed(tq, state, task, outcome, error, None)
                except Exception:  # noqa: BLE001
                    complain(mw, "processed")

    async def stop(self, *, graceful: bool, timeout: float) -> None:
        self.stopping = True
        await self._stop_fetching()
        loop_task = self._loop_task
        if loop_task is not None:
            self._wakeup.set()
            if graceful:
                with contextlib.suppress(TimeoutError):
                    await wait_with_timeout(self.tq.clock, asyncio.shield(loop_task), timeout)
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        await self._close_subscription()

