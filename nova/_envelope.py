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

How headers sit in a broker's message is the adapter's business: RabbitMQ and RocketMQ
keep one property per header; Kafka packs them all into one ``nova`` header (JSON).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime

from nova._codecs import CodecRegistry, MessageCodec, TaskBody
from nova._errors import DecodeError
from nova._task import Priority, Task

__all__ = ["H", "decode_task", "shared_headers", "task_headers"]


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


def ms_ceil(ts: float) -> str:
    """Milliseconds rounded up, for due times: a task is never due early."""
    return str(math.ceil(round(ts * 1000, 3)))


def from_ms(value: str | None) -> datetime | None:
    global _last_from_ms
    if value is None:
        return None
    last = _last_from_ms  # one tuple: safe to read while another thread replaces it
    if value == last[0]:  # tasks enqueued together share it; a datetime costs ~0.5 us
        return last[1]
    at = datetime.fromtimestamp(int(value) / 1000, UTC)
    _last_from_ms = (value, at)
    return at


_last_from_ms: tuple[str | None, datetime | None] = (None, None)  # datetimes are immutable


MAX_ERROR_CHARS = 2000


_PRIORITY_STR = {Priority.HIGH: "3", Priority.NORMAL: "2", Priority.LOW: "1"}
_PRIORITY_OF = {"3": Priority.HIGH, "2": Priority.NORMAL, "1": Priority.LOW}
_ID, _TYPE, _QUEUE, _PRIORITY, _ATTEMPT = H.ID, H.TYPE, H.QUEUE, H.PRIORITY, H.ATTEMPT
_CONTENT_TYPE, _ENQUEUED_AT, _ETA, _HEADERS, _ERROR = H.CONTENT_TYPE, H.ENQUEUED_AT, H.ETA, H.HEADERS, H.ERROR


def shared_headers(
    *, codec: MessageCodec, queue: str, priority: Priority, attempt: int, enqueued_at: float, eta: float | None
) -> dict[str, str]:
    """The headers every task of one enqueue call shares (computed once per batch)."""
    headers = {
        _QUEUE: queue,
        _PRIORITY: _PRIORITY_STR[priority],
        _ATTEMPT: "1" if attempt == 1 else str(attempt),
        _CONTENT_TYPE: codec.content_type,
        _ENQUEUED_AT: str(int(enqueued_at * 1000)),
    }
    if eta is not None:
        headers[_ETA] = ms_ceil(eta)
    return headers


def task_headers(shared: Mapping[str, str], task_id: str, body: TaskBody, codec: MessageCodec) -> dict[str, str]:
    """One task's headers: its id and type, then ``shared``."""
    headers = {_ID: task_id, _TYPE: body.type, **shared}
    if body.headers and not codec.carries_envelope:
        headers[_HEADERS] = json.dumps(dict(body.headers), separators=(",", ":"))
    return headers


def decode_task(registry: CodecRegistry, body: bytes, headers: Mapping[str, str]) -> Task:
    """Rebuild the Task a handler sees. Raises DecodeError for anything malformed."""
    decoded, codec = registry.decode(body, headers.get(_CONTENT_TYPE))
    try:
        raw_priority = headers.get(_PRIORITY, "2")
        priority = _PRIORITY_OF.get(raw_priority) or Priority(int(raw_priority))
        raw_attempt = headers.get(_ATTEMPT, "1")
        attempt = 1 if raw_attempt == "1" else int(raw_attempt)
        user_headers: Mapping[str, str] = decoded.headers
        type_ = decoded.type
        if not codec.carries_envelope:
            type_ = headers[_TYPE]
            raw = headers.get(_HEADERS)
            user_headers = json.loads(raw) if raw else {}
            if not isinstance(user_headers, dict):
                raise ValueError("nova-headers must be a JSON object")
        return Task(
            type_,
            decoded.payload,
            dict(user_headers) if user_headers else {},
            headers[_ID],
            headers.get(_QUEUE, "default"),
            priority,
            attempt,
            from_ms(headers.get(_ETA)),
            from_ms(headers.get(_ENQUEUED_AT)),
            headers.get(_ERROR),
        )
    except (KeyError, ValueError) as exc:
        raise DecodeError(f"malformed nova headers: {exc!r}", body) from exc
