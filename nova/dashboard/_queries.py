"""What the dashboard asks the task records, in SQL on the recorder's table.

A task's current state is the fold of its events (see :mod:`nova._clickhouse`). The
queries here fold with one scalar sort key per event,
``k = version * 16 + lifecycle rank`` (as Int128, so any Int64 version fits), which
orders events exactly as ``event_order`` does: ``max``/``argMax`` over it cost a third
of the same over the ``(version, rank)`` tuple. The rank comes from ``transform()``,
which ClickHouse computes once per distinct value of a LowCardinality column
(``indexOf`` of an array compares every row's string: it cost more than the whole
rest of the fold). The counts per queue and status pack the queue's number into
the key as well, so one ``max`` per task gives both. They read without ``FINAL``: a
re-sent batch repeats rows with the same key, which changes no ``max``/``argMax``, and
a lightweight DELETE hides rows either way.

The task list pages newest first. Since a task's update time is its latest event's
time, the tasks updated since ``T`` are exactly those with an event at or after
``T``: a page is looked for among the events of a recent window, which widens (x8)
only while it holds too few matching tasks. A filter that matches little of the
recent past (a rare status, an old time range) therefore costs more than one that
matches much.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nova._clickhouse import ClickHouseTaskRecorder
from nova._recording import STATUS_RANK, TaskEvent, TaskRecord, TaskStatus

__all__ = [
    "FAILED_STATUSES",
    "WINDOWS",
    "DashboardQueries",
    "ListFilter",
    "Overview",
    "QueueState",
    "TaskPage",
    "TaskStory",
    "parse_window",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# indexOf() is 1-based: rank r is at r + 1, and 0 means "not a status nova knows"
_RANKS = [s.value for s in sorted(STATUS_RANK, key=STATUS_RANK.__getitem__)]
_BY_INDEX = {i + 1: TaskStatus(v) for i, v in enumerate(_RANKS)}
_TERMINAL = [s.value for s in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED,
                               TaskStatus.TIMEOUT, TaskStatus.SKIPPED)]
# Statuses "run again" applies to: dead-lettered (failed) and the other unsuccessful ends.
FAILED_STATUSES = (TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.CANCELLED)
_WAITING = (TaskStatus.PENDING, TaskStatus.QUEUED)

# The overview's windows and the width of one chart bucket for each.
WINDOWS: Mapping[str, tuple[timedelta, timedelta]] = {
    "15m": (timedelta(minutes=15), timedelta(minutes=1)),
    "1h": (timedelta(hours=1), timedelta(minutes=1)),
    "6h": (timedelta(hours=6), timedelta(minutes=5)),
    "24h": (timedelta(hours=24), timedelta(minutes=15)),
    "7d": (timedelta(days=7), timedelta(hours=1)),
}
_FIRST_SPAN = timedelta(minutes=10)
_WIDEN = 8
_WINDOWED_TRIES = 3
_LATENCY_SAMPLE = 20_000
_LATENCY_LOOKBACK = timedelta(hours=1)  # at least; else the window's length
_OLDEST_TTL = 60.0  # seconds the oldest event's time is reused (it changes rarely)
_NAMES_TTL = 10.0  # seconds the queue and type names are reused

_RANK = "transform(status, {ranks:Array(String)}, {rank_numbers:Array(UInt8)}, toUInt8(0))"
_KEY = f"toInt128(version) * 16 + {_RANK}"
_QUEUE_BITS = 16  # queues numbered 1..65535 in the packed key; 0: one not in the list

# Per task: one max() of the key with the queue's number packed in (the current
# status and queue), and the due time of its latest queued/pending step (for a
# delayed task its eta, else when it was queued; what it is for a task that waits
# now); then per queue and status. Tasks are grouped by a 64-bit hash of their id:
# grouping 1M ids as strings cost 60 % more CPU; two of 1M ids share a hash with a
# chance of about 3e-8 (they would be counted as one). The oldest waiting task's id is
# then looked up by its hash (_WAITING_IDS).
_STATE = f"""
SELECT toUInt8(intDiv(r_k, {2 ** _QUEUE_BITS}) % 16) AS r_index, toUInt16(r_k % {2 ** _QUEUE_BITS}) AS r_queue,
       count(),
       minIf(toNullable(r_due_ms), r_index IN {{waiting:Array(UInt8)}}),
       argMinIf(r_hash, r_due_ms, r_index IN {{waiting:Array(UInt8)}})
