"""nova on a three-node Kafka cluster while nodes fail (``--broker kafka --cluster``).

    python tools/brokers.py up kafka --nodes 3
    eval "$(python tools/brokers.py env kafka --nodes 3)"
    pytest tests/brokers/test_kafka_cluster.py --broker kafka --cluster

The node leading the ready topic's partition is stopped while a producer enqueues
through ``nova.TaskQueue`` and a worker consumes: every confirmed task must still
reach the worker, both go on against the other two nodes, and the stopped node,
started again, rejoins the partition's in-sync replicas. Waits are conditions with
deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter

import aiokafka.admin as aiokafka_admin  # type: ignore[import-untyped]
import pytest

import nova
from nova._kafka import KafkaBroker
from tests.brokers._cluster import eventually, harness, require_cluster

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.cluster]


@pytest.fixture
def bootstrap() -> str:
    return require_cluster("kafka", ("NOVA_KAFKA_BOOTSTRAP",))["NOVA_KAFKA_BOOTSTRAP"]


async def describe(bootstrap: str, topic: str) -> dict[str, object]:
    """Partition 0 of ``topic`` as the cluster sees it: leader, replicas, isr."""
    admin = aiokafka_admin.AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        (entry,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    (partition,) = [p for p in entry["partitions"] if p["partition"] == 0]
    return dict(partition)


class Stream:
    """A producer enqueueing batches of tasks without pause and a worker consuming them."""

    def __init__(self, bootstrap: str) -> None:
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self.topic = f"{self.prefix}_default_normal"
        # Two brokers, two queues: the producer and the worker share nothing but the cluster.
        self.producer = nova.TaskQueue(KafkaBroker(bootstrap), group_id="g", topic_prefix=self.prefix,
                                       close_broker=True)
        self.worker = nova.TaskQueue(KafkaBroker(bootstrap), group_id="g", topic_prefix=self.prefix,
                                     close_broker=True)
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
                continue
            finally:
                self.longest_wait = max(self.longest_wait, time.monotonic() - began)
            self.confirmed.update(r.id for r in results)
            n += len(tasks)
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


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_stopping_the_partition_leader_mid_stream_loses_nothing(bootstrap: str, how: str) -> None:
    stream = Stream(bootstrap)
    try:
        await stream.start()
        await eventually(lambda: len(stream.handled) >= 200, "the worker handles the first 200 tasks")
        before = await describe(bootstrap, stream.topic)
        assert sorted(before["replicas"]) == [1, 2, 3], "nova's topic should have the cluster's 3 replicas"  # type: ignore[call-overload]
        leader = int(await harness("leader", "kafka", stream.topic, "0"))
        assert leader == before["leader"]

        await harness("stop-node", "kafka", str(leader), *(["--kill"] if how == "kill" else []))
        try:
            mark = len(stream.confirmed)
            await eventually(lambda: len(stream.confirmed) >= mark + 300,
                             "the producer goes on enqueueing on the other nodes")
            await eventually(lambda: not stream.lost(), "the worker handles every confirmed task")
            during = await describe(bootstrap, stream.topic)
            assert during["leader"] not in (leader, -1)
            assert leader not in during["isr"]  # type: ignore[operator]
        finally:
            await harness("start-node", "kafka", str(leader))

        async def rejoined() -> bool:
            return leader in (await describe(bootstrap, stream.topic))["isr"]  # type: ignore[operator]

        await eventually(rejoined, f"node {leader} catches up and is back among the in-sync replicas")
        mark = len(stream.confirmed)
        await eventually(lambda: len(stream.confirmed) >= mark + 100, "enqueueing goes on after the rejoin")
        await stream.stop_producing()
        await eventually(lambda: not stream.lost(), "the worker handles every confirmed task")
    finally:
        await stream.close()
    duplicates = sum(count - 1 for count in stream.handled.values())
    print(f"{how}: {len(stream.confirmed)} confirmed, {len(stream.handled)} handled, "
          f"{duplicates} duplicates, {stream.refused} refused enqueue calls, "
          f"slowest enqueue {stream.longest_wait:.1f} s")
    assert not stream.lost()
