"""How a task travels: body from the codec, nova's metadata in ``nova-*`` headers.

    nova-id            task id (also the record key)
    nova-type          task type (always; Blob bodies carry no type)
    nova-queue         nova queue name
    nova-priority      1, 2 or 3
    nova-attempt       1 for the first run, +1 per retry
    nova-content-type  the codec that encoded the body
    nova-enqueued-at   epoch milliseconds of the first enqueue
    nova-eta           epoch milliseconds the task is due (absent: ready now)
    nova-target        ready topic a delayed task goes to (on delay tiers)
    nova-hold-until    epoch seconds a delay-tier message is held until
    nova-headers       the user's headers as JSON (only for codecs without an envelope)
    nova-error         the last error (retries and dead letters)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime

from nova._codecs import CodecRegistry, MessageCodec, TaskBody
from nova._errors import DecodeError
from nova._task import Priority, Task

__all__ = ["H", "decode_task", "encode_headers"]


class H:
    """Header names."""

    ID = "nova-id"
    TYPE = "nova-type"
    QUEUE = "nova-queue"
    PRIORITY = "nova-priority"
    ATTEMPT = "nova-attempt"
    CONTENT_TYPE = "nova-content-type"
    ENQUEUED_AT = "nova-enqueued-at"
    ETA = "nova-eta"
    TARGET = "nova-target"
    HOLD_UNTIL = "nova-hold-until"
    HEADERS = "nova-headers"
    ERROR = "nova-error"


def ms(ts: float) -> str:
    return str(round(ts * 1000))


def ms_ceil(ts: float) -> str:
    """Milliseconds rounded up, for due times: a task is never due early."""
    return str(math.ceil(round(ts * 1000, 3)))


def from_ms(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value) / 1000, UTC)


MAX_ERROR_CHARS = 2000


def encode_headers(
    *,
    task_id: str,
    body: TaskBody,
    codec: MessageCodec,
    queue: str,
    priority: Priority,
    attempt: int,
    enqueued_at: float,
    eta: float | None,
    error: str | None = None,
) -> dict[str, str]:
    headers = {
        H.ID: task_id,
        H.TYPE: body.type,
        H.QUEUE: queue,
        H.PRIORITY: str(int(priority)),
        H.ATTEMPT: str(attempt),
        H.CONTENT_TYPE: codec.content_type,
        H.ENQUEUED_AT: ms(enqueued_at),
    }
    if eta is not None:
        headers[H.ETA] = ms_ceil(eta)
    if not codec.carries_envelope and body.headers:
        headers[H.HEADERS] = json.dumps(dict(body.headers), separators=(",", ":"))
    if error is not None:
        headers[H.ERROR] = error[:MAX_ERROR_CHARS]
    return headers


def decode_task(registry: CodecRegistry, body: bytes, headers: Mapping[str, str]) -> Task:
    """Rebuild the Task a handler sees. Raises DecodeError for anything malformed."""
    decoded, codec = registry.decode(body, headers.get(H.CONTENT_TYPE))
    try:
        task_id = headers[H.ID]
        queue = headers.get(H.QUEUE, "default")
        priority = Priority(int(headers.get(H.PRIORITY, "2")))
        attempt = int(headers.get(H.ATTEMPT, "1"))
        user_headers: Mapping[str, str] = decoded.headers
        type_ = decoded.type
        if not codec.carries_envelope:
            type_ = headers[H.TYPE]
            raw = headers.get(H.HEADERS)
            user_headers = json.loads(raw) if raw else {}
            if not isinstance(user_headers, dict):
                raise ValueError("nova-headers must be a JSON object")
        return Task(
            type=type_,
            payload=decoded.payload,
            headers=dict(user_headers),
            id=task_id,
            queue=queue,
            priority=priority,
            attempt=attempt,
            eta=from_ms(headers.get(H.ETA)),
            enqueued_at=from_ms(headers.get(H.ENQUEUED_AT)),
            error=headers.get(H.ERROR),
        )
    except (KeyError, ValueError) as exc:
        raise DecodeError(f"malformed nova headers: {exc!r}", body) from exc
