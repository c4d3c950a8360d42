"""nova.PrometheusMetrics: Prometheus metrics of a TaskQueue's (or an App's) tasks, on prometheus_client.

    metrics = nova.PrometheusMetrics()                        # the default registry
    queue = nova.TaskQueue(broker, middleware=[metrics])
    prometheus_client.start_http_server(9464)                 # or: nova worker ... --metrics-port 9464

The hot path counts in plain dicts and lists (a few dictionary updates per task, no lock):
one collector per registry turns them into metric families when scraped. The backlog
gauge is read at scrape time from what each consumer's subscription already knows
(``backlog_nowait``), on the queue's event loop, without a broker round trip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from nova._broker import InstantBacklog
from nova._clock import SystemClock
from nova._errors import ConfigurationError, ConfigurationTypeError, TaskTimeout, ValidationError
from nova._middleware import Middleware, Outcome, is_cancel
from nova._task import Priority, Task

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("nova.PrometheusMetrics needs prometheus_client: pip install 'nova-taskqueue[metrics]'") from exc

if TYPE_CHECKING:
    from nova._broker import Delivery
    from nova._queue import TaskQueue
    from nova._task import Result

__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics"]

#: Seconds, for handler time and waiting time alike: from 5 ms to 10 minutes.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: ``nova_tasks_processed_total``'s statuses. An attempt counts once as completed, failed or
#: timed_out; a failed or timed-out one counts once more as retried or dead_lettered.
STATUSES = ("completed", "failed", "timed_out", "retried", "dead_lettered")
OTHER = "other"
MIXED = "mixed"  # a batch of several task types (its handler time has one series)

_COMPLETED, _RETRIED, _DEAD = Outcome.COMPLETED, Outcome.RETRIED, Outcome.DEAD_LETTERED
_type_of = attrgetter("type")
_PRIORITY_NAMES: Mapping[Priority, str] = {Priority.HIGH: "high", Priority.NORMAL: "normal", Priority.LOW: "low"}
#: Series keys at most (types past max_types beyond this are looked up the slow way each time).
_MAX_ALIASES = 10_000
#: How long a scrape from another thread waits for the event loop to read the backlogs.
_BACKLOG_WAIT = 1.0


class PrometheusMetrics(Middleware):
    """Prometheus metrics of every task a TaskQueue (or App) enqueues and handles.

        metrics = nova.PrometheusMetrics(registry=prometheus_client.CollectorRegistry())
        app = nova.App("kafka://127.0.0.1:9092", middleware=[metrics])

    ``registry``: where the metrics are registered (default: prometheus_client's default
    registry). ``max_types``: task types beyond this many are reported as ``type="other"``, so
    a bad producer cannot explode the series. ``buckets``: upper bounds in seconds of both
    histograms. Several PrometheusMetrics may share a registry (their counts add up), if they
    share the buckets too.

    Metrics (``nova worker --metrics-port`` serves them, summed over ``--processes``):

    - ``nova_tasks_enqueued_total{queue,type,priority}``
    - ``nova_tasks_processed_total{queue,type,status}``: each attempt counts once as
      ``completed``, ``failed`` or ``timed_out``; each failed or timed-out one once more as
      ``retried`` or ``dead_lettered`` (a type without a handler: failed and dead_lettered)
    - ``nova_task_duration_seconds{queue,type}``: handler time (a batch: once per batch)
    - ``nova_task_wait_seconds{queue,type}``: from when the attempt was due (enqueued, its
      delay or its retry backoff over) to its start
    - ``nova_tasks_in_progress{queue}``
    - ``nova_queue_backlog{queue,priority}``: waiting, as each consumer's subscription knows it
      without asking the broker (brokers whose subscriptions cannot tell report none)
    - ``nova_enqueue_errors_total{queue}``: enqueue calls the broker failed
    - ``nova_recorder_dropped_total``: task records the recorder dropped

    Counting is not locked: give each event loop its own PrometheusMetrics for exact counts.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, max_types: int = 100,
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise ConfigurationTypeError(f"registry must be a prometheus_client.CollectorRegistry, got "
                                         f"{type(registry).__name__}")
        if isinstance(max_types, bool) or not isinstance(max_types, int):
            raise ConfigurationTypeError(f"max_types must be an int >= 1, got {max_types!r}")
        if max_types < 1:
            raise ConfigurationError(f"max_types must be an int >= 1, got {max_types!r}")
        self.registry: CollectorRegistry = REGISTRY if registry is None else registry
        self.max_types = max_types
        self.buckets = _check_buckets(buckets)
        self._types: set[str] = set()
        # (queue, type) -> its series; a type past max_types maps to (queue, "other")'s.
        self._series: dict[tuple[str, str], _Series] = {}
        self._enqueued: dict[tuple[str, str, str], int] = {}
        self._enqueue_errors: dict[str, int] = {}
        self._queues: weakref.WeakSet[TaskQueue] = weakref.WeakSet()
        self._queues_lock = threading.Lock()  # a scrape's thread lists them while a loop may add one
        self._retired_dropped = 0  # records dropped by the sinks of TaskQueues gone since
        self._due_at: datetime | None = None  # the last due time read, and it in epoch seconds
        self._due_seconds = 0.0
        # The bound queues' clock (SystemClock.time() is time.time()); None: they differ, ask each.
        self._time: Callable[[], float] | None = None
        self._clock: Any = None
        _collector_of(self.registry, self.buckets).add(self)

    def __repr__(self) -> str:
        return f"PrometheusMetrics(types={len(self._types)}/{self.max_types}, queues={len(self._bound())})"

    # -- hooks ------------------------------------------------------------------------
    def bind(self, queue: TaskQueue) -> None:
        if not self._queues:
            self._clock = queue.clock
            self._time = time.time if type(queue.clock) is SystemClock else queue.clock.time
        elif queue.clock is not self._clock and not (type(queue.clock) is type(self._clock) is SystemClock):
            self._time = None
        with self._queues_lock:
            self._queues.add(queue)
        if queue._sink is not None:
            weakref.finalize(queue, self._retire_sink, queue._sink)

    def _retire_sink(self, sink: Any) -> None:
        self._retired_dropped += sink.dropped

    def _type(self, task_type: str) -> str:
        """``task_type`` as a label: ``other`` once ``max_types`` others were seen."""
        if task_type in self._types:
            return task_type
        if len(self._types) < self.max_types:
            self._types.add(task_type)
            return task_type
        return OTHER

    def _new_series(self, key: tuple[str, str]) -> _Series:
        queue, task_type = key
        label = self._type(task_type)
        series = self._series.get((queue, label))
        if series is None:
            series = self._series[(queue, label)] = _Series(len(self.buckets))
        if label == task_type or len(self._series) < _MAX_ALIASES:
            self._series[key] = series  # a type past the limit: found at once next time (up to a bound)
        return series

    def enqueue(self, queue: TaskQueue, tasks: Sequence[Task], destination: str, priority: Priority,
                headers: dict[str, str]) -> Any:
        return destination, _PRIORITY_NAMES[priority]

    def enqueued(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], results: Sequence[Result] | None,
                 error: BaseException | None) -> None:
        destination, priority = state
        if results is None:
            if not isinstance(error, ValidationError | asyncio.CancelledError):  # the caller's mistakes are not
                self._enqueue_errors[destination] = self._enqueue_errors.get(destination, 0) + 1  # the broker's
            return
        counts = self._enqueued
        types = self._types
        if len(tasks) == 1:
            task_type = tasks[0].type
            key = (destination, task_type if task_type in types else self._type(task_type), priority)
            counts[key] = counts.get(key, 0) + 1
            return
        types_of = list(map(_type_of, tasks))
        tally = {types_of[0]: len(tasks)} if types_of.count(types_of[0]) == len(tasks) else Tally(types_of)
        for task_type, n in tally.items():
            key = (destination, task_type if task_type in types else self._type(task_type), priority)
            counts[key] = counts.get(key, 0) + n

    def process(self, queue: TaskQueue, task: Task, delivery: Delivery) -> Any:
        series = self._series.get((task.queue, task.type))
        if series is None:
            series = self._new_series((task.queue, task.type))
        series.running += 1
        due = task.eta or task.enqueued_at
        if due is not None:
            if due is not self._due_at:  # the tasks of one enqueue share their due time's datetime
                self._due_at = due
                self._due_seconds = due.timestamp()
            now = self._time
            wait = (queue.clock.time() if now is None else now()) - self._due_seconds
            waits = series.waits
            if wait > 0:
                waits[bisect_left(self.buckets, wait)] += 1
                waits[-1] += wait
            else:
                waits[0] += 1
        return series

    def processed(self, queue: TaskQueue, state: Any, task: Task, outcome: Outcome,
                  error: BaseException | str | None, elapsed: float | None) -> None:
        series: _Series = state
        series.running -= 1
        if outcome is _COMPLETED:
            series.completed += 1
        elif isinstance(error, asyncio.CancelledError):
            return
        else:
            if isinstance(error, TaskTimeout):
                series.timed_out += 1
            else:
                series.failed += 1
            if outcome is _RETRIED:
                series.retried += 1
            elif outcome is _DEAD:
                series.dead_lettered += 1
        if elapsed is not None:
            durations = series.durations
            durations[bisect_left(self.buckets, elapsed)] += 1
            durations[-1] += elapsed

    def process_batch(self, queue: TaskQueue, tasks: Sequence[Task], deliveries: Sequence[Delivery]) -> Any:
        return [self.process(queue, task, delivery) for task, delivery in zip(tasks, deliveries, strict=True)]

    def processed_batch(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], outcomes: Sequence[Outcome],
                        error: BaseException | None, elapsed: float | None) -> None:
        for series, task, outcome in zip(state, tasks, outcomes, strict=True):
            self.processed(queue, series, task, outcome, error, None)
        if elapsed is not None and tasks and not is_cancel(error):
            types = {task.type for task in tasks}
            name = tasks[0].queue
            series = state[0] if len(types) == 1 else self._series.get((name, MIXED))
            if series is None:
                series = self._series[(name, MIXED)] = _Series(len(self.buckets))
            durations = series.durations
            durations[bisect_left(self.buckets, elapsed)] += 1
            durations[-1] += elapsed

    # -- what the collector reads (from any thread) -----------------------------------------
    def snapshot(self) -> dict[tuple[str, str], _Series]:
        """Each series once, under its own labels (copied: the loop may count on meanwhile)."""
        found: dict[tuple[str, str], _Series] = {}
        for key, series in self._series.copy().items():
            if key[1] == OTHER or key[1] in self._types or key[1] == MIXED:
                found[key] = series.copy()
        return found

    def backlogs(self) -> dict[tuple[str, str], int]:
        """What waits per (queue, priority), as the consumers' subscriptions know it now."""
        found: dict[tuple[str, str], int] = {}
        for tq in self._bound():
            worker = tq.worker
            loop = tq._loop
            if worker is None or loop is None or not worker.consuming or not isinstance(worker.sub, InstantBacklog):
                continue
            for key, n in _on_loop(loop, lambda w=worker: _worker_backlog(w)).items():
                found[key] = found.get(key, 0) + n
        return found

    def dropped(self) -> int:
        live = sum(tq._sink.dropped for tq in self._bound() if tq._sink is not None)
        return self._retired_dropped + live

    def _bound(self) -> list[TaskQueue]:
        with self._queues_lock:
            return list(self._queues)


