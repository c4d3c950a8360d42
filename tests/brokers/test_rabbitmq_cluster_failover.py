"""nova on a three-node RabbitMQ cluster with quorum queues: the node the client is
connected to stops (or is killed) mid-stream, and nothing is lost.

Runs when the harness's cluster variables are present, and is skipped otherwise (a
single node cannot lose a node; tests/brokers/test_rabbitmq_failover.py shows the
failover there, through proxies):

    python tools/brokers.py up rabbitmq --nodes 3
    eval "$(python tools/brokers.py env rabbitmq --nodes 3)"
    pytest tests/brokers/test_rabbitmq_cluster_failover.py --broker rabbitmq

It stops and starts node 1 with the harness (``stop-node``/``start-node``). Waits are
conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import nova
from tests.brokers._rabbitmq_queues import Queues, made_queues

ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 120.0  # a stopped node's leaderships move within seconds; a loaded box needs slack

_URLS = [u for u in os.environ.get("NOVA_RABBITMQ_URLS", "").split(",") if u]
pytestmark = [
    pytest.mark.broker("rabbitmq"),
    pytest.mark.skipif(
        len(_URLS) < 3 or int(os.environ.get("NOVA_RABBITMQ_NODES", "0") or 0) < 3,
        reason="needs a RabbitMQ cluster of 3 nodes: `python tools/brokers.py up rabbitmq --nodes 3` and "
        '`eval "$(python tools/brokers.py env rabbitmq --nodes 3)"`',
    ),
]


async def _harness(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tools" / "brokers.py"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, f"brokers.py {' '.join(args)} failed ({process.returncode}):\n{err.decode()}"


async def _eventually(predicate: Callable[[], bool], what: str, within: float = PATIENCE) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.05)  # polling what the test's tasks saw


@pytest.fixture
async def queues() -> AsyncIterator[Queues]:
    # node 2 is never stopped here: the test's own client deletes the queues through it
    async with made_queues(_URLS[0], admin_url=_URLS[1]) as made:
        yield made


def _node(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_the_clients_node_stops_mid_stream_and_nothing_is_lost(queues: Queues, how: str) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    slots = (6, timedelta(seconds=4))
    producer_broker = queues.broker(_URLS, queue_type="quorum")
    worker_broker = queues.broker(_URLS, queue_type="quorum")
    producer = nova.TaskQueue(producer_broker, topic_prefix=prefix, delay_slots=slots)
    worker = nova.TaskQueue(worker_broker, topic_prefix=prefix, delay_slots=slots)
    handled: dict[str, list[float]] = {}
    enqueued: dict[str, float] = {}  # task id -> due time (its enqueue time if not delayed)

    async def handle(task: nova.Task) -> None:
        handled.setdefault(task.id or "", []).append(time.time())

    async def produce() -> None:
        n = 0
        while True:
            delay = (n % 5) + 1.0 if n % 3 == 0 else None
            due = time.time() + (delay or 0)
            result = await producer.enqueue(nova.Task("t", b"%d" % n), process_in=delay,
                                            priority=list(nova.Priority)[n % 3])  # waits out the failover
            enqueued[result.id] = due
            n += 1
            await asyncio.sleep(0.01)  # pacing: the box is shared

    first = _node(_URLS[0])
    stopped = False
    producing = None
    try:
        await worker.start(handle, concurrency=16)
        producing = asyncio.create_task(produce())
        await _eventually(lambda: len(handled) >= 50, "the worker handles the first 50 tasks")
        assert producer_broker.current_node == worker_broker.current_node == first
        await _harness("stop-node", "rabbitmq", "1", *(["--kill"] if how == "kill" else []))
        stopped = True
        mark = len(enqueued)
        await _eventually(lambda: len(enqueued) >= mark + 100, "enqueueing goes on through another node")
        await _eventually(lambda: len(handled) >= mark + 50, "the worker goes on through another node")
        assert first not in (producer_broker.current_node, worker_broker.current_node)
        producing.cancel()
        await asyncio.gather(producing, return_exceptions=True)
        await _eventually(lambda: enqueued.keys() <= handled.keys(),
                          f"every enqueued task handled ({len(enqueued.keys() - handled.keys())} missing)")
    finally:
        if producing is not None:
            producing.cancel()
            await asyncio.gather(producing, return_exceptions=True)
        await worker.stop()
        await producer.stop()
        if stopped:
            await _harness("start-node", "rabbitmq", "1")
    early = {i: enqueued[i] - times[0] for i, times in handled.items()
             if i in enqueued and times[0] < enqueued[i] - 0.001}
    assert not early, f"{len(early)} delayed tasks handled early: {list(early.values())[:5]}"
    duplicates = sum(len(times) - 1 for times in handled.values())
    print(f"{how} node 1: {len(enqueued)} enqueued, all handled, {duplicates} handled twice "
          "(delivered before the loss, not yet acked)")
