"""A scripted run on SimBroker whose records the dashboard tests look at.

What it leaves (queue: status x count):

- ``email``: 4 ``email.send`` completed;
- ``reports``: 2 ``report.build`` completed after one retry each ("report store busy");
- ``default``: 2 ``invoice.create`` and 1 task of the hostile type dead-lettered after
  two attempts (``ValueError``), 1 ``blob.store`` with a binary payload completed, and
  1 ``reminder`` delayed by a day (pending);
- ``idle``: 1 ``audit.export`` that no worker consumes (queued: the oldest waiting task).

The worker keeps running (``Scenario.worker``): setting ``scenario.fixed`` lets a run
again of the invoices and the hostile task succeed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import nova
from nova._clickhouse import ClickHouseTaskRecorder
from nova._recording import TaskStatus
from nova.sim import SimBroker, VirtualClock

HOSTILE = "<script>alert('type')</script>"
HOSTILE_ERROR = "<script>alert('error')</script>"
HOSTILE_HEADER = "<img src=x onerror=alert('header')>"
BINARY = bytes(range(256)) * 2
PREFIX = "dash"

EXPECTED: dict[str, dict[TaskStatus, int]] = {
    "email": {TaskStatus.COMPLETED: 4},
    "reports": {TaskStatus.COMPLETED: 2},
    "default": {TaskStatus.FAILED: 3, TaskStatus.COMPLETED: 1, TaskStatus.PENDING: 1},
    "idle": {TaskStatus.QUEUED: 1},
}


@dataclass
class Scenario:
    ids: dict[str, list[str]] = field(default_factory=dict)  # kind -> task ids
    fixed: set[str] = field(default_factory=set)  # task types whose handler now succeeds
    calls: Counter[str] = field(default_factory=Counter)
    worker: nova.TaskQueue | None = None
    broker: SimBroker | None = None

    def id(self, kind: str, index: int = 0) -> str:
        return self.ids[kind][index]


def options(recorder: ClickHouseTaskRecorder | None) -> dict[str, object]:
    return {"topic_prefix": PREFIX, "recorder": recorder,
            "retry": nova.RetryPolicy(max_retries=1, backoff=nova.ConstantBackoff(timedelta(milliseconds=200)))}


async def run(broker: SimBroker, recorder: ClickHouseTaskRecorder, *, deadline: float = 30.0) -> Scenario:
    """Enqueue the tasks, start the worker, and return once the recorder shows EXPECTED."""
    scenario = Scenario(broker=broker)
    producer = nova.TaskQueue(broker, **options(recorder))  # type: ignore[arg-type]

    async def enqueue(kind: str, tasks: list[nova.Task], **kw: object) -> None:
        results = await producer.enqueue_batch(tasks, **kw)  # type: ignore[arg-type]
        scenario.ids.setdefault(kind, []).extend(r.id for r in results)

    await enqueue("email", [nova.Task("email.send", f"mail {i}".encode(), headers={"tenant": "acme"})
                            for i in range(4)], queue="email")
    await enqueue("report", [nova.Task("report.build", b'{"month": "2030-01"}') for _ in range(2)], queue="reports")
    await enqueue("invoice", [nova.Task("invoice.create", f'{{"invoice": {4711 + i}}}'.encode())
                              for i in range(2)], priority=nova.Priority.HIGH)
    await enqueue("hostile", [nova.Task(HOSTILE, HOSTILE_HEADER.encode(), headers={"note": HOSTILE_HEADER})])
    await enqueue("binary", [nova.Task("blob.store", BINARY)])
    await enqueue("reminder", [nova.Task("reminder", b"tomorrow")], process_in=timedelta(days=1))
    await enqueue("idle", [nova.Task("audit.export", b"")], queue="idle")
    await producer.stop()
    if isinstance(broker.clock, VirtualClock):  # the worker's steps come after the producer's
        await broker.clock.advance(timedelta(milliseconds=1))

    async def handle(task: nova.Task) -> None:
        scenario.calls[task.type] += 1
        if task.type == "report.build" and task.attempt == 1:
            raise RuntimeError("report store busy")
        if task.type == "invoice.create" and task.type not in scenario.fixed:
            raise ValueError(f"invoice {task.payload.decode()} has no lines")
        if task.type == HOSTILE and task.type not in scenario.fixed:
            raise ValueError(HOSTILE_ERROR)

    worker = nova.TaskQueue(broker, **options(recorder))  # type: ignore[arg-type]
    await worker.start(handle, queues=["default", "email", "reports"])
    scenario.worker = worker
    await settle(broker, recorder, EXPECTED, deadline=deadline)
    return scenario


async def settle(broker: SimBroker, recorder: ClickHouseTaskRecorder,
                 expected: dict[str, dict[TaskStatus, int]], *, deadline: float = 30.0) -> None:
    """Until the recorder's counts per queue are ``expected``: advance a virtual clock, or wait on the real one."""
    clock = broker.clock
    give_up = time.monotonic() + deadline
    while True:
        if isinstance(clock, VirtualClock):
            await clock.advance(timedelta(seconds=1))
        else:
            await asyncio.sleep(0.05)
        if await recorder.counts_by_queue() == expected:
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"records never reached {expected}: {await recorder.counts_by_queue()}")
