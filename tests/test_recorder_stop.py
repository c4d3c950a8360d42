"""TaskQueue.stop() with a recorder that refuses, hangs or is slow, on a SystemClock and a VirtualClock.

stop() waits for the recorder at most ``recorder_stop_timeout`` of real time (here 0.2 s: the
code's own deadline, not the test waiting for it), then drops what is left, counts it and logs
one line. Nothing here moves a virtual clock while stop() runs: retry pauses must not need it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

import pytest

import nova
from nova._clickhouse import ClickHouseTaskRecorder
from nova._sink import RecordingSink
from nova.sim import SimBroker, VirtualClock

TASKS = 20
EVENTS = TASKS * 3  # QUEUED, PROCESSING, COMPLETED
DEADLINE = timedelta(seconds=0.2)


class RefusingRecorder(nova.MemoryTaskRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def record(self, events: Sequence[nova.TaskEvent]) -> None:
        self.calls += 1
        raise OSError("connection refused")


class HangingRecorder(nova.MemoryTaskRecorder):
    """Never answers (an insert to a server that accepted the connection and went silent)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = 0
        self.called = asyncio.Event()

    async def record(self, events: Sequence[nova.TaskEvent]) -> None:
        self.entered += 1
        self.called.set()
        await asyncio.Event().wait()


class SlowRecorder(nova.MemoryTaskRecorder):
    """Answers after ``seconds`` of real time (its server is slow, whatever the engine's clock)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def record(self, events: Sequence[nova.TaskEvent]) -> None:
        await asyncio.sleep(self.seconds)  # the server's pace, not the test waiting
        await super().record(events)


@pytest.fixture(params=["system", "virtual"])
def clock(request: pytest.FixtureRequest) -> nova.Clock:
    return nova.SystemClock() if request.param == "system" else VirtualClock()


async def _run_tasks(queue: nova.TaskQueue, clock: nova.Clock) -> None:
    """Enqueue TASKS tasks and handle them all (without letting the recorder's flush interval pass)."""
    handled = 0
    done = asyncio.Event()

    async def handle(task: nova.Task) -> None:
        nonlocal handled
        handled += 1
        if handled == TASKS:
            done.set()

    await queue.enqueue_batch([nova.Task("t", b"x") for _ in range(TASKS)])
    await queue.start(handle)
    if isinstance(clock, VirtualClock):
        assert await clock.run_until(done.is_set, within=timedelta(milliseconds=100))
    else:
        async with asyncio.timeout(10):
            await done.wait()


async def _timed_stop(queue: nova.TaskQueue) -> float:
    started = time.monotonic()
    async with asyncio.timeout(10):  # a hang fails the test instead of hanging it
        await queue.stop()
    return time.monotonic() - started


def _drop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nova.recording" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("make", [RefusingRecorder, HangingRecorder, lambda: SlowRecorder(30.0)],
                         ids=["refuses", "hangs", "too-slow"])
async def test_stop_gives_up_on_the_recorder_after_its_stop_timeout(
        clock: nova.Clock, make: type[nova.MemoryTaskRecorder], caplog: pytest.LogCaptureFixture) -> None:
    recorder = make()
    queue = nova.TaskQueue(SimBroker(clock=clock, seed=0), recorder=recorder, recorder_stop_timeout=DEADLINE)
    await _run_tasks(queue, clock)

    took = await _timed_stop(queue)

    assert took < DEADLINE.total_seconds() + 1.0
    stats = queue.recording_stats
    assert (stats["written"], stats["dropped"]) == (0, EVENTS)
    [line] = _drop_lines(caplog)
    assert f"dropped {EVENTS} events" in line
    if isinstance(recorder, RefusingRecorder):
        assert recorder.calls >= 1 and stats["failures"] == recorder.calls
    if isinstance(recorder, HangingRecorder):
        assert recorder.entered == 1


async def test_stop_waits_for_a_slow_recorder_that_answers_in_time(
        clock: nova.Clock, caplog: pytest.LogCaptureFixture) -> None:
    recorder = SlowRecorder(0.02)
    queue = nova.TaskQueue(SimBroker(clock=clock, seed=0), recorder=recorder,
                           recorder_stop_timeout=timedelta(seconds=5))
    await _run_tasks(queue, clock)
    await _timed_stop(queue)
    assert queue.recording_stats == {"written": EVENTS, "dropped": 0, "failures": 0}
    assert await recorder.counts() == {nova.TaskStatus.COMPLETED: TASKS}
    assert _drop_lines(caplog) == []


async def test_a_refusing_recorder_is_retried_in_real_time_while_closing(
        clock: nova.Clock, caplog: pytest.LogCaptureFixture) -> None:
    """With time to spare, close() retries a refusing recorder max_attempts times (nobody moves
    a virtual clock meanwhile), then drops the batch: one error line, not a timeout."""
    recorder = RefusingRecorder()
    sink = RecordingSink(recorder, clock, max_attempts=3, stop_timeout=5.0)
    for i in range(4):
        sink.emit_step(f"r{i}", "t", "default", 2, nova.TaskStatus.QUEUED, 1, None, None, {}, None)
    async with asyncio.timeout(10):
        await sink.close()
    assert recorder.calls == 3
    assert (sink.written, sink.dropped, sink.failures) == (0, 4, 3)
    [line] = _drop_lines(caplog)
    assert "failed 3 times, dropped 4 events" in line


async def test_an_unreachable_clickhouse_server_does_not_hold_stop(
        clock: nova.Clock, caplog: pytest.LogCaptureFixture) -> None:
    """The reported case: nothing listens where the recorder's URL points."""
    recorder = ClickHouseTaskRecorder.from_url("http://127.0.0.1:1/x")
    queue = nova.TaskQueue(SimBroker(clock=clock, seed=0), recorder=recorder, recorder_stop_timeout=DEADLINE)
    await _run_tasks(queue, clock)
    took = await _timed_stop(queue)
    assert took < DEADLINE.total_seconds() + 1.0
    assert queue.recording_stats["written"] == 0
    assert queue.recording_stats["dropped"] == EVENTS
    assert len(_drop_lines(caplog)) == 1
    await recorder.close()


async def test_stop_can_be_cancelled_while_it_waits_for_the_recorder(clock: nova.Clock) -> None:
    recorder = HangingRecorder()
    queue = nova.TaskQueue(SimBroker(clock=clock, seed=0), recorder=recorder,
                           recorder_stop_timeout=timedelta(minutes=5))
    await _run_tasks(queue, clock)
    stopping = asyncio.ensure_future(queue.stop())
    async with asyncio.timeout(10):
        await recorder.called.wait()  # the writer reached the recorder: stop() now waits for it
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping


@pytest.mark.parametrize("value", [5, -1, timedelta(seconds=-1), "5s"])
def test_recorder_stop_timeout_is_checked(value: object) -> None:
    with pytest.raises(nova.ConfigurationError, match="recorder_stop_timeout"):
        nova.TaskQueue(SimBroker(), recorder=nova.MemoryTaskRecorder(),
                       recorder_stop_timeout=value)  # type: ignore[arg-type]
