"""Middleware: what a TaskQueue tells observers about its enqueues, handler calls and outcomes.

    queue = nova.TaskQueue(broker, middleware=[nova.PrometheusMetrics(), nova.OpenTelemetryTracing()])
    app = nova.App("kafka://127.0.0.1:9092", middleware=[nova.PrometheusMetrics()])

A middleware overrides the hooks it needs (the others are no-ops). The engine calls them in
pairs, each returning a state the second one gets back:

    enqueue(queue, tasks, destination, priority, headers) -> state    before the tasks are encoded;
                                                               what it adds to ``headers``
                                                               travels in every task's headers
    enqueued(queue, state, tasks, results, error)              once the broker took them (or not)
    process(queue, task, delivery) -> state                    right before the handler, in its
                                                               context (context variables set
                                                               here are seen by the handler)
    processed(queue, state, task, outcome, error, elapsed)     once the attempt's outcome is
                                                               settled: acked, retried,
                                                               dead-lettered or given back
    process_batch(queue, tasks, deliveries) -> state           the same for a batch handler
    processed_batch(queue, state, tasks, outcomes, error, elapsed)

The path is chosen once, when the TaskQueue and its worker are built: without middleware the
engine runs exactly as it would without this module. A hook that raises is logged (once per
hook and middleware) and otherwise ignored: a broken observer never fails a task.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from nova._errors import ConfigurationTypeError, ValidationError, ValidationTypeError
from nova._naming import validate_queue
from nova._task import Priority, Task, coerce_priority

if TYPE_CHECKING:
    from nova._broker import Broker, Delivery
    from nova._queue import TaskQueue
    from nova._task import Result

__all__ = ["BROKEN", "ENQUEUE_HEADERS", "Middleware", "Outcome", "broker_system", "combine", "complain", "is_cancel",
           "observed_enqueue"]

log = logging.getLogger("nova.middleware")


class Outcome(enum.StrEnum):
    """What became of a task after one attempt (what ``Middleware.processed`` is told)."""

    #: The handler returned; the task was acked.
    COMPLETED = "completed"
    #: The attempt failed; the task was sent back for another attempt (after its backoff).
    RETRIED = "retried"
    #: The attempt failed with no retries left (or the task's type had no handler): the task
    #: is in the dead-letter queue.
    DEAD_LETTERED = "dead_lettered"
    #: The task went back to the broker unacked (a forced stop, or a retry or dead letter
    #: that could not be published): it will be delivered again.
    RETURNED = "returned"


class Middleware:
    """Base class of middleware: override the hooks you need (see the module docstring).

        class CountCompleted(nova.Middleware):
            def __init__(self) -> None:
                self.completed = 0

            def processed(self, queue, state, task, outcome, error, elapsed):
                if outcome is nova.Outcome.COMPLETED:
                    self.completed += 1

        queue = nova.TaskQueue(broker, middleware=[CountCompleted()])

    One middleware may serve several TaskQueues (a ``nova.App`` gives its middleware to its
    producer and to each of its consumers): ``bind`` is called once for each, and every hook
    gets the TaskQueue it is called for. Hooks run on the queue's event loop; they must not
    block it.
    """

    def bind(self, queue: TaskQueue) -> None:
        """``queue`` was built with this middleware (called once per TaskQueue)."""

    def enqueue(self, queue: TaskQueue, tasks: Sequence[Task], destination: str, priority: Priority,
                headers: dict[str, str]) -> Any:
        """``tasks`` are about to be sent to queue ``destination``. Names and values added to
        ``headers`` (not starting with ``nova-``) travel in every one of their messages."""
        return None

    def enqueued(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], results: Sequence[Result] | None,
                 error: BaseException | None) -> None:
        """The broker took the tasks (``results``), or the enqueue raised ``error``."""

    def process(self, queue: TaskQueue, task: Task, delivery: Delivery) -> Any:
        """An attempt of ``task`` begins (``delivery.headers``: its message's headers)."""
        return None

    def processed(self, queue: TaskQueue, state: Any, task: Task, outcome: Outcome,
                  error: BaseException | str | None, elapsed: float | None) -> None:
        """The attempt ended in ``outcome``. ``error``: what the handler raised (or why no handler
        ran, as a str; a ``CancelledError`` on a forced stop). ``elapsed``: the handler's seconds
        on the queue's clock, None if no handler ran."""

    def process_batch(self, queue: TaskQueue, tasks: Sequence[Task], deliveries: Sequence[Delivery]) -> Any:
        """A batch handler is about to get ``tasks``."""
        return None

    def processed_batch(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], outcomes: Sequence[Outcome],
                        error: BaseException | None, elapsed: float | None) -> None:
        """The batch ended: one outcome per task (a failed batch retries or dead-letters each)."""


