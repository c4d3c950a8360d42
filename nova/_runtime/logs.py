"""Log setup of ``nova worker``: one stream, each line with the process id and, while a
handler runs, its task (``nova.TaskLogFilter``), so ``grep TASK_ID`` tells a task's story.

``--log-format json`` writes one JSON object per line instead:

    {"time": "2026-12-05T01:02:03.456Z", "level": "INFO", "logger": "shop.tasks", "process": 4242,
     "message": "sent", "task_id": "5f0c...", "task_type": "email", "queue": "default", "attempt": 1,
     "trace_id": "4bf9...", "span_id": "00f0..."}

The task's fields are there while a handler runs (a batch handler: ``task_type``, ``queue``
and ``batch_size``); ``trace_id`` and ``span_id`` when an OpenTelemetry span is current (with
``nova.OpenTelemetryTracing``: the attempt's); ``exception`` with the traceback; and any
``extra=`` fields of the call.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from nova._handlers import CURRENT_TASK
from nova._tasklog import TaskLogFilter

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "setup_logging"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s%(task)s: %(message)s"

# What every LogRecord has (and TaskLogFilter adds): anything else came with extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "task", "task_id", "task_type", "task_queue", "task_attempt", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring); needs ``TaskLogFilter`` on the handler
    for the task's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        task_type = getattr(record, "task_type", None)
        if task_type is not None:
            task_id = getattr(record, "task_id", None)
            if task_id is not None:
                out["task_id"] = task_id
            out["task_type"] = task_type
            out["queue"] = getattr(record, "task_queue", None)
            attempt = getattr(record, "task_attempt", None)
            if attempt is not None:
                out["attempt"] = attempt
            else:
                current = CURRENT_TASK.get()
                if isinstance(current, list):
                    out["batch_size"] = len(current)
        _add_trace(out)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in out:
                out[name] = value
        return json.dumps(out, ensure_ascii=False, default=str)


def _add_trace(out: dict[str, Any]) -> None:
    """The current OpenTelemetry span's ids, if OpenTelemetry is in use (never imported here)."""
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:
        return
    context = otel.get_current_span().get_span_context()
    if context.is_valid:
        out["trace_id"] = f"{context.trace_id:032x}"
        out["span_id"] = f"{context.span_id:016x}"


def setup_logging(level: str, fmt: str = "text") -> None:
    """Replace the root logger's handlers with one to stderr at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TaskLogFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def flush_logs() -> None:
    """Flush every handler of the root logger (before an ``os._exit``)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