FROM (
    SELECT cityHash64(task_id) AS r_hash,
           max(({_KEY}) * {2 ** _QUEUE_BITS}
               + transform(queue, {{queues:Array(String)}}, {{queue_numbers:Array(UInt16)}}, toUInt16(0))) AS r_k,
           maxIf(toUnixTimestamp64Milli(ifNull(eta, at)), status IN ('queued', 'pending')) AS r_due_ms
    FROM {{table}}
    GROUP BY r_hash
)
GROUP BY r_index, r_queue
"""

_WAITING_IDS = """
SELECT cityHash64(task_id) AS r_hash, any(task_id)
FROM {table}
WHERE status IN ('queued', 'pending') AND toUnixTimestamp64Milli(ifNull(eta, at)) IN {dues:Array(Int64)}
  AND r_hash IN {hashes:Array(UInt64)}
GROUP BY r_hash
"""

_SERIES = """
SELECT toUnixTimestamp(toStartOfInterval(at, toIntervalSecond({bucket:UInt32}))) AS r_bucket,
       countIf(status = 'completed'), countIf(status = 'retrying'), countIf(has({failed:Array(String)}, status)),
       countIf(status = 'processing')
FROM {table}
WHERE at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')
  AND status IN ('completed', 'retrying', 'failed', 'timeout', 'cancelled', 'processing')
GROUP BY r_bucket
ORDER BY r_bucket
"""

# One row per (task, attempt) started in the window: when it started, when it was due
# (the attempt's eta if it had one: delayed tasks and retries; else when it was
# queued), and when the attempt ended (completed, retrying, failed...). One pass over
# the events since {lookback_ms} (the window's length, at least an hour, before it): a
# task queued before that counts as due at {lookback_ms} (its wait is then a lower
# bound). Tasks are grouped by the hash of their id (as in _STATE); of those whose hash
# is 0 modulo {sample}: all of them when few attempts started, a sample of about
# _LATENCY_SAMPLE when many did (quantiles() itself keeps a sample of 8192 per bucket).
_LATENCY = """
SELECT toUnixTimestamp(toStartOfInterval(r_started, toIntervalSecond({bucket:UInt32}))) AS r_bucket,
       count(),
       quantiles(0.5, 0.99)((toUnixTimestamp64Milli(r_started) - r_due_ms) / 1000),
       quantilesIf(0.5, 0.99)((toUnixTimestamp64Milli(r_ended) - toUnixTimestamp64Milli(r_started)) / 1000,
                              isNotNull(r_ended))
FROM (
    SELECT cityHash64(task_id) AS r_hash, attempt,
           minIf(at, status = 'processing') AS r_started,
           toUnixTimestamp64Milli(ifNull(anyIf(eta, status = 'processing'),
                                         minIf(toNullable(at), status IN ('queued', 'pending')))) AS r_due_or_null,
           ifNull(r_due_or_null, {lookback_ms:Int64}) AS r_due_ms,
           maxIf(toNullable(at), status NOT IN ('processing', 'queued', 'pending')) AS r_ended
    FROM {table}
    WHERE at >= fromUnixTimestamp64Milli({lookback_ms:Int64}, 'UTC') AND r_hash % {sample:UInt64} = 0
    GROUP BY r_hash, attempt
    HAVING r_started >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')
)
GROUP BY r_bucket
ORDER BY r_bucket
"""

# The full fold of a few tasks (the recorder's, with the scalar key), payload left out.
_RECORDS = f"""
SELECT task_id,
       argMax(type, {_KEY}), argMax(queue, {_KEY}), argMax(priority, {_KEY}), argMax(status, {_KEY}),
       toUInt32(greatest(max(attempt) - 1, 0)),
       argMaxIf(error, {_KEY}, isNotNull(error)),
       toUnixTimestamp64Milli(argMin(at, {_KEY})),
       toUnixTimestamp64Milli(argMax(at, {_KEY})),
       toUnixTimestamp64Milli(argMinIf(toNullable(at), {_KEY}, status = 'processing')),
       toUnixTimestamp64Milli(argMaxIf(toNullable(at), {_KEY}, has({{terminal:Array(String)}}, status))),
       toUnixTimestamp64Milli(argMaxIf(eta, {_KEY}, isNotNull(eta))),
       argMaxIf(headers, {_KEY}, notEmpty(headers)),
       max(version)
