"""nova on a three-node Kafka cluster while nodes fail (``--broker kafka --cluster``).

    python tools/brokers.py up kafka --nodes 3
    eval "$(python tools/brokers.py env kafka --nodes 3)"
    pytest tests/brokers/test_kafka_cluster.py --broker kafka --cluster

The node leading the ready topic's partition is stopped while a producer enqueues
through ``nova.TaskQueue`` and a worker consumes: every confirmed task must still
reach the worker, both go on against the other two nodes, and the stopped node,
started again, rejoins the partition's in-sync replicas. A topic created while a node
is down still gets the cluster's three replicas. Waits are conditions with deadlines.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable

import aiokafka.admin as aiokafka_admin  # type: ignore[import-untyped]
import aiokafka.errors  # type: ignore[import-untyped]
import pytest

import nova
from nova._broker import Message
from tests.brokers._cluster import Stream, eventually, harness, require_cluster

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


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_stopping_the_partition_leader_mid_stream_loses_nothing(bootstrap: str, how: str) -> None:
    stream = Stream(lambda: nova.KafkaBroker(bootstrap))
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


async def live_brokers(bootstrap: str) -> int:
    admin = aiokafka_admin.AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def test_a_topic_created_while_a_node_is_down_gets_the_clusters_three_replicas(bootstrap: str) -> None:
    """nova asks for the cluster's default.replication.factor (3 here), not for as many replicas
    as brokers are up: a topic created while a node is down gets a replica on it too, which
    catches up once the node is back (counting the live brokers gave it two for good)."""
    broker = nova.KafkaBroker(bootstrap, partitions=2)
    topic = "t" + uuid.uuid4().hex[:10]
    try:
        await harness("stop-node", "kafka", "3")
        try:
            await eventually(lambda: _is(live_brokers(bootstrap), 2), "the cluster sees two brokers")
            await broker.ensure_topics([topic])
            during = await describe(bootstrap, topic)
            assert sorted(during["replicas"]) == [1, 2, 3], during  # type: ignore[call-overload]
            assert 3 not in during["isr"], during  # type: ignore[operator]
            await broker.publish([Message(topic, b"while node 3 was down")])
        finally:
            await harness("start-node", "kafka", str(3))

        async def caught_up() -> bool:
            return 3 in (await describe(bootstrap, topic))["isr"]  # type: ignore[operator]

        await eventually(caught_up, "node 3 catches up and is back among the in-sync replicas")
    finally:
        await broker.close()


async def _is(count: Awaitable[int], expected: int) -> bool:
    try:
        return await count == expected
    except aiokafka.errors.KafkaError:
        return False  # a node going away or coming back: ask again
