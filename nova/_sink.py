"""RecordingSink: feeds a TaskRecorder from the engine without ever blocking or failing a task.

The engine reports every lifecycle step to its queue's sink; the sink buffers the
steps' fields and one background task writes them in batches. Three shapes of
buffered step keep the engine's path short (each a flat list, read back with
strided slices, so no object is made per step):

- rows: one event, all of its :data:`EVENT_FIELDS` (:meth:`RecordingSink.emit_step`, ...);
- a published batch: one entry for all the tasks one confirmed publish took
  (:meth:`RecordingSink.emit_published`), expanded to events when written;
- a consumer's two steps of one task: PROCESSING is kept aside (task, start time)
  until the task's next step, and both go in as one entry
  (:meth:`RecordingSink.emit_started` then :meth:`RecordingSink.emit_task`).
  A write or a read that comes first takes the waiting PROCESSING steps as rows.

``stop_timeout`` bounds :meth:`RecordingSink.close` on the system clock: a recorder
that hangs, refuses or is slow cannot hold up ``TaskQueue.stop()``. What is left
then is dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

from nova._clock import SystemClock, wait_with_timeout
from nova._recording import (
    EVENT_FIELDS,
    ColumnarTaskRecorder,
    EventColumns,
    TaskEvent,
    TaskRecorder,
    TaskStatus,
    event_from_row,
    feeds,
    row_from_event,
)

if TYPE_CHECKING:
    from nova._clock import Clock
    from nova._task import Result, Task

__all__ = ["RecordingSink"]

log = logging.getLogger("nova.recording")

_WIDTH = len(EVENT_FIELDS)  # a row: every field of one event
# A published batch: (ids, queue, priority, eta, types, headers or None, payloads or None, status, at, version).
# A task's PROCESSING step and its next one: one entry of _PAIR fields.
_PAIR = 13  # id, type, queue, priority, attempt, eta, headers, started, its version, at, version, status, error
_PROCESSING = TaskStatus.PROCESSING
_id_of = itemgetter(0)  # of a Result
_type_of = attrgetter("type")
_headers_of = attrgetter("headers")
_payload_of = attrgetter("payload")
_BYTES_ONLY = {bytes}


class RecordingSink:
    """Feeds a TaskRecorder from the engine without ever blocking or failing it.

    Events are buffered (at most ``max_buffer``; beyond that they are dropped and
    counted) and written in batches of up to ``batch_size`` by one background task,
    at ``batch_size`` events or ``flush_interval`` seconds of the engine's clock,
    whichever comes first. A failing write is retried with backoff; after
    ``max_attempts`` the batch is dropped, counted and logged. The defaults (50,000
    events or 0.5 s) follow ClickHouse's advice of few, large inserts.

    :meth:`close` (``TaskQueue.stop()``) writes what is left, waiting at most
    ``stop_timeout`` seconds of real time: then whatever is still unwritten is dropped,
    counted in ``dropped`` and logged in one line. While closing, retry pauses end at
    the engine's clock or real time, whichever passes first (a virtual clock that
    nobody moves any more cannot hold a retry).

    Reads of a nova recorder call :meth:`sync` first, through the recorder (read your
    own writes): what this process buffered for it is written before the read.

    A :class:`ColumnarTaskRecorder` gets each batch as :data:`EventColumns`; any other
    recorder gets TaskEvents built in the background.

    >>> sink = RecordingSink(nova.MemoryTaskRecorder(), nova.SystemClock(), stop_timeout=2.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        recorder: TaskRecorder,
        clock: Clock,
        *,
        max_buffer: int = 500_000,
        batch_size: int = 50_000,
        max_attempts: int = 5,
        flush_interval: float = 0.5,
        stop_timeout: float = 5.0,
    ) -> None:
        if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, int | float) or not stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be a number of seconds >= 0, got {stop_timeout!r}")
        self.recorder = recorder
        self._columnar = recorder if isinstance(recorder, ColumnarTaskRecorder) else None
        # A recorder that says it stores no payload (ClickHouseTaskRecorder's store_payload) gets none.
        self._payloads = getattr(recorder, "store_payload", True) is not False
        self._clock = clock
        # SystemClock.time() is time.time() behind one more call: the hot path skips it
        self._time = time.time if type(clock) is SystemClock else clock.time
        # Buffered steps (module docstring): rows, published batches, consumer pairs.
        self._fields: list[Any] = []
        self._extend = self._fields.extend
        self._published: list[tuple[Any, ...]] = []
        self._pairs: list[Any] = []
        self._extend_pairs = self._pairs.extend
        self._running: dict[Task, float] = {}  # task -> when its PROCESSING step began
        self._count = 0  # events buffered (rows, published and pairs; not _running)
        self._room = max_buffer
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._flush_interval = flush_interval
        self.stop_timeout = float(stop_timeout)
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = asyncio.Event()  # ends a retry pause once close() began
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._batches: list[EventColumns] = []  # taken out of the buffer, to write
        self._offering: set[asyncio.Future[None]] = set()  # recorder calls in flight
        self._taken = 0  # events out of the buffer, not yet written or dropped
        # The highest version given out. Every step gets a higher one, so a task's versions
        # strictly increase even within one clock instant (a virtual clock), with no per-task state.
        self._version = 0
        self.dropped = 0
        self.written = 0
        self.failures = 0
        feeds(recorder, self)

    # -- the engine's steps (never raise, never wait) ---------------------------------
    def emit(self, event: TaskEvent) -> None:
        """Queue one event."""
        row = row_from_event(event)
        version = event.version if event.version > self._version else self._version + 1
        self._version = version
        self._add_rows([(*row[:6], version, *row[7:])])

    def emit_step(self, task_id: str, type_: str, queue: str, priority: int, status: TaskStatus,
                  attempt: int, error: str | None, eta: datetime | None, headers: Mapping[str, str],
                  payload: bytes | None) -> None:
        """Queue one lifecycle step happening now (by the sink's clock).

        :meth:`emit` without a TaskEvent. ``headers`` are copied now; ``payload`` is kept
        as given (bytes do not change).
        """
        now, version = self._stamp()
        self._add_rows([(task_id, type_, queue, priority, status, now, version, attempt, error, eta,
                         tuple(headers.items()) if headers else (), payload)])

    def emit_started(self, task: Task) -> None:
        """A consumer began ``task`` (PROCESSING) now: kept aside until its next step."""
        self._running[task] = self._time()
        if not self._count:
            self._wake()

    def emit_task(self, task: Task, status: TaskStatus, error: str | None = None) -> None:
        """Queue the step a consumer takes on ``task`` now, and its PROCESSING step if it waits.

        Fields are read off the task now; no payload (it travels with QUEUED).
        """
        now = self._time()
        started = self._running.pop(task, None)
        if started is None:  # no PROCESSING waiting (written already, or not a consumer's step)
            self._emit_one(task, status, error, now)
            return
        first = int(started * 1_000_000)  # never below its time: a tie with another process's
        if first <= self._version:        # step of the task is broken by lifecycle rank
            first = self._version + 1
        version = int(now * 1_000_000)
        if version <= first:
            version = first + 1
        self._version = version
        headers = task.headers
        count = self._count + 2
        if 2 < count <= self._room:  # the common case: the writer is awake, there is room
            self._count = count
            self._extend_pairs((task.id, task.type, task.queue, task.priority, task.attempt, task.eta,
                                tuple(headers.items()) if headers else (), started, first, now, version, status,
                                error))
            if count >= self._batch_size > count - 2:
                self._full.set()
        elif self._admit(2):  # the first events (wake or start the writer), or too many (dropped, counted)
            self._extend_pairs((task.id, task.type, task.queue, task.priority, task.attempt, task.eta,
                                tuple(headers.items()) if headers else (), started, first, now, version, status,
                                error))

    def _emit_one(self, task: Task, status: TaskStatus, error: str | None, now: float) -> None:
        version = int(now * 1_000_000)
        if version <= self._version:
            version = self._version + 1
        self._version = version
        headers = task.headers
        self._add_rows([(task.id, task.type, task.queue, task.priority, status, now, version, task.attempt,
                         error, task.eta, tuple(headers.items()) if headers else (), None)])

    def emit_published(self, results: Sequence[Result], tasks: Sequence[Task], status: TaskStatus) -> None:
        """Queue the QUEUED (or PENDING) step of tasks one confirmed publish just took.

        One publish: one queue, priority and eta for all (``results[0]``'s), and one
        instant: one time and one version (versions only need to rise per task). One
        entry for the whole batch; what could change later (the tasks' types, headers and
        payloads) is taken now.
        """
        size = len(results)
        if not size:
            return
        now, version = self._stamp()
        room = self._room - self._count
        if size > room:  # too many: the ones past the room are dropped and counted
            self._count_dropped(size - max(room, 0))
            if room <= 0:
                return
            results, tasks, size = results[:room], tasks[:room], room
        snapshot: list[Mapping[str, str]] = list(map(_headers_of, tasks))
        headers = [tuple(h.items()) if h else () for h in snapshot] if any(snapshot) else None
        payloads: list[bytes] | None = None
        if self._payloads:
            payloads = list(map(_payload_of, tasks))
            if set(map(type, payloads)) != _BYTES_ONLY:
                payloads = [bytes(p) for p in payloads]
        self._admit(size, checked=True)
        _, queue, priority, eta = results[0]
        self._published.append((list(map(_id_of, results)), queue, priority, eta, list(map(_type_of, tasks)),
                                headers, payloads, status, now, version))

    def emit_tasks(self, tasks: Sequence[Task], status: TaskStatus) -> None:
        """Queue the same step of tasks a batch handler takes together (the batch worker's path).

        One instant for all of them, as :meth:`emit_published`: one time and one version.
        """
        now, version = self._stamp()
        self._add_rows([
            (task.id, task.type, task.queue, task.priority, status, now, version, task.attempt, None, task.eta,
             tuple(task.headers.items()) if task.headers else (), None)
            for task in tasks
        ])

    def _stamp(self) -> tuple[float, int]:
        """Now by the sink's clock, and a version above every one given so far: one counter
        for the process, so a task's versions rise even within one clock instant."""
        now = self._time()
        version = int(now * 1_000_000)
        if version <= self._version:
            version = self._version + 1
        self._version = version
        return now, version

    def _add_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        size = len(rows)
        count = self._count + size
        if self._count and count <= self._room:  # the writer is awake, there is room
            self._count = count
            extend = self._extend
            for row in rows:
                extend(row)
            if count >= self._batch_size > count - size:
                self._full.set()
            return
        room = self._room - self._count
        if size > room:
            self._count_dropped(size - max(room, 0))
            rows = rows[:max(room, 0)]
        if rows and self._admit(len(rows)):
            for row in rows:
                self._extend(row)

    def _admit(self, size: int, *, checked: bool = False) -> bool:
        """Make room for ``size`` events (False: dropped and counted); wake the writer."""
        if not checked and self._count + size > self._room:
            self._count_dropped(size)
            return False
        self._count += size
        if self._count >= self._batch_size:
            self._full.set()
        self._wake()
        return True

    def _count_dropped(self, size: int) -> None:
        before = self.dropped
        self.dropped += size
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning("task recorder is behind; %d events dropped so far", self.dropped)

    def _wake(self) -> None:
        """Wake the writer (start it on the first event)."""
        self._wakeup.set()
        if self._task is None and not self._closing:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._task = loop.create_task(self._run(), name="nova-recorder")

    # -- the buffer, as batches ----------------------------------------------------------
    def _take_started(self) -> None:
        """The PROCESSING steps kept aside become rows (a write or a read is coming)."""
        running = self._running
        if not running:
            return
        self._running = {}
        rows = []
        last = self._version
        for task, started in running.items():
            version = int(started * 1_000_000)
            if version <= last:
                version = last + 1
            last = version
            headers = task.headers
            rows.append((task.id, task.type, task.queue, task.priority, _PROCESSING, started, version, task.attempt,
                         None, task.eta, tuple(headers.items()) if headers else (), None))
        self._version = last
        self._add_rows(rows)

    def _take(self) -> EventColumns | None:
        """Everything buffered, out of the buffer, as columns (None: nothing)."""
        self._take_started()
        if not self._count:
            return None
        fields, pairs, published = self._fields, self._pairs, self._published
        self._fields, self._pairs, self._published = [], [], []
        self._extend, self._extend_pairs = self._fields.extend, self._pairs.extend
        self._taken += self._count
        self._count = 0
        columns: EventColumns = tuple(fields[i::_WIDTH] for i in range(_WIDTH))
        (task_ids, types, queues, priorities, statuses, ats, versions, attempts, errors, etas, headers,
         payloads) = columns
        if pairs:
            ids, types_, queues_, priorities_, attempts_, etas_, headers_ = (pairs[i::_PAIR] for i in range(7))
            started, first, at, version, status = (pairs[i::_PAIR] for i in range(7, 12))
            n = len(ids)
            for column, part in ((task_ids, ids), (types, types_), (queues, queues_), (priorities, priorities_),
                                 (attempts, attempts_), (etas, etas_), (headers, headers_)):
                column += part
                column += part
            statuses += [_PROCESSING] * n
            statuses += status
            ats += started
            ats += at
            versions += first
            versions += version
            errors += [None] * n
            errors += pairs[12::_PAIR]
            payloads += [None] * (2 * n)
        for ids, queue, priority, eta, types_, headers_, payloads_, status_, at_, version_ in published:
            n = len(ids)
            task_ids += ids
            types += types_
            queues += [queue] * n
            priorities += [priority] * n
            statuses += [status_] * n
            ats += [at_] * n
            versions += [version_] * n
            attempts += [1] * n
            errors += [None] * n
            etas += [eta] * n
            headers += headers_ or [()] * n
            payloads += payloads_ or [None] * n
        return columns

    # -- writing ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._count < self._batch_size and not self._closing and self._flush_interval > 0:
                # Gather a fuller batch: write at batch_size events or flush_interval, whichever first.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_with_timeout(self._clock, self._full.wait(), self._flush_interval)
            await self.flush()
            if self._closing and not self._count and not self._batches:
                return

    def _queue_batches(self) -> None:
        """Move what is buffered to the batches to write, batch_size events each."""
        columns = self._take()
        if columns is None:
            return
        size, total = self._batch_size, len(columns[0])
        if total <= size:
            self._batches.append(columns)
        else:
            self._batches += [tuple(column[start:start + size] for column in columns)
                              for start in range(0, total, size)]

    async def _offer(self, batch: EventColumns) -> None:
        """One call of the recorder with ``batch`` (raises what it raises)."""
        done = asyncio.get_running_loop().create_future()
        self._offering.add(done)
        try:
            if self._columnar is not None:
                await self._columnar.record_columns(batch)
            else:
                await self.recorder.record([event_from_row(r) for r in zip(*batch, strict=True)])
        finally:
            self._offering.discard(done)
            done.set_result(None)

    async def _write(self, batch: EventColumns) -> None:
        count = len(batch[0])
        delay = 0.05
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._offer(batch)
            except Exception as exc:  # noqa: BLE001 - a recorder must never break tasks
                self.failures += 1
                if attempt == self._max_attempts:
                    self._taken -= count
                    self.dropped += count
                    log.error("task recorder failed %d times, dropped %d events: %r", attempt, count, exc)
                    return
                log.warning("task recorder failed (attempt %d): %r", attempt, exc)
                await self._pause(delay)
                delay = min(delay * 2, 5.0)
            else:
                self._taken -= count
                self.written += count
                return

    async def _pause(self, seconds: float) -> None:
        """Wait between attempts: ``seconds`` of the engine's clock, or of real time once closing."""
        if not self._closing:
            with contextlib.suppress(TimeoutError):  # close() ends the pause at once
                await wait_with_timeout(self._clock, self._stopping.wait(), seconds)
            if not self._closing:
                return
        clock_sleep = asyncio.ensure_future(self._clock.sleep(seconds))
        real_sleep = asyncio.ensure_future(asyncio.sleep(seconds))
        try:
            await asyncio.wait({clock_sleep, real_sleep}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            clock_sleep.cancel()
            real_sleep.cancel()

    async def sync(self) -> None:
        """Write what this sink buffered, after any write in flight (before a read of its recorder).

        One attempt per batch: a batch that fails here is left to the background writer's retries.
        """
        if self._loop is not asyncio.get_running_loop():
            return  # nothing emitted on this loop
        if self._offering:
            await asyncio.wait(list(self._offering))
        self._queue_batches()
        batches, self._batches = self._batches, []
        for index, batch in enumerate(batches):
            try:
                await self._offer(batch)
            except Exception as exc:  # noqa: BLE001 - the read goes on; the writer retries
                self.failures += 1
                log.warning("task recorder failed (before a read): %r", exc)
                self._batches[:0] = batches[index:]
                self._wake()
                return
            count = len(batch[0])
            self._taken -= count
            self.written += count

    async def flush(self) -> None:
        """Write everything buffered so far (with the usual retries)."""
        self._queue_batches()
        while self._batches:
            await self._write(self._batches.pop(0))

    async def close(self) -> None:
        """Write what is left, waiting at most ``stop_timeout`` seconds of real time; then drop the rest."""
        self._closing = True
        self._stopping.set()
        self._take_started()
        self._wakeup.set()
        self._full.set()
        task = self._task
        if task is None:
            if not self._count and not self._batches:
                return
            self._wake_for_close()
            task = self._task
            assert task is not None
        if not task.done():
            await asyncio.wait({task}, timeout=self.stop_timeout)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            lost = self._taken + self._count  # taken: in flight, or batched and not yet written
            self._fields, self._pairs, self._published, self._batches = [], [], [], []
            self._extend, self._extend_pairs = self._fields.extend, self._pairs.extend
            self._count = self._taken = 0
            self.dropped += lost
            log.error("task recorder did not finish within %.3g s of stop(); dropped %d events",
                      self.stop_timeout, lost)
        elif not task.cancelled() and task.exception() is not None:
            log.error("task recorder writer failed: %r", task.exception())

    def _wake_for_close(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._task = loop.create_task(self._run(), name="nova-recorder")