FROM {{table}}
WHERE task_id IN {{ids:Array(String)}}
GROUP BY task_id
"""

_TOP_ERRORS = """
SELECT error, count() AS n, uniqExact(task_id), toUnixTimestamp64Milli(max(at))
FROM {table}
WHERE at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')
  AND status IN ('retrying', 'failed', 'timeout', 'cancelled') AND isNotNull(error)
GROUP BY error
ORDER BY n DESC
LIMIT {limit:UInt32}
"""


def parse_window(text: str | None) -> str:
    """A window name of :data:`WINDOWS` (``1h`` when missing or unknown)."""
    return text if text is not None and text in WINDOWS else "1h"


def _ms(value: datetime) -> int:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return math.floor((value - _EPOCH).total_seconds() * 1000)


def _from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


def _status_of(index: int) -> TaskStatus:
    return _BY_INDEX.get(index, TaskStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class QueueState:
    """One queue now: tasks per current status, and the task waiting longest since it was due."""

    queue: str
    counts: Mapping[TaskStatus, int]
    oldest_waiting_id: str | None = None
    oldest_waiting_due: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class Overview:
    """What the overview page shows. Series are aligned lists, one entry per bucket start."""

    window: str
    bucket: timedelta
    now: datetime
    queues: Sequence[QueueState]
    totals: Mapping[TaskStatus, int]
    buckets: Sequence[int]  # bucket starts, epoch seconds
    completed: Sequence[int]
    retried: Sequence[int]
    failed: Sequence[int]
    started: Sequence[int]
    wait_p50: Sequence[float | None]  # seconds
    wait_p99: Sequence[float | None]
    duration_p50: Sequence[float | None]
    duration_p99: Sequence[float | None]
    sampled: int = 1  # the percentiles are of one task in this many (1: of every task)

    @property
    def oldest_waiting(self) -> QueueState | None:
        """The queue whose oldest waiting task has waited longest (None: nothing waits)."""
        waiting = [q for q in self.queues if q.oldest_waiting_due is not None]
        return min(waiting, key=lambda q: q.oldest_waiting_due or self.now) if waiting else None


@dataclass(frozen=True, slots=True)
class ListFilter:
    """Which tasks a list shows; every given field must match (current status, queue, type)."""

    statuses: tuple[TaskStatus, ...] = ()
    queue: str | None = None
    type: str | None = None
    since: datetime | None = None  # updated at or after
    until: datetime | None = None  # updated before
    id_prefix: str | None = None

    @classmethod
    def of(cls, status: TaskStatus | None = None, **kw: Any) -> ListFilter:
        return cls(statuses=(status,) if status is not None else (), **kw)


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a task list; ``next_offset`` is None on the last page."""

    records: Sequence[TaskRecord]
    offset: int
    limit: int
    next_offset: int | None


@dataclass(frozen=True, slots=True)
class TaskStory:
    """One task: its current state and its events grouped into runs (a run again starts a new run)."""

    record: TaskRecord
    runs: Sequence[Sequence[TaskEvent]] = field(default_factory=list)

    @property
    def events(self) -> list[TaskEvent]:
        return [e for run in self.runs for e in run]


