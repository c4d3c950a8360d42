"""Tasks, results and priorities.

    task = nova.Task("email", b"send email", headers={"tenant": "a"})
    result = await queue.enqueue(task, priority=nova.Priority.HIGH)
    result.id == task.id          # the same id the handler and the recorder see
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from nova._errors import ValidationError, ValidationTypeError

__all__ = ["Priority", "Result", "Task"]

RESERVED_HEADER_PREFIX = "nova-"


class Priority(enum.IntEnum):
    """Task priority; the seed's values."""

    HIGH = 3
    NORMAL = 2
    LOW = 1


@dataclass(slots=True, eq=False)
class Task:
    """A unit of work: a ``type`` naming what to do and opaque ``payload`` bytes.

    You set ``type``, ``payload`` and ``headers`` (and ``id`` if you want your
    own). nova fills the rest when it hands the task to a handler.
    """

    type: str
    payload: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    id: str | None = None
    # Filled in by nova for handlers:
    queue: str = "default"
    priority: Priority = Priority.NORMAL
    attempt: int = 1
    eta: datetime | None = None
    enqueued_at: datetime | None = None
    error: str | None = None  # set on dead-lettered tasks: the last error

    def __repr__(self) -> str:
        priority = self.priority.name if isinstance(self.priority, Priority) else repr(self.priority)
        size = len(self.payload) if isinstance(self.payload, _BYTES_LIKE) else "?"
        error = "" if self.error is None else f", error={self.error!r}"
        return (f"Task(type={self.type!r}, id={self.id!r}, queue={self.queue!r}, priority={priority}, "
                f"attempt={self.attempt}, payload=<{size} bytes>{error})")


class Result(NamedTuple):
    """What ``enqueue`` returns: where the task went and when it is due."""

    id: str
    queue: str
    priority: Priority
    eta: datetime | None  # None: ready now


_new_tuple = tuple.__new__


def new_result(id: str, queue: str, priority: Priority, eta: datetime | None) -> Result:  # noqa: A002
    """``Result(...)`` for the enqueue hot path (without the NamedTuple's Python-level ``__new__``)."""
    return _new_tuple(Result, (id, queue, priority, eta))


_BYTES_LIKE = (bytes, bytearray, memoryview)  # a tuple: isinstance on a union is several times slower


def validate_task(task: object) -> Task:
    """Check what a user may get wrong, with messages that say what to fix."""
    if not isinstance(task, Task):
        raise ValidationTypeError(f"expected a nova.Task, got {type(task).__name__}")
    if not isinstance(task.type, str):
        raise ValidationTypeError(f"Task.type must be a non-empty str, got {type(task.type).__name__}")
    if not task.type:
        raise ValidationError("Task.type must be a non-empty str, got ''")
    if len(task.type) > 255:
        raise ValidationError("Task.type is longer than 255 characters")
    if not isinstance(task.payload, _BYTES_LIKE):
        raise ValidationTypeError(
            f"Task.payload must be bytes, got {type(task.payload).__name__}; "
            "encode it first (e.g. json.dumps(obj).encode())"
        )
    if type(task.headers) is not dict and not isinstance(task.headers, Mapping):
        raise ValidationTypeError(
            f"Task.headers must be a mapping of str to str, got {type(task.headers).__name__}")
    for name, value in task.headers.items() if task.headers else ():
        if not isinstance(name, str):
            raise ValidationTypeError(f"header name {name!r} must be a non-empty str, got {type(name).__name__}")
        if not name:
            raise ValidationError("header name '' must be a non-empty str")
        if name.lower().startswith(RESERVED_HEADER_PREFIX):
            raise ValidationError(f"header {name!r}: names starting with 'nova-' are reserved for nova")
        if not isinstance(value, str):
            raise ValidationTypeError(f"header {name!r} must have a str value, got {type(value).__name__}")
    if task.id is not None:
        if not isinstance(task.id, str):
            raise ValidationTypeError(
                f"Task.id must be a non-empty str of at most 128 characters, or None; got {type(task.id).__name__}")
        if not task.id or len(task.id) > 128:
            raise ValidationError("Task.id must be a non-empty str of at most 128 characters, or None")
    return task


def coerce_priority(priority: object) -> Priority:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValidationTypeError(f"priority must be nova.Priority (HIGH=3, NORMAL=2, LOW=1), got {priority!r}")
    try:
        return Priority(priority)
    except ValueError as exc:
        raise ValidationError(
            f"priority must be 1 (LOW), 2 (NORMAL) or 3 (HIGH), got {priority!r}"
        ) from exc
