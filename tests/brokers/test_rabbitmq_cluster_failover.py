"""nova on a three-node RabbitMQ cluster with quorum queues: the node the client is
connected to stops (or is killed) mid-stream, and nothing is lost.

While node 1 is down, enqueueing and handling go on through the other nodes; once it
is back every task has been handled, delayed ones included (see ``DRAIN``), none early.

Runs with ``--cluster`` (``nox -s cluster -- --broker rabbitmq`` brings the cluster up and
down around it); a single node cannot lose a node (tests/brokers/test_rabbitmq_failover.py
shows the failover there, through proxies):

    python tools/brokers.py up rabbitmq --nodes 3
    eval "$(python tools/brokers.py env rabbitmq --nodes 3)"
    pytest tests/brokers/test_rabbitmq_cluster_failover.py --broker rabbitmq --cluster

It stops and starts node 1 with the harness (``stop-node``/``start-node``), and first gives
every node the short dead-letter resend a cluster running nova's quorum delay tiers should
have (``DLX_CONFIRM_TIMEOUT_MS``). Waits are conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from urllib.parse import urlsplit

import pytest

import nova
from tests.brokers._cluster import eventually, harness
from tests.brokers._rabbitmq_queues import Queues, made_queues

#: RabbitMQ 3.10's at-least-once dead-letter worker of a delay tier can stall when the leader
#: it was dead-lettering to dies: it resends what was not confirmed after
#: ``dead_letter_worker_publisher_confirm_timeout`` (3 min by default; seen: a few hundred
#: delayed tasks 3 min late, and 31 per tier 6 min late). Late, never lost. A cluster running
#: nova's quorum delay tiers wants it short, in advanced.config:
#: ``[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 10000}]}].`` (see ``short_dlx_resend``).
DLX_CONFIRM_TIMEOUT_MS = 10_000

_URLS = [u for u in os.environ.get("NOVA_RABBITMQ_URLS", "").split(",") if u]
pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.cluster]


@pytest.fixture
async def queues() -> AsyncIterator[Queues]:
    # node 2 is never stopped here: the test's own client deletes the queues through it
    async with made_queues(_URLS[0], admin_url=_URLS[1]) as made:
        yield made


def _short_dlx_resend(node: int) -> None:
    """What advanced.config would set, on a running node of the harness (``rabbit-N@localhost``)."""
    import subprocess

    setting = f"application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, {DLX_CONFIRM_TIMEOUT_MS})."
    subprocess.run(["rabbitmqctl", "-q", "-n", f"rabbit-{node}@localhost", "eval", setting],
                   check=True, capture_output=True, timeout=60)


@pytest.fixture
def short_dlx_resend() -> Callable[[int], None]:
    for node in range(1, int(os.environ["NOVA_RABBITMQ_NODES"]) + 1):
        _short_dlx_resend(node)
    return _short_dlx_resend


def _node(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_the_clients_node_stops_mid_stream_and_nothing_is_lost(
    queues: Queues, how: str, short_dlx_resend: Callable[[int], None]
) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    slots = (6, timedelta(seconds=4))
    producer_broker = queues.broker(_URLS, queue_type="quorum")
    worker_broker = queues.broker(_URLS, queue_type="quorum")
    producer = nova.TaskQueue(producer_broker, topic_prefix=prefix, delay_slots=slots)
    worker = nova.TaskQueue(worker_broker, topic_prefix=prefix, delay_slots=slots)
    handled: dict[str, list[float]] = {}
    enqueued: dict[str, float] = {}  # task id -> due time (its enqueue time if not delayed)
    delayed: set[str] = set()

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
            if delay:
                delayed.add(result.id)
            n += 1
            await asyncio.sleep(0.01)  # pacing: the box is shared

    def missing(ids: set[str]) -> str:
        lost = ids - handled.keys()
        return f"{len(lost)} missing, {len(lost & delayed)} of them delayed"

    first = _node(_URLS[0])
    down = False
    producing = None
    try:
        await worker.start(handle, concurrency=16)
        producing = asyncio.create_task(produce())
        await eventually(lambda: len(handled) >= 50, "the worker handles the first 50 tasks")
        assert producer_broker.current_node == worker_broker.current_node == first
        await harness("stop-node", "rabbitmq", "1", *(["--kill"] if how == "kill" else []))
        down = True
        mark = len(enqueued)
        await eventually(lambda: len(enqueued) >= mark + 100, "enqueueing goes on through another node")
        assert first not in (producer_broker.current_node, worker_broker.current_node)
        immediate = set(enqueued) - delayed
        await eventually(lambda: immediate <= handled.keys(),
                          f"the worker goes on through another node ({missing(immediate)})")
        producing.cancel()
        await asyncio.gather(producing, return_exceptions=True)
        await harness("start-node", "rabbitmq", "1")
        down = False
        short_dlx_resend(1)
        restarted = time.monotonic()
        await eventually(lambda: enqueued.keys() <= handled.keys(),
                          f"every enqueued task handled ({missing(set(enqueued))})")
        drained = time.monotonic() - restarted
    finally:
        if producing is not None:
            producing.cancel()
            await asyncio.gather(producing, return_exceptions=True)
        await worker.stop()
        await producer.stop()
        if down:
            await harness("start-node", "rabbitmq", "1")
    early = {i: enqueued[i] - times[0] for i, times in handled.items()
             if i in enqueued and times[0] < enqueued[i] - 0.001}
    assert not early, f"{len(early)} delayed tasks handled early: {list(early.values())[:5]}"
    late = sorted(handled[i][0] - enqueued[i] for i in delayed)
    duplicates = sum(len(times) - 1 for times in handled.values())
    print(f"{how} node 1: {len(enqueued)} enqueued ({len(delayed)} delayed), every one handled, the last "
          f"{drained:.0f} s after node 1 was back; delayed tasks late by up to {late[-1]:.1f} s "
          f"(median {late[len(late) // 2]:.1f} s); {duplicates} handled twice")
