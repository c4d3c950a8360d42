"""Tracing and metrics across a real broker (``--broker``): this process enqueues inside a span,
a ``nova worker`` process handles the task, and the worker's span is in the producer's trace,
carried by the broker's message headers; the worker's /metrics counts the task."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nova
from tests.observability_support import sample, spans, write_app
from tests.worker_support import Setup, free_port, probe, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses Linux signals")

START = 90.0  # import + connect + join the group, on a busy 2-core machine


@pytest.fixture
def setup(tmp_path: Path, broker_name: str) -> Iterator[Setup]:
    s = Setup(tmp_path, broker_name)
    write_app(s)
    yield s
    s.cleanup()


def test_a_producer_and_a_worker_in_two_processes_share_one_trace(setup: Setup, broker_name: str) -> None:
    spans_file = setup.dir / "spans.jsonl"
    setup.env["NOVA_TEST_SPANS"] = str(spans_file)
    port = free_port()
    worker = setup.worker("obsapp:app", "--metrics-port", str(port))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def produce() -> str:
        queue = setup.queue(middleware=[nova.OpenTelemetryTracing(tracer_provider=provider)])
        try:
            with provider.get_tracer("test").start_as_current_span("POST /orders"):
                result = await queue.enqueue(nova.Task("ok", b"{}"))
        finally:
            await queue.stop()
        return result.id

    task_id = asyncio.run(produce())
    request = next(s for s in exporter.get_finished_spans() if s.name == "POST /orders")
    send = next(s for s in exporter.get_finished_spans() if s.name == "send default")

    def handled() -> list[dict[str, object]]:
        return [s for s in spans(spans_file) if s["name"] == "process default"
                and s["attributes"].get("messaging.message.id") == task_id]  # type: ignore[union-attr]

    wait_until(lambda: len(handled()) == 1, START, "the task handled and traced")
    [process] = handled()
    assert process["pid"] == worker.pid and worker.pid != os.getpid()
    assert process["trace_id"] == f"{request.context.trace_id:032x}"  # one trace, across the broker
    assert process["parent"] == f"{send.context.span_id:016x}"
    assert process["kind"] == "CONSUMER"
    attributes = process["attributes"]
    assert isinstance(attributes, dict)
    assert attributes["messaging.system"] == broker_name
    assert attributes["messaging.destination.name"] == "default"
    assert attributes["messaging.consumer.group.name"] == f"{setup.prefix}_workers"
    if broker_name == "kafka":
        assert attributes["messaging.destination.partition.id"] == "0"
        assert isinstance(attributes["messaging.kafka.offset"], int)
    completed = 'nova_tasks_processed_total{queue="default",status="completed",type="ok"}'
    wait_until(lambda: sample(probe(port, "/metrics")[1], completed) == 1, 30, "the task counted in /metrics")
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    provider.shutdown()
