"""Hypothesis drives the engine on SimBroker: random enqueues (priorities, delays,
queues), clock advances, failing handlers, worker crashes and restarts.

Checked throughout: never early, attempts <= max_retries + 1. Checked at the end,
after every worker is back and time has passed: no task lost (each either
completed or sits in its dead-letter queue).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import nova
from nova.sim import SimBroker, VirtualClock
from tests.fuzzing import FUZZ_SCALE

MAX_RETRIES = 2
QUEUES = ("a", "b")


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = VirtualClock()
        self.broker = SimBroker(clock=self.clock, seed=1, session_timeout=timedelta(seconds=10))
        self.producer = self._queue()
        self.workers: list[nova.TaskQueue | None] = [None, None]
        self.expected: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.completed: set[str] = set()
        self.violations: list[str] = []
        self.dead: dict[str, nova.Task] = {}
        for i in range(2):
            self._start(i)

    def _queue(self) -> nova.TaskQueue:
        return nova.TaskQueue(self.broker, group_id="g", retry=nova.RetryPolicy(
            max_retries=MAX_RETRIES, backoff=nova.ExponentialBackoff(base=timedelta(seconds=2))))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def handle(self, task: nova.Task) -> None:
        assert task.id is not None
        now = self.clock.time()
        spec = self.expected[task.id]
        self.calls[task.id].append((task.attempt, now))
        if now < spec["eta"]:
            self.violations.append(f"{task.id} ran {spec['eta'] - now}s early")
        if task.attempt > MAX_RETRIES + 1:
            self.violations.append(f"{task.id} ran attempt {task.attempt}")
        if spec["work"]:
            await self.clock.sleep(spec["work"])
        if task.attempt <= spec["fails"]:
            raise RuntimeError(f"fail {task.attempt}")
        self.completed.add(task.id)

    async def handle_dead(self, task: nova.Task) -> None:
        assert task.id is not None
        self.dead[task.id] = task

    def _start(self, i: int) -> None:
        q = self._queue()
        self.workers[i] = q
        self.run(q.start(self.handle, queues=list(QUEUES), concurrency=2))

    @rule(priority=st.sampled_from(list(nova.Priority)), delay=st.sampled_from([0, 0, 1.5, 30, 3600, 86400 * 3]),
          queue=st.sampled_from(QUEUES), fails=st.integers(0, 4), work=st.sampled_from([0, 0, 0.5, 20]))
    def enqueue(self, priority: nova.Priority, delay: float, queue: str, fails: int, work: float) -> None:
        result = self.run(self.producer.enqueue(nova.Task("t", b"x"), priority=priority,
                                                process_in=timedelta(seconds=delay), queue=queue))
        eta = result.eta.timestamp() if result.eta else self.clock.time()
        self.expected[result.id] = {"eta": eta, "fails": fails, "work": work, "queue": queue}

    @rule(seconds=st.sampled_from([0, 0.5, 3, 60, 7200]))
    def advance(self, seconds: float) -> None:
        self.run(self.clock.advance(timedelta(seconds=seconds)))

    @precondition(lambda self: any(w is not None for w in self.workers))
    @rule(i=st.integers(0, 1), graceful=st.booleans())
    def stop_worker(self, i: int, graceful: bool) -> None:
        q = self.workers[i]
        if q is not None:
            stop = asyncio.ensure_future(q.stop(graceful=graceful, timeout=timedelta(seconds=30)), loop=self.loop)
            self.run(self.clock.run_until(stop.done, within=timedelta(minutes=1)))
            self.run(stop)
            self.workers[i] = None

    @precondition(lambda self: any(w is not None for w in self.workers))
    @rule(i=st.integers(0, 1))
    def crash_worker(self, i: int) -> None:
        q = self.workers[i]
        if q is not None and q.worker is not None and q.worker.sub is not None:
            sub = q.worker.sub

            async def crash() -> None:
                self.broker.crash(sub)  # type: ignore[arg-type]
                # The process is gone: its handlers die with it (nothing acked).
                await q.stop(graceful=False)

            self.run(crash())
            self.workers[i] = None

    @rule(i=st.integers(0, 1))
    def restart_worker(self, i: int) -> None:
        if self.workers[i] is None:
            self._start(i)

    @invariant()
    def never_early_and_bounded_attempts(self) -> None:
        assert self.violations == []

    def teardown(self) -> None:
        try:
            for i in range(2):
                if self.workers[i] is None:
                    self._start(i)
            dead_reader = self._queue()
            self.run(dead_reader.start(self.handle_dead, queues=[nova.dead_letter_queue(q) for q in QUEUES]))
            self.run(self.clock.advance(timedelta(days=4)))
            assert self.violations == []
            for task_id, spec in self.expected.items():
                attempts = [a for a, _ in self.calls[task_id]]
                if spec["fails"] > MAX_RETRIES:
                    assert task_id in self.dead, f"{task_id} neither completed nor dead-lettered"
                    assert self.dead[task_id].attempt == MAX_RETRIES + 1
                    assert task_id not in self.completed
                else:
                    assert task_id in self.completed, f"{task_id} lost: attempts {attempts}"
                assert max(attempts) <= MAX_RETRIES + 1
            for q in [*self.workers, dead_reader, self.producer]:
                if q is not None:
                    self.run(q.stop(graceful=False))
            self.run(self.broker.close())
        finally:
            self.loop.close()


EngineMachine.TestCase.settings = settings(max_examples=40 * FUZZ_SCALE, stateful_step_count=25, deadline=None)
TestEngine = EngineMachine.TestCase
