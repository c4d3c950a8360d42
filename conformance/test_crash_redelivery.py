"""S3 under a crash: a worker process killed mid-task (``kill -9``) has its task handled by
another worker within a bound, by default, on every real broker.

The doomed worker is another process (tests/crash_worker.py) whose handler holds the
task until SIGKILL; the survivor runs here. How each broker notices the death:
RabbitMQ, the connection's loss (at once); Kafka, the member's session timeout (30 s)
and then a rebalance; RocketMQ, the end of the received message's invisible time.
On SimBroker the same story is told with the virtual clock by
``test_s3_crashed_worker_tasks_come_back_after_the_session_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen

ROOT = Path(__file__).resolve().parents[1]

#: How long a killed worker's task may take to reach another worker.
BOUND = timedelta(seconds=60)


def redelivery_bound(backend: Backend, broker: Any) -> timedelta:
    """``BOUND`` on every broker: RabbitMQ returns a dead connection's deliveries at once,
    Kafka after the member's session timeout and a rebalance, RocketMQ when the short
    invisible time of its receive (30 s, extended only while the worker lives) runs out."""
    return BOUND


class WorkerProcess:
    """tests/crash_worker.py, running; its events as they come."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.process = process
        self.stderr = stderr

    @classmethod
    async def start(cls, backend: Backend, prefix: str, group: str, stderr: Path) -> WorkerProcess:
        with stderr.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.crash_worker",
                "--broker", backend.name, "--prefix", prefix, "--group", group,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=errors,
            )  # fmt: skip
        return cls(process, stderr)

    async def next_event(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            raise AssertionError(f"the worker process said nothing for {within:.0f} s; {self._tail()}") from None
        if not line:
            await self.process.wait()
            raise AssertionError(f"the worker process exited ({self.process.returncode}); {self._tail()}")
        event: dict[str, Any] = json.loads(line)
        return event

    def _tail(self) -> str:
        return "its stderr ends with:\n" + "\n".join(self.stderr.read_text(errors="replace").splitlines()[-30:])

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


async def test_s3_a_killed_workers_task_reaches_another_worker_within_the_bound(
    backend: Backend, make_queue: QueueFactory, seen: Seen, prefix: str, tmp_path: Path
) -> None:
    if backend.is_sim:
        pytest.skip("needs a real broker: the worker runs in another process "
                    "(on SimBroker: test_s3_crashed_worker_tasks_come_back_after_the_session_timeout)")
    producer = make_queue()
    bound = redelivery_bound(backend, producer.broker)
    doomed = await WorkerProcess.start(backend, prefix, "g", tmp_path / "worker.stderr")
    try:
        assert await doomed.next_event(within=backend.patience.total_seconds()) == {"ready": True}
        result = await producer.enqueue(nova.Task("crash", b"held when killed"))
        assert await doomed.next_event(within=backend.patience.total_seconds()) == {"holding": result.id}
        survivor = make_queue()
        await survivor.start(seen.handler)
        assert len(seen) == 0, "the survivor got the task while its holder was alive"
        killed = time.monotonic()
        await doomed.kill()
        assert doomed.process.returncode == -signal.SIGKILL
        await backend.wait_for(lambda: len(seen) >= 1, within=bound)
        took = time.monotonic() - killed
    finally:
        with contextlib.suppress(ProcessLookupError):
            await doomed.kill()
    assert seen.ids[0] == result.id
    assert took <= bound.total_seconds()
    print(f"{backend.name}: the killed worker's task reached another worker {took:.2f} s after SIGKILL "
          f"(bound {bound.total_seconds():.0f} s)")