class _Chain(Middleware):
    """Several middlewares as one: calls go in order, ends in reverse order (nesting)."""

    def __init__(self, members: Sequence[Middleware]) -> None:
        self.members = tuple(members)

    def bind(self, queue: TaskQueue) -> None:
        for member in self.members:
            member.bind(queue)

    def _begin(self, hook: str, call: Callable[[Middleware], Any]) -> list[Any]:
        """Each member's state from ``call`` (BROKEN where it raised)."""
        states = []
        for member in self.members:
            try:
                states.append(call(member))
            except Exception:  # noqa: BLE001 - an observer must not fail the enqueue or the task
                states.append(BROKEN)
                complain(member, hook)
        return states

    def _end(self, hook: str, states: list[Any], call: Callable[[Middleware, Any], None]) -> None:
        """``call`` with each member's state, last member first, skipping those whose begin raised."""
        for member, own in zip(reversed(self.members), reversed(states), strict=True):
            if own is not BROKEN:
                try:
                    call(member, own)
                except Exception:  # noqa: BLE001
                    complain(member, hook)

    def enqueue(self, queue: TaskQueue, tasks: Sequence[Task], destination: str, priority: Priority,
                headers: dict[str, str]) -> Any:
        return self._begin("enqueue", lambda m: m.enqueue(queue, tasks, destination, priority, headers))

    def enqueued(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], results: Sequence[Result] | None,
                 error: BaseException | None) -> None:
        self._end("enqueued", state, lambda m, own: m.enqueued(queue, own, tasks, results, error))

    def process(self, queue: TaskQueue, task: Task, delivery: Delivery) -> Any:
        return self._begin("process", lambda m: m.process(queue, task, delivery))

    def processed(self, queue: TaskQueue, state: Any, task: Task, outcome: Outcome,
                  error: BaseException | str | None, elapsed: float | None) -> None:
        self._end("processed", state, lambda m, own: m.processed(queue, own, task, outcome, error, elapsed))

    def process_batch(self, queue: TaskQueue, tasks: Sequence[Task], deliveries: Sequence[Delivery]) -> Any:
        return self._begin("process_batch", lambda m: m.process_batch(queue, tasks, deliveries))

    def processed_batch(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], outcomes: Sequence[Outcome],
                        error: BaseException | None, elapsed: float | None) -> None:
        self._end("processed_batch", state,
                  lambda m, own: m.processed_batch(queue, own, tasks, outcomes, error, elapsed))


#: The state of a hook that raised: its pair is not called.
BROKEN: Any = object()

_complained: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()
_complained_by_id: dict[int, set[str]] = {}


def complain(member: object, hook: str) -> None:
    """Log a middleware's failure, once per middleware and hook (a broken one would otherwise log per task)."""
    try:
        hooks = _complained.setdefault(member, set())
    except TypeError:  # not weakly referable (__slots__ without __weakref__)
        hooks = _complained_by_id.setdefault(id(member), set())
    if hook in hooks:
        return
    hooks.add(hook)
    log.exception("middleware %s failed in %s(); ignored (further failures of it there are not logged)",
                  type(member).__name__, hook)



