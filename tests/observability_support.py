"""An app module for ``nova worker`` observability tests (``obsapp.py``, written per test next to
tests/worker_support.py's ``workerapp.py``): handlers that complete or fail, tasks it enqueues
itself once consuming (``NOVA_TEST_SEED``), and, with ``NOVA_TEST_SPANS``, OpenTelemetry tracing
whose spans go to that file as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.worker_support import Setup

OBS_APP = '''\
import json
import logging
import os

import nova
from tests.worker_support import make_broker

SPANS = os.environ.get("NOVA_TEST_SPANS")
middleware = []
if SPANS:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans):
            with open(SPANS, "a") as out:
                for span in spans:
                    out.write(json.dumps({
                        "name": span.name, "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent": None if span.parent is None else f"{span.parent.span_id:016x}",
                        "kind": span.kind.name, "attributes": dict(span.attributes or {}),
                        "pid": os.getpid()}) + "\\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)
    middleware.append(nova.OpenTelemetryTracing())


class SeededApp(nova.App):
    """Enqueues NOVA_TEST_SEED ("ok:3,bad:1") once consuming (a sim:// broker lives in the worker only)."""

    async def start(self, *args, **kwargs):
        await super().start(*args, **kwargs)
        for part in filter(None, os.environ.get("NOVA_TEST_SEED", "").split(",")):
            task_type, count = part.split(":")
            await self.enqueue_batch([nova.Task(task_type, b"x") for _ in range(int(count))])


app = SeededApp(make_broker(), topic_prefix=os.environ["NOVA_TEST_PREFIX"], group_id="workers",
                retry=nova.RetryPolicy(max_retries=0), middleware=middleware)


@app.task("ok")
async def ok(task):
    logging.getLogger("obsapp").info("working on it", extra={"order": "A-1"})


@app.task("bad")
async def bad(task):
    raise ValueError("nope")
'''


def write_app(setup: Setup) -> None:
    (setup.dir / "obsapp.py").write_text(OBS_APP)


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def sample(text: str, line_start: str) -> float | None:
    """The value of the sample whose line starts with ``line_start`` (name and labels), in
    Prometheus text; None if there is none."""
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
