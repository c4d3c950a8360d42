"""Task recording: the TaskRecorder protocol, TaskRecord, and the in-memory recorder.

The engine records every lifecycle step through a ``RecordingSink`` (``nova._sink``)
that never blocks or fails a task: events go into a bounded buffer written in
batches in the background; failures are logged and counted. nova's recorders read
their own writes: ``get``, ``list``, ``counts``, ... first write what this process
buffered for them (:func:`write_pending`).

    recorder = nova.MemoryTaskRecorder()
    queue = nova.TaskQueue(broker, recorder=recorder)
    result = await queue.enqueue(nova.Task("email", b"hi"))
    record = await recorder.get(result.id)     # QUEUED, without waiting for a batch
"""

from __future__ import annotations

import contextlib
import enum
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "EVENT_FIELDS",
    "ColumnarTaskRecorder",
    "EventColumns",
    "EventRow",
    "MemoryTaskRecorder",
    "QueryableTaskRecorder",
    "TaskEvent",
    "TaskRecord",
    "TaskRecorder",
    "TaskStatus",
    "columns_from_events",
    "event_from_row",
    "feeds",
    "row_from_event",
    "write_pending",
]


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


class _Feed(Protocol):
    async def sync(self) -> None: ...


# The sinks of this process that feed each recorder (weakly: a sink or a recorder that
# is gone leaves no trace), so the recorder's reads write what they buffered first.
_FEEDS: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def feeds(recorder: object, sink: _Feed) -> None:
    """Note that ``sink`` buffers events for ``recorder`` (see :func:`write_pending`)."""
    # a recorder that cannot be weakly referenced or hashed: its reads do not sync
    with contextlib.suppress(TypeError):
        _FEEDS.setdefault(recorder, weakref.WeakSet()).add(sink)


async def write_pending(recorder: object) -> None:
    """Write what this process buffered for ``recorder`` so far (read your own writes).

    nova's recorders call it at the start of every read; a recorder of yours may too.

    >>> await write_pending(recorder)   # doctest: +SKIP
    """
    try:
        sinks = _FEEDS.get(recorder)
    except TypeError:
        return
    if sinks:
        for sink in list(sinks):
            await sink.sync()


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
        """The latest state of one task, or None."""
        await write_pending(self)
        return self._records.get(task_id)

    async def history(self, task_id: str) -> list[TaskEvent]:
        """Every event of one task, oldest first."""
        await write_pending(self)
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
        await write_pending(self)
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
        await write_pending(self)
        out: dict[TaskStatus, int] = {}
        for r in self._records.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out

    async def counts_by_queue(self) -> dict[str, dict[TaskStatus, int]]:
        """Number of tasks per current queue and status."""
        await write_pending(self)
        out: dict[str, dict[TaskStatus, int]] = {}
        for r in self._records.values():
            per_queue = out.setdefault(r.queue, {})
            per_queue[r.status] = per_queue.get(r.status, 0) + 1
        return out

    async def delete(self, task_id: str) -> bool:
        """Forget one task (what this process buffered for it is written first); True if it was recorded."""
        await write_pending(self)
        self._history.pop(task_id, None)
        return self._records.pop(task_id, None) is not None

    async def close(self) -> None:
        return None