class _Series:
    """The counts of one (queue, type): attempts by status, running now, and two histograms
    (a count per bucket, the last one +Inf, then the sum)."""

    __slots__ = ("completed", "dead_lettered", "durations", "failed", "retried", "running", "timed_out", "waits")

    def __init__(self, buckets: int) -> None:
        self.completed = self.failed = self.timed_out = self.retried = self.dead_lettered = self.running = 0
        self.durations: list[float] = [0] * (buckets + 1) + [0.0]
        self.waits: list[float] = [0] * (buckets + 1) + [0.0]

    def copy(self) -> _Series:
        other = _Series.__new__(_Series)
        other.completed, other.failed, other.timed_out = self.completed, self.failed, self.timed_out
        other.retried, other.dead_lettered, other.running = self.retried, self.dead_lettered, self.running
        other.durations, other.waits = list(self.durations), list(self.waits)
        return other

    def statuses(self) -> dict[str, int]:
        return {"completed": self.completed, "failed": self.failed, "timed_out": self.timed_out,
                "retried": self.retried, "dead_lettered": self.dead_lettered}


def _worker_backlog(worker: Any) -> dict[tuple[str, str], int]:
    """Per (queue, priority): not yet fetched (the subscription's answer) plus fetched, not started."""
    sub = worker.sub
    found: dict[tuple[str, str], int] = {}
    for topic, route in worker.routes.items():
        waiting = sub.backlog_nowait(topic)
        if waiting is not None:
            found[(route.queue, _PRIORITY_NAMES[route.priority])] = waiting
    buffers = getattr(worker, "buffers", None)  # the single-task worker: deliveries by level
    items: Iterable[Any] = (item for level in buffers.values() for item in level) if buffers else worker.buffer
    for item in items:
        route = item[-1]
        key = (route.queue, _PRIORITY_NAMES[route.priority])
        if key in found:
            found[key] += 1
    return found


