"""nova.OpenTelemetryTracing on SimBroker and a VirtualClock, spans collected by the SDK's
in-memory exporter: one trace from the request to the dead letter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import nova
from nova.sim import SimBroker, VirtualClock

RETRY = nova.RetryPolicy(max_retries=1, backoff=nova.ConstantBackoff(timedelta(seconds=5)))


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_one_trace_from_the_request_through_retries_to_the_dead_letter(
        broker: SimBroker, clock: VirtualClock, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    tracing = nova.OpenTelemetryTracing(tracer_provider=provider)
    queue = nova.TaskQueue(broker, retry=RETRY, group_id="billing", middleware=[tracing])
    dead = nova.TaskQueue(broker, middleware=[tracing])
    tracer = provider.get_tracer("test")
    seen: list[tuple[int, str | None]] = []

    async def handle(task: nova.Task) -> None:
        with tracer.start_as_current_span("charge card"):
            seen.append((task.attempt, baggage.get_baggage("tenant")))  # type: ignore[arg-type]
        raise ValueError("card declined")

    async def keep(task: nova.Task) -> None:
        return None

    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("POST /orders") as request:
            result = await queue.enqueue(nova.Task("charge", b"{}"))
    finally:
        context.detach(token)
    await queue.start(handle)
    await dead.start(keep, queues=[nova.dead_letter_queue("default")])
    await clock.advance(timedelta(seconds=30))
    await queue.stop()
    await dead.stop()

    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {trace_id}
    (send,) = spans(exporter, "send default")
    assert send.kind is SpanKind.PRODUCER
    assert parent_of(send) == request.get_span_context().span_id
    assert send.attributes is not None
    assert dict(send.attributes) == {
        "messaging.system": "sim", "messaging.destination.name": "default", "messaging.operation.type": "send",
        "messaging.operation.name": "send", "messaging.message.id": result.id, "nova.task.type": "charge"}
    attempts = sorted(spans(exporter, "process default"), key=lambda s: s.attributes["nova.task.attempt"])  # type: ignore[index]
    assert [s.attributes["nova.task.attempt"] for s in attempts] == [1, 2]  # type: ignore[index]
    for span, outcome in zip(attempts, ("retried", "dead_lettered"), strict=True):
        assert span.kind is SpanKind.CONSUMER
        assert parent_of(span) == send.context.span_id  # a retry keeps the original context
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "sim"
        assert span.attributes["messaging.destination.name"] == "default"
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.operation.name"] == "process"
        assert span.attributes["messaging.message.id"] == result.id
        assert span.attributes["messaging.consumer.group.name"] == "nova_billing"
        assert span.attributes["nova.outcome"] == outcome
        assert span.attributes["error.type"] == "ValueError"
        assert span.status.status_code is StatusCode.ERROR
        assert [e.name for e in span.events] == ["exception"]
    # The handler's own spans are children of its attempt's; the request's baggage came along.
    charges = spans(exporter, "charge card")
    assert sorted(parent_of(s) for s in charges) == sorted(s.context.span_id for s in attempts)  # type: ignore[type-var]
    assert seen == [(1, "acme"), (2, "acme")]
    # The dead letter, consumed, is in the same trace, under the same send span.
    (dlq,) = spans(exporter, "process default_dlq")
    assert parent_of(dlq) == send.context.span_id
    assert dlq.attributes is not None and "nova.outcome" not in dlq.attributes
    assert dlq.status.status_code is StatusCode.UNSET


async def test_a_batch_span_links_each_creation_context(
        broker: SimBroker, clock: VirtualClock, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    queue = nova.TaskQueue(broker, middleware=[nova.OpenTelemetryTracing(tracer_provider=provider)])
    batches: list[int] = []

    async def handle(tasks: list[nova.Task]) -> None:
        batches.append(len(tasks))

    await queue.enqueue_batch([nova.Task("report"), nova.Task("report")])
    await queue.enqueue(nova.Task("report"))
    await queue.start_batch(handle, nova.CountAggregator(3))
    await clock.settle()
    await queue.stop()
    assert batches == [3]
    sends = spans(exporter, "send default")
    assert sorted(s.attributes.get("messaging.batch.message_count", 1) for s in sends) == [1, 2]  # type: ignore[union-attr]
    (batch,) = spans(exporter, "process default")
    assert batch.parent is None  # a batch has several creation contexts: links, not a parent
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["nova.task.type"] == "report"
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in sends}


async def test_a_timeout_is_its_error_type(broker: SimBroker, clock: VirtualClock, provider: TracerProvider,
                                           exporter: InMemorySpanExporter) -> None:
    queue = nova.TaskQueue(broker, retry=nova.RetryPolicy(max_retries=0),
                           middleware=[nova.OpenTelemetryTracing(tracer_provider=provider)])

    async def handle(task: nova.Task) -> None:
        await clock.sleep(60)

    await queue.enqueue(nova.Task("slow"))
    await queue.start(handle, timeout=timedelta(seconds=1))
    await clock.advance(timedelta(seconds=5))
    await queue.stop()
    (span,) = spans(exporter, "process default")
    assert span.attributes is not None
    assert span.attributes["error.type"] == "nova.TaskTimeout"
    assert span.attributes["nova.outcome"] == "dead_lettered"


async def test_a_message_without_a_trace_starts_its_own(broker: SimBroker, clock: VirtualClock,
                                                        provider: TracerProvider,
                                                        exporter: InMemorySpanExporter) -> None:
    plain = nova.TaskQueue(broker)  # a producer without tracing
    queue = nova.TaskQueue(broker, middleware=[nova.OpenTelemetryTracing(tracer_provider=provider)])
    tracer = provider.get_tracer("test")

    async def handle(task: nova.Task) -> None:
        return None

    await plain.enqueue(nova.Task("job"))
    with tracer.start_as_current_span("the consumer's own start"):
        await queue.start(handle)  # the runners are made here: they must not inherit this span
    await clock.settle()
    await queue.stop()
    (span,) = spans(exporter, "process default")
    assert span.parent is None


async def test_a_delayed_task_stays_in_its_trace(broker: SimBroker, clock: VirtualClock, provider: TracerProvider,
                                                exporter: InMemorySpanExporter) -> None:
    queue = nova.TaskQueue(broker, middleware=[nova.OpenTelemetryTracing(tracer_provider=provider)])

    async def handle(task: nova.Task) -> None:
        return None

    await queue.start(handle)
    await queue.enqueue(nova.Task("later"), process_in=timedelta(hours=3))  # through the delay tiers
    await clock.advance(timedelta(hours=4))
    await queue.stop()
    (send,) = spans(exporter, "send default")
    (process,) = spans(exporter, "process default")
    assert parent_of(process) == send.context.span_id


@pytest.mark.parametrize("fmt", list(nova.MessageFormat))
async def test_the_trace_context_travels_whatever_the_codec(broker: SimBroker, clock: VirtualClock,
                                                            provider: TracerProvider,
                                                            exporter: InMemorySpanExporter,
                                                            fmt: nova.MessageFormat) -> None:
    if fmt is nova.MessageFormat.PROTOBUF:
        pytest.importorskip("google.protobuf")
    queue = nova.TaskQueue(broker, message_format=fmt,
                           middleware=[nova.OpenTelemetryTracing(tracer_provider=provider)])
    got: list[nova.Task] = []

    async def handle(task: nova.Task) -> None:
        got.append(task)

    await queue.enqueue(nova.Task("job", b"\x00payload", headers={"tenant": "a"}))
    await queue.start(handle)
    await clock.settle()
    await queue.stop()
    assert [(t.payload, dict(t.headers)) for t in got] == [(b"\x00payload", {"tenant": "a"})]
    (send,) = spans(exporter, "send default")
    (process,) = spans(exporter, "process default")
    assert parent_of(process) == send.context.span_id


class Recorder(nova.Middleware):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def enqueue(self, queue: Any, tasks: Any, destination: str, priority: nova.Priority,
                headers: dict[str, str]) -> Any:
        headers["x-seen"] = "yes"
        return "e"

    def enqueued(self, queue: Any, state: Any, tasks: Any, results: Any, error: BaseException | None) -> None:
        self.calls.append(("enqueued", state, len(results or ()), type(error).__name__))

    def process(self, queue: Any, task: nova.Task, delivery: Any) -> Any:
        self.calls.append(("process", task.type, delivery.headers.get("x-seen")))
        return task.attempt

    def processed(self, queue: Any, state: Any, task: nova.Task, outcome: nova.Outcome, error: Any,
                  elapsed: float | None) -> None:
        self.calls.append(("processed", task.type, state, outcome, elapsed))


class Broken(nova.Middleware):
    def process(self, queue: Any, task: nova.Task, delivery: Any) -> Any:
        raise RuntimeError("a bug in an observer")

    def enqueued(self, queue: Any, state: Any, tasks: Any, results: Any, error: BaseException | None) -> None:
        raise RuntimeError("another one")


async def test_a_custom_middleware_and_a_broken_one(broker: SimBroker, clock: VirtualClock,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    seen = Recorder()
    queue = nova.TaskQueue(broker, retry=RETRY, middleware=[Broken(), seen])

    async def handle(task: nova.Task) -> None:
        await clock.sleep(2)
        if task.type == "bad":
            raise ValueError("no")

    await queue.enqueue(nova.Task("good"))
    await queue.enqueue(nova.Task("bad"))
    await queue.enqueue(nova.Task("bad"))
    await queue.start(handle, concurrency=1)
    await clock.advance(timedelta(seconds=30))
    await queue.stop()
    assert seen.calls[:3] == [("enqueued", "e", 1, "NoneType")] * 3
    assert ("process", "good", "yes") in seen.calls
    assert ("processed", "good", 1, nova.Outcome.COMPLETED, 2.0) in seen.calls
    assert seen.calls.count(("processed", "bad", 1, nova.Outcome.RETRIED, 2.0)) == 2
    assert seen.calls.count(("processed", "bad", 2, nova.Outcome.DEAD_LETTERED, 2.0)) == 2
    failures = [r for r in caplog.records if r.name == "nova.middleware"]
    assert len(failures) == 2  # once per hook, not per task
    assert {"process()", "enqueued()"} == {r.getMessage().split(" failed in ")[1].split(";")[0] for r in failures}


async def test_middleware_may_not_add_nova_headers(broker: SimBroker) -> None:
    class Bad(nova.Middleware):
        def enqueue(self, queue: Any, tasks: Any, destination: str, priority: nova.Priority,
                    headers: dict[str, str]) -> Any:
            headers["nova-id"] = "mine"

    queue = nova.TaskQueue(broker, middleware=[Bad()])
    with pytest.raises(nova.ValidationError, match="nova-"):
        await queue.enqueue(nova.Task("job"))
    await queue.stop()


def test_without_a_provider_the_global_one_is_used_even_if_set_later() -> None:
    code = """
import asyncio
import nova
from nova.sim import SimBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

tracing = nova.OpenTelemetryTracing()
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def main():
    queue = nova.TaskQueue(SimBroker(), middleware=[tracing])
    await queue.enqueue(nova.Task("job"))
    await queue.stop()

asyncio.run(main())
print([s.name for s in exporter.get_finished_spans()])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['send default']"