def combine(middleware: object) -> Middleware | None:
    """The ``middleware=`` option as one Middleware (None: none given)."""
    if middleware is None:
        return None
    if isinstance(middleware, Middleware) or not isinstance(middleware, Sequence) or isinstance(middleware, str):
        raise ConfigurationTypeError("middleware must be a list of nova.Middleware, e.g. "
                                     f"[nova.PrometheusMetrics()], got {type(middleware).__name__}")
    members = list(middleware)
    for member in members:
        if not isinstance(member, Middleware):
            raise ConfigurationTypeError("middleware must be a list of nova.Middleware (e.g. nova.PrometheusMetrics(), "
                                         f"nova.OpenTelemetryTracing()), got a {type(member).__name__}")
    if not members:
        return None
    return members[0] if len(members) == 1 else _Chain(members)


#: The headers middleware added for the enqueue under way in this context (read by TaskQueue._prepare).
ENQUEUE_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("nova_enqueue_headers", default=None)


async def observed_enqueue(tq: TaskQueue, tasks: Sequence[Task], priority: Priority,
                           process_in: timedelta | float | None, process_at: datetime | None,
                           queue: str, *, one: bool = False) -> list[Result]:
    """``tq.enqueue_batch`` (``one``: ``tq.enqueue`` of the one task) between its middleware's
    ``enqueue`` and ``enqueued``."""
    mw = tq._middleware
    assert mw is not None
    if isinstance(tasks, Task) or not isinstance(tasks, Sequence):
        raise ValidationTypeError(f"enqueue_batch takes a list of nova.Task, got {type(tasks).__name__}")
    level = coerce_priority(priority)
    validate_queue(queue)
    if not tasks:
        return []
    headers: dict[str, str] = {}
    try:
        state = mw.enqueue(tq, tasks, queue, level, headers)
    except Exception:  # noqa: BLE001 - an observer must not fail the enqueue
        complain(mw, "enqueue")
        state = BROKEN
    for name in headers:
        if name.lower().startswith("nova-"):
            raise ValidationError(f"middleware {type(mw).__name__} added header {name!r}: names starting "
                                  "with 'nova-' are nova's")
    token = ENQUEUE_HEADERS.set(headers)
    try:
        if one:
            results = [await tq.enqueue(tasks[0], priority=level, process_in=process_in, process_at=process_at,
                                        queue=queue)]
        else:
            results = await tq.enqueue_batch(tasks, priority=level, process_in=process_in, process_at=process_at,
                                             queue=queue)
    except BaseException as exc:
        if state is not BROKEN:
            try:
                mw.enqueued(tq, state, tasks, None, exc)
            except Exception:  # noqa: BLE001
                complain(mw, "enqueued")
        raise
    finally:
        ENQUEUE_HEADERS.reset(token)
    if state is not BROKEN:
        try:
            mw.enqueued(tq, state, tasks, results, None)
        except Exception:  # noqa: BLE001
            complain(mw, "enqueued")
    return results


def broker_system(broker: Broker) -> str:
    """The broker's ``messaging.system``: kafka, rabbitmq, rocketmq, sim (SimBroker), or its
    own ``messaging_system`` attribute, else its class name in lower case."""
    own = getattr(broker, "messaging_system", None)
    if isinstance(own, str) and own:
        return own
    module = type(broker).__module__
    for system in ("kafka", "rabbitmq", "rocketmq"):
        if module.startswith(f"nova.brokers.{system}"):
            return system
    if module.startswith("nova.sim"):
        return "sim"
    return type(broker).__name__.lower()


def is_cancel(error: object) -> bool:
    """Whether an attempt's error is a cancellation (a forced stop), not a failure."""
    return isinstance(error, asyncio.CancelledError)