def split_runs(events: Sequence[TaskEvent]) -> list[list[TaskEvent]]:
    """Events grouped into runs: a QUEUED or PENDING event after a final one starts a new run."""
    runs: list[list[TaskEvent]] = []
    ended = True
    for event in events:
        if event.status in _WAITING and ended and runs and runs[-1]:
            runs.append([])
        if not runs:
            runs.append([])
        runs[-1].append(event)
        ended = event.status.value in _TERMINAL
    return runs


class DashboardQueries:
    """The dashboard's questions, over a :class:`~nova.ClickHouseTaskRecorder`.

    >>> queries = DashboardQueries(ClickHouseTaskRecorder.from_url("chdb:///tmp/nova-demo"))  # doctest: +SKIP
    >>> overview = await queries.overview("1h")                                                # doctest: +SKIP
    """

    def __init__(self, recorder: ClickHouseTaskRecorder) -> None:
        self.recorder = recorder
        self._oldest: tuple[float, int | None] | None = None  # (when asked, oldest event's epoch ms)
        self._names: tuple[float, list[str], list[str]] | None = None  # (when asked, queues, types)

    async def _select(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        base: dict[str, Any] = {"ranks": _RANKS, "rank_numbers": list(range(1, len(_RANKS) + 1)),
                                "terminal": _TERMINAL}
        base.update(params)
        used = {k: v for k, v in base.items() if "{" + k + ":" in sql}
        return await self.recorder.select(sql, used)

    # -- overview ----------------------------------------------------------------
    async def overview(self, window: str = "1h", *, now: datetime | None = None) -> Overview:
        """Counts per queue and status now, the oldest waiting task, and the window's series."""
        window = parse_window(window)
        span, bucket = WINDOWS[window]
        now = now or datetime.now(UTC)
        step = int(bucket.total_seconds())
        # whole buckets: the first starts at or before now - span
        start_s = (int(now.timestamp() - span.total_seconds()) // step) * step
        start_ms = start_s * 1000
        waiting = [_RANKS.index(s.value) + 1 for s in _WAITING]
        queue_names = (await self.names())[0]
        for _ in range(2):
            state = await self._select(_STATE, {"waiting": waiting, "queues": queue_names,
                                                "queue_numbers": list(range(1, len(queue_names) + 1))})
            if all(r[1] for r in state):
                break
            self._names = None  # a queue recorded since the list was read
            queue_names = (await self.names())[0]
        series = await self._select(_SERIES, {"bucket": step, "start_ms": start_ms,
                                              "failed": [s.value for s in FAILED_STATUSES]})
        attempts = sum(r[4] for r in series)
        sample = max(1, math.ceil(attempts / _LATENCY_SAMPLE))
        latency = await self._select(_LATENCY, {
            "bucket": step, "start_ms": start_ms, "sample": sample,
            "lookback_ms": start_ms - int(max(_LATENCY_LOOKBACK, span).total_seconds() * 1000)})

        per_queue: dict[str, dict[TaskStatus, int]] = {}
        oldest: dict[str, tuple[int, int]] = {}  # queue -> (due ms, task id hash)
        totals: dict[TaskStatus, int] = {}
        now_ms = _ms(now)
        for index, number, count, due_ms, due_hash in state:
            queue = queue_names[number - 1] if 0 < number <= len(queue_names) else "?"
            status = _status_of(index)
            counts = per_queue.setdefault(queue, {})
            counts[status] = counts.get(status, 0) + count
            totals[status] = totals.get(status, 0) + count
            # a delayed task waits once its eta has passed
            if index in waiting and due_ms is not None and due_ms <= now_ms and (
                    queue not in oldest or due_ms < oldest[queue][0]):
                oldest[queue] = (due_ms, due_hash)
        ids: dict[int, str] = {}
        if oldest:
            rows = await self._select(_WAITING_IDS, {"dues": [d for d, _ in oldest.values()],
                                                     "hashes": [h for _, h in oldest.values()]})
            ids = {int(h): str(task_id) for h, task_id in rows}
        queues = [
            QueueState(queue, per_queue[queue], ids.get(oldest[queue][1]) if queue in oldest else None,
                       _from_ms(oldest[queue][0]) if queue in oldest else None)
            for queue in sorted(per_queue)
        ]
        buckets = list(range(start_s, int(now.timestamp()) + 1, step))
        position = {b: i for i, b in enumerate(buckets)}
        completed, retried, failed, started = ([0] * len(buckets) for _ in range(4))
        for b, c, r, f, p in series:
            if b in position:
                i = position[b]
                completed[i], retried[i], failed[i], started[i] = c, r, f, p
        quantiles: list[list[float | None]] = [[None] * len(buckets) for _ in range(4)]
        for b, _, wait, duration in latency:
            if b not in position:
                continue
            i = position[b]
            for j, value in enumerate((*wait, *duration)):
                quantiles[j][i] = None if value is None or math.isnan(value) else round(value, 6)
        wait_p50, wait_p99, duration_p50, duration_p99 = quantiles
        return Overview(window, bucket, now, queues, totals, buckets, completed, retried, failed, started,
                        wait_p50, wait_p99, duration_p50, duration_p99, sampled=sample)

    # -- task lists ----------------------------------------------------------------
    async def tasks(self, where: ListFilter, *, limit: int = 50, offset: int = 0,
                    now: datetime | None = None) -> TaskPage:
        """A page of tasks matching ``where``, newest update first."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        want = offset + limit + 1  # one more: is there a next page?
        params: dict[str, Any] = {"want": want}
        having: list[str] = []
        prefilter: list[str] = []
        if where.statuses:
            params["indexes"] = [_RANKS.index(s.value) + 1 for s in where.statuses]
            params["statuses"] = [s.value for s in where.statuses]
            having.append("r_index IN {indexes:Array(UInt8)}")
            prefilter.append("status IN {statuses:Array(String)}")
        if where.queue is not None:
            params["queue"] = where.queue
            having.append("r_queue = {queue:String}")
            prefilter.append("queue = {queue:String}")
        if where.type is not None:
            params["type"] = where.type
            having.append("r_type = {type:String}")
            prefilter.append("type = {type:String}")
        if where.until is not None:
            params["until_ms"] = _ms(where.until)
            having.append("r_updated_ms < {until_ms:Int64}")
        rows_where: list[str] = []
        if where.id_prefix:
            params["prefix"] = where.id_prefix
            rows_where.append("startsWith(task_id, {prefix:String})")

        now = now or datetime.now(UTC)
        floor_ms = _ms(where.since) if where.since is not None else None
        # A prefix search reads a small key range: no window. Otherwise try windows
        # ending at `until` (or now), each _WIDEN times longer, until the page is full;
        # then everything (never more than _WINDOWED_TRIES windows: one full read costs
        # about as much as a few windowed ones).
        end = where.until or now
        oldest_ms = None if where.id_prefix else await self._oldest_ms()
        if oldest_ms is None and not where.id_prefix:
            return TaskPage([], offset, limit, None)  # nothing recorded
        span = _FIRST_SPAN
        tries = 0 if where.id_prefix else _WINDOWED_TRIES
        while True:
            start_ms = floor_ms
            if tries:
                tries -= 1
                start_ms = max(_ms(end - span), floor_ms or 0)
                if oldest_ms is not None and start_ms <= oldest_ms:
                    start_ms, tries = floor_ms, 0  # the window holds every event anyway
            sql = self._page_sql(rows_where, prefilter, having, start_ms is not None)
            rows = await self._select(sql, {**params, "start_ms": start_ms or 0})
            if len(rows) >= want or start_ms == floor_ms:
                break
            span *= _WIDEN
        ids = [r[0] for r in rows[offset: offset + limit]]
        records = await self.records(ids)
        return TaskPage(records, offset, limit, offset + limit if len(rows) >= want else None)

    async def _oldest_ms(self) -> int | None:
        """Epoch ms of the oldest recorded event (None: no events), asked at most once a minute."""
        if self._oldest is None or time.monotonic() - self._oldest[0] > _OLDEST_TTL:
            rows = await self._select("SELECT toUnixTimestamp64Milli(min(at)), count() FROM {table}", {})
            self._oldest = (time.monotonic(), int(rows[0][0]) if rows and rows[0][1] else None)
        return self._oldest[1]

    @staticmethod
    def _page_sql(rows_where: Sequence[str], prefilter: Sequence[str], having: Sequence[str],
                  windowed: bool) -> str:
        conditions = list(rows_where)
        if windowed:
            conditions.append("at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')")
        if prefilter:
            # a task whose latest event matches has an event that matches: read only those tasks
            inner = " AND ".join([*prefilter, *conditions])
            conditions.append(f"task_id IN (SELECT task_id FROM {{table}} WHERE {inner})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        having_sql = f"HAVING {' AND '.join(having)}" if having else ""
        return f"""
            SELECT task_id, toUInt8(max({_KEY}) % 16) AS r_index, max({_KEY}) AS r_key,
                   argMax(queue, {_KEY}) AS r_queue, argMax(type, {_KEY}) AS r_type,
                   toUnixTimestamp64Milli(argMax(at, {_KEY})) AS r_updated_ms
            FROM {{table}}
            {where}
            GROUP BY task_id
            {having_sql}
            ORDER BY r_updated_ms DESC, r_key DESC, task_id DESC
            LIMIT {{want:UInt64}}
        """

    async def records(self, ids: Sequence[str]) -> list[TaskRecord]:
        """The current state of these tasks (payload left out), in the order of ``ids``."""
        if not ids:
            return []
        rows = await self._select(_RECORDS, {"ids": list(ids)})
        found = {r[0]: _record(r) for r in rows}
        return [found[i] for i in ids if i in found]

    # -- one task ------------------------------------------------------------------
    async def task(self, task_id: str) -> TaskStory | None:
        """One task's state (with its payload, if recorded) and its events in runs; None if unknown."""
        record = await self.recorder.get(task_id)
        if record is None:
            return None
        return TaskStory(record, split_runs(await self.recorder.history(task_id)))

    # -- failures --------------------------------------------------------------------
    async def top_errors(self, since: timedelta, *, limit: int = 10,
                         now: datetime | None = None) -> list[tuple[str, int, int, datetime]]:
        """The most frequent errors of retries and dead letters since ``since`` ago:
        (error, events, tasks, last seen)."""
        start = (now or datetime.now(UTC)) - since
        rows = await self._select(_TOP_ERRORS, {"start_ms": _ms(start), "limit": limit})
        return [(r[0], r[1], r[2], _from_ms(r[3]) or _EPOCH) for r in rows]

    async def names(self) -> tuple[list[str], list[str]]:
        """Every queue and every task type recorded, sorted (for the filters' choices).

        >>> queues, types = await queries.names()  # doctest: +SKIP
        """
        if self._names is not None and time.monotonic() - self._names[0] < _NAMES_TTL:
            return list(self._names[1]), list(self._names[2])
        limit = 2 ** _QUEUE_BITS - 1
        rows = await self._select(
            "SELECT groupUniqArray({limit:UInt32})(queue), groupUniqArray({limit:UInt32})(type) FROM {table}",
            {"limit": limit})
        queues, types = (sorted(rows[0][0]), sorted(rows[0][1])) if rows else ([], [])
        self._names = (time.monotonic(), queues, types)
        return list(queues), list(types)


def _record(r: Sequence[Any]) -> TaskRecord:
    try:
        status = TaskStatus(r[4])
    except ValueError:
        status = TaskStatus.UNKNOWN
    return TaskRecord(
        task_id=r[0], type=r[1], queue=r[2], priority=r[3], status=status, retry_count=r[5], error=r[6],
        created_at=_from_ms(r[7]) or _EPOCH, updated_at=_from_ms(r[8]) or _EPOCH, started_at=_from_ms(r[9]),
        completed_at=_from_ms(r[10]), eta=_from_ms(r[11]), headers=dict(r[12]), version=r[13],
    )

