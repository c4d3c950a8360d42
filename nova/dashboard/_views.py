"""How records look on a page and in the JSON API: times, durations, payloads, errors.

Nothing here marks text as safe HTML: the templates autoescape everything they show.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from nova._recording import TaskEvent, TaskRecord, TaskStatus
from nova.dashboard._queries import Overview, QueueState, TaskPage, TaskStory

__all__ = [
    "PAYLOAD_LIMIT",
    "PayloadView",
    "ago",
    "duration",
    "event_json",
    "overview_json",
    "page_json",
    "payload_view",
    "record_json",
    "short_error",
    "story_json",
    "task_url",
    "utc",
]

PAYLOAD_LIMIT = 4096  # bytes of a payload shown (page and API)
_ERROR_WIDTH = 120


def utc(value: datetime | None) -> str:
    """``2030-01-31 12:00:00.123`` (UTC), or an empty string."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    """A short human duration: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``3 h 02 min``, ``2 d 4 h``."""
    if seconds is None:
        return ""
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f} ms"
    if s < 60:
        return f"{sign}{s:.1f} s"
    if s < 3600:
        return f"{sign}{int(s // 60)} min {int(s % 60):02d} s"
    if s < 86400:
        return f"{sign}{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    return f"{sign}{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def ago(value: datetime | None, now: datetime) -> str:
    """``3 min 05 s ago`` / ``in 2 h 00 min``."""
    if value is None:
        return ""
    seconds = (now - value).total_seconds()
    return f"{duration(seconds)} ago" if seconds >= 0 else f"in {duration(-seconds)}"


def between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return duration((end - start).total_seconds())


def short_error(text: str | None, width: int = _ERROR_WIDTH) -> str:
    """The last non-blank line of an error (a traceback's exception), cut to ``width``."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def task_url(task_id: str) -> str:
    """The task page's path; any id (slashes, spaces, ``<``...) quoted whole."""
    return "/tasks/" + quote(task_id, safe="")


@dataclass(frozen=True, slots=True)
class PayloadView:
    """A payload ready to show: ``kind`` is "none" (not recorded), "text", "json" or "hex"."""

    kind: str
    text: str
    size: int
    truncated: bool


def payload_view(data: bytes | None, limit: int = PAYLOAD_LIMIT) -> PayloadView:
    """Text if the payload is UTF-8 (indented if it is JSON), else a hex dump; at most ``limit`` bytes."""
    if data is None:
        return PayloadView("none", "", 0, False)
    size = len(data)
    head = data[:limit]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a cut through a multi-byte character is still text; anything else is binary
        if size > limit and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            text = head[: exc.start].decode("utf-8")
        else:
            return PayloadView("hex", hexdump(head), size, size > limit)
    if size <= limit:
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(parsed, dict | list):
                return PayloadView("json", json.dumps(parsed, indent=2, ensure_ascii=False), size, False)
    return PayloadView("text", text, size, size > limit)


def hexdump(data: bytes) -> str:
    """``00000000  48 65 6c 6c 6f  |Hello|`` lines of 16 bytes."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset: offset + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {hexes:<47}  |{text}|")
    return "\n".join(lines)


# -- JSON ------------------------------------------------------------------------------
def record_json(record: TaskRecord, *, with_payload: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.task_id,
        "type": record.type,
        "queue": record.queue,
        "priority": record.priority,
        "status": record.status.value,
        "retries": record.retry_count,
        "error": record.error,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "completed_at": iso(record.completed_at),
        "updated_at": iso(record.updated_at),
        "eta": iso(record.eta),
        "headers": dict(record.headers),
        "url": task_url(record.task_id),
    }
    if with_payload:
        out["payload"] = payload_json(record.payload)
    return out


def payload_json(data: bytes | None, limit: int = PAYLOAD_LIMIT) -> dict[str, Any] | None:
    """None if not recorded; else the first ``limit`` bytes as UTF-8 text or base64."""
    if data is None:
        return None
    head = data[:limit]
    try:
        return {"encoding": "utf-8", "data": head.decode("utf-8"), "size": len(data), "truncated": len(data) > limit}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(head).decode(), "size": len(data),
                "truncated": len(data) > limit}


def event_json(event: TaskEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "status": event.status.value,
        "attempt": event.attempt,
        "queue": event.queue,
        "eta": iso(event.eta),
        "error": event.error,
        "version": event.version,
    }


def story_json(story: TaskStory) -> dict[str, Any]:
    return {"task": record_json(story.record, with_payload=True),
            "runs": [[event_json(e) for e in run] for run in story.runs]}


def page_json(page: TaskPage) -> dict[str, Any]:
    return {"tasks": [record_json(r) for r in page.records], "offset": page.offset, "limit": page.limit,
            "next_offset": page.next_offset}


def _queue_json(state: QueueState, now: datetime) -> dict[str, Any]:
    waiting = None
    if state.oldest_waiting_due is not None:
        waiting = {"id": state.oldest_waiting_id, "due": iso(state.oldest_waiting_due),
                   "age_seconds": round((now - state.oldest_waiting_due).total_seconds(), 3)}
    return {"queue": state.queue, "counts": _counts(state.counts), "total": state.total,
            "oldest_waiting": waiting}


def _counts(counts: Any) -> dict[str, int]:
    return {s.value: counts[s] for s in TaskStatus if s in counts}


def overview_json(overview: Overview) -> dict[str, Any]:
    def series(values: Sequence[Any]) -> list[Any]:
        return list(values)

    return {
        "window": overview.window,
        "bucket_seconds": int(overview.bucket / timedelta(seconds=1)),
        "percentiles_of_one_task_in": overview.sampled,
        "now": iso(overview.now),
        "totals": _counts(overview.totals),
        "queues": [_queue_json(q, overview.now) for q in overview.queues],
        "series": {
            "t": series(overview.buckets),
            "completed": series(overview.completed),
            "retried": series(overview.retried),
            "failed": series(overview.failed),
            "started": series(overview.started),
            "wait_p50": series(overview.wait_p50),
            "wait_p99": series(overview.wait_p99),
            "duration_p50": series(overview.duration_p50),
            "duration_p99": series(overview.duration_p99),
        },
    }
