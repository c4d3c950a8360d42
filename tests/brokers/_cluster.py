"""What the cluster tests share: the cluster variables, the harness's node verbs, a TaskQueue stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import nova

ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 120.0  # a stopped node's leaderships move within seconds; a loaded box needs slack


def require_cluster(broker: str, variables: tuple[str, ...], *, nodes: int = 3) -> dict[str, str]:
    """The cluster's ``NOVA_*`` variables; missing ones (or a single node's) FAIL the test."""
    nodes_var = f"NOVA_{broker.upper()}_NODES"
    missing = [v for v in (nodes_var, *variables) if not os.environ.get(v)]
    if missing or int(os.environ[nodes_var]) < nodes:
        pytest.fail(
            f"--cluster needs a {broker} cluster's variables ({', '.join(missing) or f'{nodes_var} >= {nodes}'}): "
            f"run `python tools/brokers.py up {broker} --nodes {nodes}` and "
            f'`eval "$(python tools/brokers.py env {broker} --nodes {nodes})"` first',
            pytrace=False,
        )
    return {v: os.environ[v] for v in (nodes_var, *variables)}


async def harness(*args: str) -> str:
    """Run ``python tools/brokers.py ARGS`` (stop-node, start-node, leader); its stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tools" / "brokers.py"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, f"brokers.py {' '.join(args)} failed ({process.returncode}):\n{err.decode()}"
    return out.decode().strip()


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, within: float = PATIENCE
) -> None:
    """Wait until ``predicate()`` (or what it returns, awaited) holds; fail with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.05)


class Stream:
    """A producer enqueueing batches of tasks (retrying refused ones) and a worker consuming them,
    through ``nova.TaskQueue``."""

    def __init__(self, make_broker: Callable[[], nova.Broker]) -> None:
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self.topic = f"{self.prefix}_default_normal"
        # Two brokers, two queues: the producer and the worker share nothing but the cluster.
        self.producer = nova.TaskQueue(make_broker(), group_id="g", topic_prefix=self.prefix, close_broker=True)
        self.worker = nova.TaskQueue(make_broker(), group_id="g", topic_prefix=self.prefix, close_broker=True)
        self.confirmed: set[str] = set()
        self.handled: Counter[str] = Counter()
        self.refused = 0  # enqueue_batch calls that raised EnqueueError (retried by the loop)
        self.longest_wait = 0.0  # seconds, the slowest enqueue_batch call (a failover shows here)
        self._task: asyncio.Task[None] | None = None

    async def handle(self, task: nova.Task) -> None:
        assert task.id is not None
        self.handled[task.id] += 1

    async def start(self) -> None:
        await self.worker.start(self.handle)
        self._task = asyncio.create_task(self._produce())

    async def _produce(self) -> None:
        n = 0
        while True:
            tasks = [nova.Task("job", f"{n + i}".encode()) for i in range(10)]
            began = time.monotonic()
            try:
                results = await self.producer.enqueue_batch(tasks)
            except nova.EnqueueError:
                self.refused += 1  # not confirmed: not counted as enqueued; the loop goes on
            else:
                self.confirmed.update(r.id for r in results)
                n += len(tasks)
            finally:
                self.longest_wait = max(self.longest_wait, time.monotonic() - began)
            await asyncio.sleep(0.05)  # pacing (at most ~200 tasks/s): the box is shared

    def lost(self) -> set[str]:
        return self.confirmed - self.handled.keys()

    async def stop_producing(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def close(self) -> None:
        await self.stop_producing()
        await self.worker.stop()
        await self.producer.stop()
