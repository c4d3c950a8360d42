"""nova.OpenTelemetryTracing: spans for enqueues and attempts, the trace carried in the task's headers.

    trace.set_tracer_provider(TracerProvider())             # the SDK and exporter are yours
    queue = nova.TaskQueue(broker, middleware=[nova.OpenTelemetryTracing()])

Follows OpenTelemetry's semantic conventions for messaging spans (operation types
``send`` and ``process``):

- ``enqueue``/``enqueue_batch``: a span ``send {queue}``, kind PRODUCER, child of the caller's
  current span; its context goes into every task's message headers through the global
  propagator (W3C ``traceparent``, ``tracestate`` and ``baggage`` by default), as plain
  message headers whatever the message format, so it is each message's creation context;
- each attempt: a span ``process {queue}``, kind CONSUMER, child of that context. A retry
  keeps the task's headers, so every attempt of a task, and its dead letter, are children of
  the one ``send`` span: one trace from the request to the dead-letter queue;
- a batch handler: one ``process {queue}`` span, a root with ``messaging.batch.message_count``
  and one link per distinct creation context among its tasks.

The handler runs with its ``process`` span current (and the message's baggage), so spans it
makes are its children, and log records can carry its trace id (``nova worker --log-format json``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nova._middleware import Middleware, Outcome, broker_system, is_cancel

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("nova.OpenTelemetryTracing needs opentelemetry-api: pip install 'nova-taskqueue[otel]'") from exc

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from nova._broker import Delivery
    from nova._queue import TaskQueue
    from nova._task import Priority, Result, Task

__all__ = ["OpenTelemetryTracing"]

SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"

SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
MESSAGE_ID = "messaging.message.id"
GROUP = "messaging.consumer.group.name"
BATCH_COUNT = "messaging.batch.message_count"
PARTITION = "messaging.destination.partition.id"
KAFKA_OFFSET = "messaging.kafka.offset"
ERROR_TYPE = "error.type"
TASK_TYPE = "nova.task.type"
ATTEMPT = "nova.task.attempt"
OUTCOME = "nova.outcome"

_COMPLETED = Outcome.COMPLETED
_PRODUCER, _CONSUMER = SpanKind.PRODUCER, SpanKind.CONSUMER
_NO_PARENT = Context()  # a message without a trace context starts a trace of its own
_MAX_PARENTS = 4096  # cached creation contexts (the tasks of one enqueue share one)


class OpenTelemetryTracing(Middleware):
    """OpenTelemetry spans for enqueues and handler attempts (see the module docstring).

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        app = nova.App(url, middleware=[nova.OpenTelemetryTracing(tracer_provider=provider)])

    ``tracer_provider``: the provider to use (default: the global one, looked up at each span,
    so one set later counts too). The trace context travels through the global propagator
    (``opentelemetry.propagate``: W3C trace context and baggage unless configured otherwise).

    Attributes: ``messaging.system`` (kafka, rabbitmq, rocketmq; sim for SimBroker),
    ``messaging.destination.name`` (the nova queue), ``messaging.operation.type`` and
    ``.name`` (send, process), ``messaging.message.id`` (the task id; a send span of one
    task), ``messaging.batch.message_count`` (more than one), ``messaging.consumer.group.name``,
    ``nova.task.type``, ``nova.task.attempt``; on Kafka ``messaging.destination.partition.id``
    and ``messaging.kafka.offset``; when an attempt was not completed, ``nova.outcome``
    (retried, dead_lettered, returned), and when it failed ``error.type`` (the exception's
    class, ``nova.TaskTimeout`` for a time limit) with the span's status ERROR and the exception
    recorded.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from nova import __version__

        self._tracer = trace.get_tracer("nova", __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL)
        # Per TaskQueue (by id; forgotten when it goes): the attributes every span of it has.
        self._producer_attrs: dict[int, dict[str, Any]] = {}
        self._consumer_attrs: dict[int, dict[str, Any]] = {}
        self._kafka: set[int] = set()
        self._parents: dict[tuple[str | None, ...], Context] = {}
        self._fields: tuple[str, ...] | None = None
        self._names: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"OpenTelemetryTracing(queues={len(self._producer_attrs)})"

    def bind(self, queue: TaskQueue) -> None:
        key = id(queue)
        system = broker_system(queue.broker)
        self._producer_attrs[key] = {SYSTEM: system, OPERATION_TYPE: "send", OPERATION_NAME: "send"}
        self._consumer_attrs[key] = {SYSTEM: system, OPERATION_TYPE: "process", OPERATION_NAME: "process",
                                     GROUP: queue.group}
        if system == "kafka":
            self._kafka.add(key)
        weakref.finalize(queue, self._forget, key)

    def _forget(self, key: int) -> None:
        self._producer_attrs.pop(key, None)
        self._consumer_attrs.pop(key, None)
        self._kafka.discard(key)

    # -- producing ------------------------------------------------------------------------
    def enqueue(self, queue: TaskQueue, tasks: Sequence[Task], destination: str, priority: Priority,
                headers: dict[str, str]) -> Any:
        attributes = {**self._producer_attrs[id(queue)], DESTINATION: destination}
        if len(tasks) == 1:
            task = tasks[0]
            attributes[TASK_TYPE] = task.type
            if task.id is not None:
                attributes[MESSAGE_ID] = task.id
        else:
            attributes[BATCH_COUNT] = len(tasks)
        span = self._tracer.start_span(f"send {destination}", kind=_PRODUCER, attributes=attributes)
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return span

    def enqueued(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], results: Sequence[Result] | None,
                 error: BaseException | None) -> None:
        span: Span = state
        if results is not None and len(results) == 1 and tasks[0].id is None:
            span.set_attribute(MESSAGE_ID, results[0].id)
        if error is not None:
            _failed(span, error)
        span.end()

    # -- consuming ------------------------------------------------------------------------
    def _parent(self, headers: Mapping[str, str]) -> Context:
        """The creation context in ``headers`` (one extraction per distinct context)."""
        fields = self._fields
        if fields is None:
            fields = self._fields = tuple(sorted(propagate.get_global_textmap().fields))
        key = tuple(map(headers.get, fields))
        parent = self._parents.get(key)
        if parent is None:
            if not any(key):
                return _NO_PARENT
            parent = propagate.extract(headers, context=_NO_PARENT)
            if len(self._parents) >= _MAX_PARENTS:
                self._parents.clear()
            self._parents[key] = parent
        return parent

    def _name(self, queue: str) -> str:
        name = self._names.get(queue)
        if name is None:
            name = self._names[queue] = f"process {queue}"
        return name

    def process(self, queue: TaskQueue, task: Task, delivery: Delivery) -> Any:
        key = id(queue)
        parent = self._parent(delivery.headers)
        attributes = {**self._consumer_attrs[key], DESTINATION: task.queue, MESSAGE_ID: task.id,
                      TASK_TYPE: task.type, ATTEMPT: task.attempt}
        if key in self._kafka:
            attributes[PARTITION] = str(getattr(delivery, "partition", ""))
            attributes[KAFKA_OFFSET] = getattr(delivery, "offset", -1)
        span = self._tracer.start_span(self._name(task.queue), context=parent, kind=_CONSUMER, attributes=attributes)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def processed(self, queue: TaskQueue, state: Any, task: Task, outcome: Outcome,
                  error: BaseException | str | None, elapsed: float | None) -> None:
        span, token = state
        otel_context.detach(token)
        if outcome is not _COMPLETED:
            span.set_attribute(OUTCOME, outcome.value)
            if error is not None and not is_cancel(error):
                _failed(span, error)
        span.end()

    def process_batch(self, queue: TaskQueue, tasks: Sequence[Task], deliveries: Sequence[Delivery]) -> Any:
        links: list[Link] = []
        seen: set[int] = set()
        for delivery in deliveries:
            parent = self._parent(delivery.headers)
            if parent is _NO_PARENT or id(parent) in seen:
                continue
            seen.add(id(parent))
            context = trace.get_current_span(parent).get_span_context()
            if context.is_valid:
                links.append(Link(context))
        name = tasks[0].queue if tasks else "default"
        attributes = {**self._consumer_attrs[id(queue)], DESTINATION: name, BATCH_COUNT: len(tasks)}
        types = {task.type for task in tasks}
        if len(types) == 1:
            attributes[TASK_TYPE] = types.pop()
        span = self._tracer.start_span(self._name(name), context=_NO_PARENT, kind=_CONSUMER, attributes=attributes,
                                       links=links)
        return span, otel_context.attach(trace.set_span_in_context(span, _NO_PARENT))

    def processed_batch(self, queue: TaskQueue, state: Any, tasks: Sequence[Task], outcomes: Sequence[Outcome],
                        error: BaseException | None, elapsed: float | None) -> None:
        span, token = state
        otel_context.detach(token)
        if error is not None and not is_cancel(error):
            kinds = sorted({outcome.value for outcome in outcomes})
            span.set_attribute(OUTCOME, kinds[0] if len(kinds) == 1 else ",".join(kinds))
            _failed(span, error)
        elif error is not None:
            span.set_attribute(OUTCOME, Outcome.RETURNED.value)
        span.end()


def error_type(error: BaseException | str) -> str:
    """``error.type``: the exception's class (module-qualified unless a builtin; nova's errors as
    ``nova.X``), or ``no_handler`` for a task no handler takes."""
    if isinstance(error, str):
        return "no_handler"
    cls = type(error)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("nova."):
        module = "nova"
    return f"{module}.{cls.__qualname__}"


def _failed(span: Span, error: BaseException | str) -> None:
    span.set_attribute(ERROR_TYPE, error_type(error))
    span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
    if isinstance(error, BaseException):
        span.record_exception(error)
