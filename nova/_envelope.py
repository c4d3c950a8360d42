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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from nova._codecs import CodecRegistry, MessageCodec, parts_decoder
from nova._errors import DecodeError
from nova._task import Priority, Task

__all__ = [
    "H", "Envelope", "TaskDecoder", "build_task", "decode_task", "read_envelope", "shared_headers", "task_headers",
]


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


def task_headers(shared: Mapping[str, str], task_id: str, type_: str, user_headers: Mapping[str, str],
                 codec: MessageCodec) -> dict[str, str]:
    """One task's headers: its id and type, then ``shared``."""
    headers = {_ID: task_id, _TYPE: type_, **shared}
    if user_headers and not codec.carries_envelope:
        headers[_HEADERS] = json.dumps(dict(user_headers), separators=(",", ":"))
    return headers


class Envelope(NamedTuple):
    """What a task's headers say but its id: the same for every task of one enqueue call,
    so a consumer reads it once per run of such tasks (see ``read_envelope``)."""

    codec: MessageCodec
    parts: Callable[[bytes], tuple[str, bytes, Mapping[str, str]]]  # the codec's decode, see DecodeParts
    queue: str
    priority: Priority
    attempt: int
    eta: datetime | None
    enqueued_at: datetime | None
    error: str | None
    type: str | None  # codecs without an envelope (Blob): type and user headers ride here
    headers: Mapping[str, str] | None


_new_envelope = tuple.__new__  # Envelope(*fields) without its Python-level __new__ (~0.15 us)


def read_envelope(registry: CodecRegistry, headers: Mapping[str, str], body: bytes) -> Envelope:
    """The envelope of ``headers`` (``nova-id`` is not read). Raises DecodeError (with
    ``body``) for anything malformed."""
    codec = registry.codec(headers.get(_CONTENT_TYPE), body)
    try:
        raw_priority = headers.get(_PRIORITY, "2")
        priority = _PRIORITY_OF.get(raw_priority) or Priority(int(raw_priority))
        raw_attempt = headers.get(_ATTEMPT, "1")
        attempt = 1 if raw_attempt == "1" else int(raw_attempt)
        type_ = user_headers = None
        if not codec.carries_envelope:
            type_ = headers[_TYPE]
            raw = headers.get(_HEADERS)
            user_headers = json.loads(raw) if raw else {}
            if not isinstance(user_headers, dict):
                raise ValueError("nova-headers must be a JSON object")
        fields = (codec, parts_decoder(codec), headers.get(_QUEUE, "default"), priority, attempt,
                  from_ms(headers.get(_ETA)), from_ms(headers.get(_ENQUEUED_AT)), headers.get(_ERROR), type_,
                  user_headers)
        return _new_envelope(Envelope, fields)
    except (KeyError, ValueError) as exc:
        raise DecodeError(f"malformed nova headers: {exc!r}", body) from exc


def build_task(envelope: Envelope, body: bytes, task_id: str) -> Task:
    """The Task a handler sees: ``body`` decoded by the envelope's codec. Raises DecodeError."""
    codec, parts, queue, priority, attempt, eta, enqueued_at, error, type_, user_headers = envelope
    try:
        decoded_type, payload, decoded_headers = parts(body)
    except Exception as exc:
        raise DecodeError(f"cannot decode a {codec.content_type} task: {exc}", body) from exc
    if type_ is None:  # the codec carries type and headers
        type_, user_headers = decoded_type, decoded_headers
    return Task(type_, payload, dict(user_headers) if user_headers else {}, task_id, queue, priority, attempt, eta,
                enqueued_at, error)


def decode_task(registry: CodecRegistry, body: bytes, headers: Mapping[str, str]) -> Task:
    """Rebuild the Task a handler sees. Raises DecodeError for anything malformed."""
    task_id = headers.get(_ID)
    if task_id is None:
        raise DecodeError("malformed nova headers: no 'nova-id'", body)
    return build_task(read_envelope(registry, headers, body), body, task_id)


class TaskDecoder:
    """``decode_task`` for a consumer's stream of deliveries, reading each run's envelope once.

    The tasks of one enqueue call have the same headers but their id. A delivery whose
    headers equal the previous envelope's (compared as dicts, with its own id put in)
    reuses that envelope: one dict comparison instead of parsing every header again.
    """

    __slots__ = ("_envelope", "_probe", "_registry", "_run", "_run_envelope")

    def __init__(self, registry: CodecRegistry) -> None:
        self._registry = registry
        self._probe: dict[str, str] | None = None  # the headers the envelope was read from
        self._envelope: Envelope | None = None
        self._run: Mapping[str, str] | None = None  # decode_run's headers, and their envelope
        self._run_envelope: Envelope | None = None

    def decode(self, body: bytes, headers: Mapping[str, str]) -> Task:
        task_id = headers.get(_ID)
        if task_id is None:
            raise DecodeError("malformed nova headers: no 'nova-id'", body)
        probe, envelope = self._probe, self._envelope
        if probe is not None and envelope is not None:
            probe[_ID] = task_id
            if headers == probe:
                return build_task(envelope, body, task_id)
        envelope = read_envelope(self._registry, headers, body)
        self._probe, self._envelope = dict(headers), envelope
        return build_task(envelope, body, task_id)

    def decode_run(self, body: bytes, headers: Mapping[str, str], task_id: str) -> Task:
        """``decode`` for a delivery of a run (see nova._broker.HeaderRuns): ``headers`` are
        the same object for the whole run, and ``task_id`` this delivery's id."""
        envelope = self._run_envelope
        if headers is not self._run or envelope is None:
            envelope = read_envelope(self._registry, headers, body)
            self._run, self._run_envelope = headers, envelope
        return build_task(envelope, body, task_id)
