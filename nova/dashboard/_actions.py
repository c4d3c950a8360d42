"""The dashboard's two actions: run a failed task again, and delete a task's record.

**Run again** re-enqueues a task whose current status is failed (dead-lettered),
timeout or cancelled, through a :class:`~nova.TaskQueue` on the broker given with
``--broker``:

- same task id, type, payload, priority and user headers, on the queue the task was
  first enqueued to (the queue of its first event), so its record keeps the whole
  story: the earlier run's attempts and error, then the new run;
- plus the header ``rerun`` = how many times it was run again (``"1"``, ``"2"``, ...),
  which the handler sees in ``task.headers`` and the record keeps;
- the new run's QUEUED event is written to the recorder here, right after the broker
  confirmed the task (the dashboard's queue has no recorder of its own, which would
  write a second one): the page shows it at once, and a second click finds the task
  queued, not failed, and does nothing. Its version is the failure's + 1, so every
  step a worker records afterwards outranks it even if the worker's clock is behind
  the dashboard's. The worker records its attempts as usual (attempt 1 again: the
  retry budget starts afresh).

It needs the payload: a recorder made with ``store_payload=True`` keeps it; without
it the action says so and sends nothing. The dead-lettered message itself stays in the
dead-letter queue (``{queue}_dlq``) for whoever consumes that.

**Delete record** forgets a task's record (:meth:`ClickHouseTaskRecorder.delete`); it
does not touch the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nova._clickhouse import ClickHouseTaskRecorder
from nova._errors import NovaError
from nova._queue import TaskQueue
from nova._recording import TaskEvent, TaskStatus
from nova._task import Priority, Task
from nova.dashboard._queries import FAILED_STATUSES

__all__ = ["RERUN_HEADER", "Actions", "Outcome"]

RERUN_HEADER = "rerun"
MAX_SELECTION = 500


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did to one task."""

    task_id: str
    ok: bool
    message: str


class Actions:
    """Run again and delete, one task after another (never two actions at once)."""

    def __init__(self, recorder: ClickHouseTaskRecorder, queue: TaskQueue | None) -> None:
        self.recorder = recorder
        self.queue = queue
        self._lock = asyncio.Lock()

    @property
    def can_rerun(self) -> bool:
        return self.queue is not None

    async def rerun(self, ids: Sequence[str]) -> list[Outcome]:
        """Run these tasks again (see the module docstring); one Outcome per id."""
        ids = _selection(ids)
        async with self._lock:
            return [await self._rerun_one(task_id) for task_id in ids]

    async def delete(self, ids: Sequence[str]) -> list[Outcome]:
        """Delete these tasks' records; one Outcome per id."""
        ids = _selection(ids)
        out = []
        async with self._lock:
            for task_id in ids:
                try:
                    found = await self.recorder.delete(task_id)
                except NovaError as exc:
                    out.append(Outcome(task_id, False, f"not deleted: {exc}"))
                    continue
                out.append(Outcome(task_id, found, "record deleted" if found else "no such task recorded"))
        return out

    async def _rerun_one(self, task_id: str) -> Outcome:
        if self.queue is None:
            return Outcome(task_id, False, "not sent: start the dashboard with --broker URL to run tasks again")
        try:
            record = await self.recorder.get(task_id)
            if record is None:
                return Outcome(task_id, False, "no such task recorded")
            if record.status not in FAILED_STATUSES:
                return Outcome(task_id, False, f"not sent: it is {record.status.value}, not failed")
            if record.payload is None:
                return Outcome(task_id, False, "not sent: its payload was not recorded (a recorder made with "
                                               "store_payload=True keeps payloads)")
            history = await self.recorder.history(task_id)
        except NovaError as exc:
            return Outcome(task_id, False, f"not sent: {exc}")
        queue = history[0].queue if history else record.queue
        headers = dict(record.headers)
        previous = headers.get(RERUN_HEADER, "0")
        headers[RERUN_HEADER] = str(int(previous) + 1 if previous.isdigit() else 1)
        priority = Priority(record.priority) if record.priority in (1, 2, 3) else Priority.NORMAL
        task = Task(record.type, record.payload, headers=headers, id=task_id)
        try:
            result = await self.queue.enqueue(task, queue=queue, priority=priority)
        except (NovaError, ValueError) as exc:
            return Outcome(task_id, False, f"not sent: {exc}")
        # The lowest version after the failure: any step a worker records later, by whatever
        # clock, has a higher one (a version from this host's clock could outrank them).
        event = TaskEvent(
            task_id=task_id, type=record.type, queue=result.queue, priority=int(result.priority),
            status=TaskStatus.QUEUED, at=datetime.fromtimestamp(self.queue.clock.time(), UTC),
            version=record.version + 1, attempt=1, headers=headers, payload=record.payload,
        )
        try:
            await self.recorder.record([event])
        except NovaError as exc:
            return Outcome(task_id, True, f"sent again to {queue!r}, but its QUEUED step was not recorded: {exc}")
        return Outcome(task_id, True, f"sent again to queue {queue!r} (re-run #{headers[RERUN_HEADER]})")


def _selection(ids: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(i for i in ids if i))
    if len(unique) > MAX_SELECTION:
        raise ValueError(f"select at most {MAX_SELECTION} tasks at once")
    return unique
