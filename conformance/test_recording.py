"""S16 recording: automatic lifecycle records; a bad recorder never hurts tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen

S = nova.TaskStatus


async def test_s16_lifecycle_is_recorded(backend: Backend, make_queue: QueueFactory, seen: Seen) -> None:
    recorder = nova.MemoryTaskRecorder()
    queue = make_queue(recorder=recorder)
    result = await queue.enqueue(nova.Task("t", b"x", headers={"k": "v"}))
    await queue.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 1)
    await queue.stop()
    statuses = [e.status for e in await recorder.history(result.id)]
    assert statuses == [S.QUEUED, S.PROCESSING, S.COMPLETED]
    record = await recorder.get(result.id)
    assert record is not None
    assert (record.task_id, record.type, record.queue, record.priority) == (result.id, "t", "default", 2)
    assert record.started_at is not None and record.completed_at is not None
    assert record.created_at <= record.started_at <= record.completed_at


class FailingRecorder(nova.MemoryTaskRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def record(self, events: Sequence[nova.TaskEvent]) -> None:
        self.calls += 1
        raise OSError("recorder down")


class StuckRecorder(nova.MemoryTaskRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def record(self, events: Sequence[nova.TaskEvent]) -> None:
        await self.gate.wait()
        await super().record(events)


async def test_s16_failing_recorder_never_fails_a_task(backend: Backend, make_queue: QueueFactory,
                                                       seen: Seen) -> None:
    recorder = FailingRecorder()
    queue = make_queue(recorder=recorder)
    await queue.enqueue_batch([nova.Task("t", b"") for _ in range(5)])
    await queue.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 5)
    stop = asyncio.ensure_future(queue.stop())
    await backend.wait_for(stop.done)
    assert recorder.calls >= 1
    assert queue.recording_stats["dropped"] > 0 and queue.recording_stats["written"] == 0


async def test_s16_stuck_recorder_never_blocks_a_task(backend: Backend, make_queue: QueueFactory,
                                                      seen: Seen) -> None:
    recorder = StuckRecorder()
    queue = make_queue(recorder=recorder)
    results = await queue.enqueue_batch([nova.Task("t", b"") for _ in range(5)])
    await queue.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 5)  # tasks flow while the recorder hangs
    recorder.gate.set()
    await queue.stop()
    record = await recorder.get(results[0].id)
    assert record is not None and record.status is S.COMPLETED  # and nothing was lost meanwhile