def _on_loop(loop: asyncio.AbstractEventLoop, read: Any) -> dict[tuple[str, str], int]:
    """``read()`` on ``loop``'s thread (a subscription is not thread-safe); {} if that loop is
    not running or does not answer within a second (the scrape goes on without it)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        result: dict[tuple[str, str], int] = read()
        return result
    if loop.is_closed() or not loop.is_running():
        return {}
    future: concurrent.futures.Future[dict[tuple[str, str], int]] = concurrent.futures.Future()

    def answer() -> None:
        try:
            future.set_result(read())
        except Exception as exc:  # noqa: BLE001 - told to the scraping thread
            future.set_exception(exc)

    try:
        loop.call_soon_threadsafe(answer)
    except RuntimeError:  # closed meanwhile
        return {}
    with contextlib.suppress(concurrent.futures.TimeoutError, Exception):
        return future.result(timeout=_BACKLOG_WAIT)
    return {}


def _check_buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    if isinstance(buckets, str) or not isinstance(buckets, Sequence):
        raise ConfigurationTypeError(f"buckets must be a list of seconds, e.g. (0.01, 0.1, 1, 10), got {buckets!r}")
    values = tuple(float(b) for b in buckets if b != float("inf"))
    if not values or list(values) != sorted(set(values)):
        raise ConfigurationError(f"buckets must be increasing seconds, e.g. (0.01, 0.1, 1, 10), got {buckets!r}")
    return values


class _NovaCollector:
    """nova's metric families on one registry, summed over the PrometheusMetrics that use it."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.bounds = [_le(b) for b in buckets] + ["+Inf"]
        self.sources: weakref.WeakSet[PrometheusMetrics] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, source: PrometheusMetrics) -> None:
        if source.buckets != self.buckets:
            raise ConfigurationError("PrometheusMetrics on one registry must share their buckets: this registry's "
                                     f"are {self.buckets}")
        with self._lock:
            self.sources.add(source)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        enqueued: dict[tuple[str, ...], float] = {}
        processed: dict[tuple[str, ...], float] = {}
        errors: dict[tuple[str, ...], float] = {}
        in_progress: dict[tuple[str, ...], float] = {}
        backlog: dict[tuple[str, ...], float] = {}
        durations: dict[tuple[str, ...], list[float]] = {}
        waits: dict[tuple[str, ...], list[float]] = {}
        dropped = 0
        with self._lock:
            sources = list(self.sources)
        for source in sources:
            _add(enqueued, source._enqueued.copy())
            _add(errors, {(q,): n for q, n in source._enqueue_errors.copy().items()})
            for (queue, task_type), series in source.snapshot().items():
                if task_type != MIXED:  # (a mixed batch has handler time only)
                    _add(processed, {(queue, task_type, status): n for status, n in series.statuses().items()})
                    _add_histograms(waits, {(queue, task_type): series.waits})
                _add(in_progress, {(queue,): series.running})
                if any(series.durations):
                    _add_histograms(durations, {(queue, task_type): series.durations})
            _add(backlog, source.backlogs())
            dropped += source.dropped()
        families = self._families()
        for family, values in zip(families[:5], (enqueued, processed, errors, in_progress, backlog), strict=True):
            for labels, value in sorted(values.items()):
                family.add_metric(list(labels), value)
        for family, histograms in ((families[5], durations), (families[6], waits)):
            for labels, counts in sorted(histograms.items()):
                cumulative, total = [], 0.0
                for bound, count in zip(self.bounds, counts, strict=False):
                    total += count
                    cumulative.append((bound, total))
                assert isinstance(family, HistogramMetricFamily)
                family.add_metric(list(labels), cumulative, counts[-1])
        families[7].add_metric([], dropped)
        yield from families

    def _families(self) -> list[Any]:
        return [
            CounterMetricFamily("nova_tasks_enqueued", "Tasks the broker took from enqueue calls",
                                labels=["queue", "type", "priority"]),
            CounterMetricFamily("nova_tasks_processed", "Attempts by how they ended: completed, failed or "
                                "timed_out; failed and timed-out ones also as retried or dead_lettered",
                                labels=["queue", "type", "status"]),
            CounterMetricFamily("nova_enqueue_errors", "Enqueue calls that the broker failed", labels=["queue"]),
            GaugeMetricFamily("nova_tasks_in_progress", "Tasks whose handler runs now", labels=["queue"]),
            GaugeMetricFamily("nova_queue_backlog", "Tasks waiting, as the consumers' subscriptions know it",
                              labels=["queue", "priority"]),
            HistogramMetricFamily("nova_task_duration_seconds", "Handler time of an attempt (or of a batch)",
                                  labels=["queue", "type"]),
            HistogramMetricFamily("nova_task_wait_seconds", "From when an attempt was due to its start",
                                  labels=["queue", "type"]),
            CounterMetricFamily("nova_recorder_dropped", "Task records the recorder dropped (it fell behind)"),
        ]


def _le(bound: float) -> str:
    return repr(float(bound))


def _add(into: dict[tuple[str, ...], float], values: Mapping[Any, float]) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0) + value


def _add_histograms(into: dict[tuple[str, ...], list[float]], histograms: Mapping[Any, list[float]]) -> None:
    for key, counts in histograms.items():
        counts = list(counts)
        have = into.get(key)
        into[key] = counts if have is None else [a + b for a, b in zip(have, counts, strict=True)]


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _NovaCollector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def _collector_of(registry: CollectorRegistry, buckets: tuple[float, ...]) -> _NovaCollector:
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _NovaCollector(buckets)
            registry.register(collector)
            _collectors[registry] = collector
        return collector
