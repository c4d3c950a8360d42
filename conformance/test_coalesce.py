"""S1 confirmed enqueue under concurrency: calls that share a publish each get their own
results, in order, and every task once; cancelling one caller cancels no other's publish.

(Which calls share a publish, per-call errors and virtual-time checks: tests/test_coalesce.py.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen


async def test_concurrent_calls_each_get_their_own_results_in_order_and_every_task_arrives_once(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    await queue.enqueue(nova.Task("warm", b"", id="warm"))
    singles = [nova.Task("t", b"%d" % i, id=f"single-{i}") for i in range(30)]
    batches = [[nova.Task("t", b"%d" % i, id=f"batch{k}-{i}") for i in range(5)] for k in range(3)]
    calls: list[Any] = [queue.enqueue(t) for t in singles[:15]]
    calls += [queue.enqueue_batch(b) for b in batches]
    calls += [queue.enqueue(t, priority=nova.Priority.HIGH) for t in singles[15:]]
    results = await asyncio.gather(*calls)
    assert [r.id for r in results[:15] + results[18:]] == [t.id for t in singles]
    assert [r.priority for r in results[18:]] == [nova.Priority.HIGH] * 15
    for got, batch in zip(results[15:18], batches, strict=True):
        assert [r.id for r in got] == [t.id for t in batch]
    await queue.start(seen.handler, concurrency=4)
    expected = {"warm"} | {str(t.id) for t in singles} | {str(t.id) for b in batches for t in b}
    await backend.wait_for(lambda: len(seen) >= len(expected))
    assert sorted(str(i) for i in seen.ids) == sorted(expected)  # every task once: none lost, none twice
    by_id = {t.id: t.payload for t in seen.tasks}
    assert all(by_id[t.id] == t.payload for t in singles)


async def test_cancelling_one_caller_does_not_cancel_the_others_publishes(
    backend: Backend, make_queue: QueueFactory, seen: Seen
) -> None:
    queue = make_queue()
    await queue.enqueue(nova.Task("warm", b"", id="warm"))
    calls = [asyncio.create_task(queue.enqueue(nova.Task("t", b"", id=f"c{i}"))) for i in range(20)]
    await asyncio.sleep(0)  # every call has handed its task over; their publish is starting
    cancelled = {0, 7}  # the first (its arrival started the publish) and one in the middle
    for i in cancelled:
        calls[i].cancel()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcomes[i], asyncio.CancelledError) for i in cancelled)
    kept = [f"c{i}" for i in range(20) if i not in cancelled]
    assert [o.id for i, o in enumerate(outcomes) if i not in cancelled] == kept  # type: ignore[union-attr]
    await queue.start(seen.handler, concurrency=4)
    await backend.wait_for(lambda: set(kept) <= set(seen.ids))
    # A cancelled caller's task may still have been stored (its publish had begun): never twice.
    assert len(seen.ids) == len(set(seen.ids))
