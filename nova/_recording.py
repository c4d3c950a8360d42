"""Task recording: the TaskRecorder protocol, TaskRecord, and the in-memory recorder.

The engine calls ``recorder.record(event)`` at every lifecycle step through a
:class:`RecordingSink` that never blocks or fails a task: events go into a
bounded buffer written in the background; failures are logged and counted.

    recorder = nova.MemoryTaskRecorder()
    queue = nova.TaskQueue(broker, recorder=recorder)
    ...
    record = await recorder.get(result.id)
    assert record.status is nova.TaskStatus.COMPLETED
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nova._clock import SystemClock, wait_with_timeout

if TYPE_CHECKING:
    from nova._clock import Clock
    from nova._task import Result, Task

__all__ = [
    "EVENT_FIELDS",
    "ColumnarTaskRecorder",
    "EventColumns",
    "EventRow",
    "MemoryTaskRecorder",
    "QueryableTaskRecorder",
    "RecordingSink",
    "TaskEvent",
    "TaskRecord",
    "TaskRecorder",
    "TaskStatus",
    "columns_from_events",
    "event_from_row",
    "row_from_event",
]

log = logging.getLogger("nova.recording")


class TaskStatus(enum.StrEnum):
    """Lifecycle states (the seed's, plus RETRYING)."""

    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One lifecycle step of one task, as the engine reports it.

    ``at`` is when it happened (aware UTC, from the engine's clock). ``version``
    increases with every event of the same task from one engine (it is
    ``at`` in microseconds, bumped past the engine's previous one if not higher),
    so the latest row wins.
    """

    task_id: str
    type: str
    queue: str
    priority: int
    status: TaskStatus
    at: datetime
    version: int
    attempt: int = 1
    error: str | None = None
    eta: datetime | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """The latest known state of a task."""

    task_id: str
    type: str
    queue: str
    priority: int
    status: TaskStatus
    retry_count: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    eta: datetime | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    payload: bytes | None = None
    version: int = 0


@runtime_checkable
class TaskRecorder(Protocol):
    """Stores task lifecycle events and answers questions about them."""

    async def record(self, events: Sequence[TaskEvent]) -> None:
        """Store these events (a batch). May raise; the engine copes."""
        ...

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def close(self) -> None: ...


# A TaskEvent as the sink buffers it: the same fields in the same order, with
# ``at`` as epoch seconds (a float) and ``headers`` as a tuple of (name, value) pairs:
# (task_id, type, queue, priority, status, at, version, attempt, error, eta, headers, payload)
EventRow = tuple[str, str, str, int, "TaskStatus", float, int, int, "str | None", "datetime | None",
                 tuple[tuple[str, str], ...], "bytes | None"]
# A batch of EventRows stored by field: one list per EventRow field, all the same
# length (``zip(*columns)`` gives the rows); what a columnar database takes.
EventColumns = tuple[list[Any], ...]
EVENT_FIELDS = ("task_id", "type", "queue", "priority", "status", "at", "version", "attempt", "error",
                "eta", "headers", "payload")


def row_from_event(event: TaskEvent) -> EventRow:
    """The buffered form of ``event`` (a naive ``at`` means UTC)."""
    at = event.at if event.at.tzinfo is not None else event.at.replace(tzinfo=UTC)
    return (event.task_id, event.type, event.queue, int(event.priority), TaskStatus(event.status),
            at.timestamp(), event.version, event.attempt, event.error, event.eta, tuple(event.headers.items()),
            event.payload)


def event_from_row(row: Sequence[Any]) -> TaskEvent:
    """The TaskEvent a buffered row stands for (``at`` back as an aware UTC datetime)."""
    task_id, type_, queue, priority, status, at, version, attempt, error, eta, headers, payload = row
    return TaskEvent(task_id=task_id, type=type_, queue=queue, priority=int(priority), status=TaskStatus(status),
                     at=datetime.fromtimestamp(at, UTC), version=version, attempt=attempt, error=error,
                     eta=eta, headers=dict(headers), payload=payload)


def columns_from_events(events: Iterable[TaskEvent]) -> EventColumns:
    """``events`` as EventColumns."""
    columns: EventColumns = tuple([] for _ in EVENT_FIELDS)
    for event in events:
        for column, value in zip(columns, row_from_event(event), strict=True):
            column.append(value)
    return columns


@runtime_checkable
class ColumnarTaskRecorder(TaskRecorder, Protocol):
    """A TaskRecorder that also takes the sink's batches as they are (EventColumns), so no
    TaskEvent is built. ClickHouseTaskRecorder is one; any other recorder gets TaskEvents.

    ``record_columns(columns)`` must store exactly what
    ``record([event_from_row(r) for r in zip(*columns)])`` would.
    """

    async def record_columns(self, columns: EventColumns) -> None: ...


@runtime_checkable
class QueryableTaskRecorder(TaskRecorder, Protocol):
    """A TaskRecorder that also answers questions (``nova tasks``); both built-in ones are.

    Every implementation agrees with :func:`fold_events` over the task's events,
    whatever order they arrived in; an event with the same version and status as
    an earlier one replaces it (so a re-sent batch is not counted twice).
    """

    async def history(self, task_id: str) -> list[TaskEvent]:
        """Every event of one task, oldest first (in :func:`event_order`)."""
        ...

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        """Records matching every given filter, newest (by update) first."""
        ...

    async def counts(self) -> dict[TaskStatus, int]:
        """Number of tasks per current status."""
        ...

    async def counts_by_queue(self) -> dict[str, dict[TaskStatus, int]]:
        """Number of tasks per current queue, then per current status."""
        ...

    async def delete(self, task_id: str) -> bool:
        """Forget one task; True if it was recorded."""
        ...


# Ties of version (two engines, one clock instant) are broken by lifecycle rank,
# so every recorder picks the same latest state whatever the arrival order.
STATUS_RANK: Mapping[TaskStatus, int] = {
    TaskStatus.UNKNOWN: 0,
    TaskStatus.PENDING: 1,
    TaskStatus.QUEUED: 2,
    TaskStatus.PROCESSING: 3,
    TaskStatus.RETRYING: 4,
    TaskStatus.COMPLETED: 5,
    TaskStatus.FAILED: 6,
    TaskStatus.CANCELLED: 7,
    TaskStatus.TIMEOUT: 8,
    TaskStatus.SKIPPED: 9,
}


def event_order(event: TaskEvent) -> tuple[int, int]:
    """Where an event sits in its task's life: (version, lifecycle rank)."""
    return event.version, STATUS_RANK[event.status]


def apply_event(previous: TaskRecord | None, event: TaskEvent) -> TaskRecord:
    """Fold one event into a record: the state machine every recorder shares."""
    if previous is not None and event_order(event) < (previous.version, STATUS_RANK[previous.status]):
        return previous
    started = previous.started_at if previous else None
    completed = previous.completed_at if previous else None
    if event.status is TaskStatus.PROCESSING and started is None:
        started = event.at
    if event.status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED,
                        TaskStatus.TIMEOUT, TaskStatus.SKIPPED):
        completed = event.at
    return TaskRecord(
        task_id=event.task_id,
        type=event.type,
        queue=event.queue,
        priority=event.priority,
        status=event.status,
        retry_count=max(event.attempt - 1, previous.retry_count if previous else 0),
        error=event.error if event.error is not None else (previous.error if previous else None),
        created_at=previous.created_at if previous else event.at,
        updated_at=event.at,
        started_at=started,
        completed_at=completed,
        eta=event.eta if event.eta is not None else (previous.eta if previous else None),
        headers=dict(event.headers) or (dict(previous.headers) if previous else {}),
        payload=event.payload if event.payload is not None else (
            previous.payload if previous else None),
        version=event.version,
    )


def fold_events(events: Iterable[TaskEvent]) -> TaskRecord | None:
    """Fold events through :func:`apply_event` in :func:`event_order` (None if there are none)."""
    record: TaskRecord | None = None
    for event in sorted(events, key=event_order):
        record = apply_event(record, event)
    return record


class MemoryTaskRecorder:
    """A TaskRecorder in a dict: for tests, the demo, and single-process use.

    >>> recorder = MemoryTaskRecorder()
    """

    def __init__(self) -> None:
        self._records: dict[str, TaskRecord] = {}
        # per task: (version, rank) -> event; a repeat replaces the earlier event,
        # as in the ClickHouse table (ReplacingMergeTree on task, version, status)
        self._history: dict[str, dict[tuple[int, int], TaskEvent]] = {}

    async def record(self, events: Sequence[TaskEvent]) -> None:
        for event in events:
            history = self._history.setdefault(event.task_id, {})
            history[event_order(event)] = event
            current = self._records.get(event.task_id)
            if current is None or event_order(event) > (current.version, STATUS_RANK[current.status]):
                self._records[event.task_id] = apply_event(current, event)
            else:  # a late or repeated event: refold, so arrival order does not matter
                folded = fold_events(history.values())
                assert folded is not None
                self._records[event.task_id] = folded

    async def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    async def history(self, task_id: str) -> list[TaskEvent]:
        """Every event of one task, oldest first."""
        return sorted(self._history.get(task_id, {}).values(), key=event_order)

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        queue: str | None = None,
        type: str | None = None,  # noqa: A002
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        """Records matching every given filter, newest (by update) first."""
        rows = [
            r for r in self._records.values()
            if (status is None or r.status is status)
            and (queue is None or r.queue == queue)
            and (type is None or r.type == type)
            and (since is None or r.updated_at >= since)
            and (until is None or r.updated_at < until)
        ]
        rows.sort(key=lambda r: (r.updated_at, r.version, r.task_id), reverse=True)
        return rows[offset: offset + limit]

    async def counts(self) -> dict[TaskStatus, int]:
        """Number of tasks per current status."""
        out: dict[TaskStatus, int] = {}
        for r in self._records.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out

    async def counts_by_queue(self) -> dict[str, dict[TaskStatus, int]]:
        """Number of tasks per current queue and status."""
        out: dict[str, dict[TaskStatus, int]] = {}
        for r in self._records.values():
            per_queue = out.setdefault(r.queue, {})
            per_queue[r.status] = per_queue.get(r.status, 0) + 1
        return out

    async def delete(self, task_id: str) -> bool:
        self._history.pop(task_id, None)
        return self._records.pop(task_id, None) is not None

    async def close(self) -> None:
        return None


_WIDTH = len(EVENT_FIELDS)


class RecordingSink:
    """Feeds a TaskRecorder from the engine without ever blocking or failing it.

    Events are buffered (at most ``max_buffer``; beyond that they are dropped
    and counted) and written in batches of up to ``batch_size`` by one
    background task, at ``batch_size`` events or ``flush_interval`` seconds of
    the engine's clock, whichever comes first. A failing write is retried with backoff; after
    ``max_attempts`` the batch is dropped, counted and logged. The defaults (50,000
    events or 0.5 s) follow ClickHouse's advice of few, large inserts: every insert
    makes a part that background merges rewrite (at 10,000 events a batch, merging
    cost chDB more CPU than inserting).

    The engine records a published batch with :meth:`emit_published` and each
    consumer step with :meth:`emit_task`, which append the event's fields to one flat
    list (~0.35 us per task and ~0.55 us per consumer step on the benchmark machine,
    where a frozen TaskEvent takes ~2 us to build). A batch leaves that list as
    :data:`EventColumns` (a strided slice per field): a :class:`ColumnarTaskRecorder`
    gets them as they are, any other recorder gets TaskEvents built in the background.
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
    ) -> None:
        self.recorder = recorder
        self._columnar = recorder if isinstance(recorder, ColumnarTaskRecorder) else None
        self._clock = clock
        # SystemClock.time() is time.time() behind one more call: the hot path skips it
        self._time = time.time if type(clock) is SystemClock else clock.time
        # buffered events, field after field: event i is _fields[i * _WIDTH:(i + 1) * _WIDTH]
        self._fields: list[Any] = []
        self._extend = self._fields.extend
        self._room = max_buffer * _WIDTH  # lengths of _fields, in fields
        self._batch_fields = batch_size * _WIDTH
        self._max_attempts = max_attempts
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._flush_interval = flush_interval
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # The highest version given out. Every step gets a higher one, so a task's versions
        # strictly increase even within one clock instant (a virtual clock), with no per-task state.
        self._version = 0
        self.dropped = 0
        self.written = 0
        self.failures = 0

    def emit(self, event: TaskEvent) -> None:
        """Queue one event; never raises, never waits."""
        row = row_from_event(event)
        version = event.version if event.version > self._version else self._version + 1
        self._version = version
        self._push((*row[:6], version, *row[7:]))

    def emit_step(self, task_id: str, type_: str, queue: str, priority: int, status: TaskStatus,
                  attempt: int, error: str | None, eta: datetime | None, headers: Mapping[str, str],
                  payload: bytes | None) -> None:
        """Queue one lifecycle step happening now (by the sink's clock); never raises, never waits.

        :meth:`emit` without a TaskEvent. ``headers`` are copied now; ``payload`` is kept
        as given (bytes do not change).
        """
        now, version = self._stamp()
        self._append_rows([(task_id, type_, queue, priority, status, now, version, attempt, error, eta,
                            tuple(headers.items()) if headers else (), payload)])

    def emit_task(self, task: Task, status: TaskStatus, error: str | None = None) -> None:
        """Queue a step a consumer takes on ``task`` now (the engine's path, twice per task).

        :meth:`emit_step` with the fields read off the task and no payload (it travels with
        QUEUED); :meth:`_stamp` and :meth:`_append_rows` written out, one call instead of three.
        """
        now = self._time()
        version = int(now * 1_000_000)
        if version <= self._version:
            version = self._version + 1
        self._version = version
        headers = task.headers
        row = (task.id, task.type, task.queue, task.priority, status, now, version, task.attempt, error,
               task.eta, tuple(headers.items()) if headers else (), None)
        buffered = len(self._fields)
        if 0 < buffered < self._room:  # the common case: the writer is awake, there is room
            self._extend(row)
            if buffered + _WIDTH == self._batch_fields:
                self._full.set()
        else:  # the first event (wake or start the writer), or one too many (drop it)
            self._push(row)

    def emit_published(self, results: Sequence[Result], tasks: Sequence[Task], status: TaskStatus) -> None:
        """Queue the QUEUED (or PENDING) step of tasks one confirmed publish just took (the engine's path).

        They became queued at one instant: one time and one version for all (versions
        only need to rise per task).
        """
        now, version = self._stamp()
        self._append_rows([
            (result.id, task.type, result.queue, result.priority, status, now, version, 1, None, result.eta,
             tuple(task.headers.items()) if task.headers else (), bytes(task.payload))
            for result, task in zip(results, tasks, strict=True)
        ])

    def emit_tasks(self, tasks: Sequence[Task], status: TaskStatus) -> None:
        """Queue the same step of tasks a batch handler takes together (the batch worker's path).

        One instant for all of them, as :meth:`emit_published`: one time and one version.
        """
        now, version = self._stamp()
        self._append_rows([
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

    def _append_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        buffered = len(self._fields)
        if buffered > 0 and buffered + len(rows) * _WIDTH <= self._room:  # the writer is awake, there is room
            extend = self._extend
            for row in rows:
                extend(row)
            if buffered < self._batch_fields <= len(self._fields):
                self._full.set()
        else:  # the first events (wake or start the writer), or too many (dropped and counted)
            for row in rows:
                self._push(row)

    def _push(self, row: Sequence[Any]) -> None:
        buffered = len(self._fields)
        if buffered >= self._room:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("task recorder is behind; %d events dropped so far", self.dropped)
            return
        if not buffered:  # the writer drains the buffer before it waits again
            self._wakeup.set()
        self._extend(row)
        if buffered + _WIDTH >= self._batch_fields:
            self._full.set()
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="nova-recorder")

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if len(self._fields) < self._batch_fields and not self._closing and self._flush_interval > 0:
                # Gather a fuller batch: write at batch_size events or flush_interval, whichever first.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_with_timeout(self._clock, self._full.wait(), self._flush_interval)
            await self.flush()
            if self._closing:
                return

    def _take(self) -> EventColumns:
        """The oldest batch_size buffered events, out of the buffer, as columns."""
        size = self._batch_fields
        # The batch keeps the buffer's list and a new buffer gets what is past it: copying
        # (and deleting) the batch's fields out of the buffer cost the event loop ~1 ms a batch.
        batch = self._fields
        self._fields = batch[size:]
        self._extend = self._fields.extend
        del batch[size:]
        return tuple(batch[field::_WIDTH] for field in range(_WIDTH))

    async def _write(self, batch: EventColumns) -> None:
        count = len(batch[0])
        columnar = self._columnar
        events = [event_from_row(r) for r in zip(*batch, strict=True)] if columnar is None else []
        delay = 0.05
        for attempt in range(1, self._max_attempts + 1):
            try:
                if columnar is not None:
                    await columnar.record_columns(batch)
                else:
                    await self.recorder.record(events)
            except Exception as exc:  # noqa: BLE001 - a recorder must never break tasks
                self.failures += 1
                if attempt == self._max_attempts:
                    self.dropped += count
                    log.error("task recorder failed %d times, dropped %d events: %r", attempt, count, exc)
                    return
                log.warning("task recorder failed (attempt %d): %r", attempt, exc)
                await self._clock.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.written += count
                return

    async def flush(self) -> None:
        """Write everything buffered so far (used by stop())."""
        while self._fields:
            await self._write(self._take())

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        self._full.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
