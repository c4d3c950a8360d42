"""The aiokafka internals nova relies on (nova/brokers/kafka/_aiokafka_internals.py) are
where it expects them in the installed aiokafka. No broker needed: runs in the sim suite.

nova keeps working when one of them moves (each function falls back to what aiokafka's
public API allows), so only these tests tell that an aiokafka upgrade made nova slower
or less precise. Each failure names the attribute that moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

import aiokafka  # type: ignore[import-untyped]
import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.conn import AIOKafkaConnection  # type: ignore[import-untyped]
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, FetchResult, PartitionRecords  # type: ignore[import-untyped]
from aiokafka.protocol.offset import OffsetResponse_v1  # type: ignore[import-untyped]
from aiokafka.record.default_records import DefaultRecordBatchBuilder  # type: ignore[import-untyped]
from aiokafka.record.memory_records import MemoryRecords  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord, TopicPartition  # type: ignore[import-untyped]

from nova.brokers.kafka import _aiokafka_internals as internals

NOWHERE = "127.0.0.1:1"  # never connected to
TP = TopicPartition("t", 0)


def reach(obj: Any, path: str) -> Any:
    """``obj.<path>``, failing with the name of the first attribute that is missing."""
    for name in path.split("."):
        assert hasattr(obj, name), (
            f"aiokafka changed: {type(obj).__name__} has no {name!r} (nova reads {path!r}); "
            "update nova/brokers/kafka/_aiokafka_internals.py"
        )
        obj = getattr(obj, name)
    return obj


@contextlib.asynccontextmanager
async def started_consumer(**kwargs: Any) -> AsyncIterator[Any]:
    """An AIOKafkaConsumer started without a broker: start() builds its fetcher and
    coordinator, skipping only the bootstrap (there are no topics to wait for)."""
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=NOWHERE, **kwargs)

    async def no_bootstrap() -> None:
        return None

    reach(consumer, "_client.bootstrap")
    consumer._client.bootstrap = no_bootstrap
    await asyncio.wait_for(consumer.start(), 10)
    try:
        yield consumer
    finally:
        await asyncio.wait_for(consumer.stop(), 10)


def fetched(records: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]) -> Any:
    """The record batch a fetch response carries, as aiokafka holds it before parsing."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=-1,
        batch_size=1 << 20,
    )  # fmt: skip
    for offset, key, value, headers in records:
        builder.append(offset, timestamp=1_700_000_000_000 + offset, key=key, value=value, headers=headers)
    return MemoryRecords(bytes(builder.build()))


async def test_a_started_consumer_hands_out_records_as_parsed() -> None:
    """What hand_over_bare_records replaces, stored the way aiokafka's fetcher stores a fetch
    result (fetcher.py: ``self._records[tp] = FetchResult(tp, partition_records=...)``),
    comes out of getmany() as the parsed records, with the five fields nova reads."""
    async with started_consumer(group_id=None) as consumer:
        results = reach(consumer, "_fetcher._records")
        assert type(results) is internals.OrderedDict, f"aiokafka's fetcher._records is a {type(results)}"
        internals.hand_over_bare_records(consumer)
        assert type(consumer._fetcher._records) is internals.BareRecordResults
        consumer.assign([TP])
        consumer.seek(TP, 0)
        raw = [(0, b"k0", b"v0", [("nova", b'{"i":"a"}')]), (1, None, b"v1", [])]
        partition_records = PartitionRecords(TP, fetched(raw), [], 0, None, None, True, READ_UNCOMMITTED)
        reach(partition_records, "_consumer_record")
        assignment = reach(consumer, "_subscription.subscription.assignment")
        result = FetchResult(TP, partition_records=partition_records, assignment=assignment, backoff=0.1)
        reach(result, "_partition_records")
        consumer._fetcher._records[TP] = result
        got = (await consumer.getmany(TP, timeout_ms=0))[TP]
    assert [type(r) for r in got if isinstance(r, ConsumerRecord)] == [], "records still wrapped in ConsumerRecords"
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in got] == [
        (0, 1_700_000_000_000, b"k0", b"v0", [("nova", b'{"i":"a"}')]),
        (1, 1_700_000_000_001, None, b"v1", []),
    ]


async def test_set_fetch_wait_changes_the_fetchers_wait() -> None:
    async with started_consumer(group_id=None, fetch_max_wait_ms=100) as consumer:
        # The attribute holds what the consumer was given as fetch_max_wait_ms ...
        assert reach(consumer, "_fetcher._fetch_max_wait_ms") == 100
        internals.set_fetch_wait(consumer, 10)
        assert consumer._fetcher._fetch_max_wait_ms == 10
        assert internals.fetch_wait(consumer) == 10
        # ... and the fetcher reads it again when it builds a fetch request (not only in __init__).
        assert inspect.getsource(type(consumer._fetcher)).count("self._fetch_max_wait_ms") >= 2


async def test_fetch_state_is_the_assigned_partitions_position() -> None:
    async with started_consumer(group_id=None) as consumer:
        consumer.assign([TP])
        state = internals.fetch_state(consumer, TP)
        assert state is not None, "consumer._subscription.subscription.assignment.state_value(tp) moved"
        assert (reach(state, "has_valid_position"), reach(state, "highwater")) == (False, None)
        consumer.seek(TP, 5)
        assert (state.has_valid_position, reach(state, "position")) == (True, 5)
        assert await consumer.position(TP) == 5


async def test_group_generation_is_the_coordinators() -> None:
    async with started_consumer(group_id="g") as consumer:
        coordinator = reach(consumer, "_coordinator")
        assert reach(coordinator, "generation") == internals.group_generation(consumer) == -1
        coordinator.generation = 7
        assert internals.group_generation(consumer) == 7


async def test_nothing_queued_sees_a_batch_queued_as_send_batch_queues_it() -> None:
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=NOWHERE)
    try:
        assert internals.nothing_queued(producer, "t", 0)
        # send_batch() waits for metadata, then queues the batch with this call:
        assert "_message_accumulator.add_batch" in inspect.getsource(aiokafka.AIOKafkaProducer.send_batch)
        await reach(producer, "_message_accumulator.add_batch")(producer.create_batch(), TP, 1)
        assert reach(producer, "_message_accumulator._batches").get(TP), "producer._message_accumulator._batches"
        assert not internals.nothing_queued(producer, "t", 0)
        assert internals.nothing_queued(producer, "t", 1)
    finally:
        await producer.stop()  # never started: nothing to flush


async def test_probe_closes_a_refused_connection() -> None:
    assert reach(AIOKafkaConnection("127.0.0.1", 1), "_protocol") is None
    accepted: list[asyncio.StreamWriter] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.close()  # no ApiVersions answer: aiokafka's connect fails after the socket opened

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((aiokafka.errors.KafkaError, OSError)):
            await internals.probe("127.0.0.1", port, 5.0, {"security_protocol": "PLAINTEXT"})
    finally:
        server.close()
        await server.wait_closed()
    assert len(accepted) == 1


async def test_partitions_not_led_yet_asks_through_the_admin_clients_connection() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=NOWHERE)
    assert inspect.iscoroutinefunction(reach(admin, "_client.send"))
    # Nothing to connect to: unexpected failures count as answered (ensure_topics goes on).
    assert await internals.partitions_not_led_yet(admin, 1, [("t", 0)]) == []
    await admin.close()


def test_list_offsets_request_and_answer_have_the_expected_layout() -> None:
    request = internals.latest_offsets_request([("t", 0), ("u", 0), ("t", 1)])
    built = request.prepare({2: (0, 1)})  # the versions a broker offers: built as v1
    assert (built.API_KEY, built.API_VERSION) == (2, 1)
    assert built.topics == [("t", [(0, -1), (1, -1)]), ("u", [(0, -1)])]
    assert built.encode()  # a valid request on the wire
    # Answers: (partition, error code, ...) per topic; 6 is NOT_LEADER_OR_FOLLOWER.
    response = OffsetResponse_v1([("t", [(0, 0, -1, 0), (1, 6, -1, -1)]), ("u", [(0, 0, -1, 0)])])
    assert internals.unanswered(OffsetResponse_v1.decode(response.encode())) == [("t", 1)]


def test_cluster_default_topic_asks_for_the_clusters_replication_factor_on_the_wire() -> None:
    from aiokafka.protocol.admin import CreateTopicsRequest  # type: ignore[import-untyped]

    topic = internals.cluster_default_topic("t", 12)
    assert topic is not None, "aiokafka changed: NewTopic.replication_factor or _convert_new_topic_request moved"
    convert = reach(AIOKafkaAdminClient, "_convert_new_topic_request")
    request = CreateTopicsRequest([convert(topic)], 1000, False).prepare({19: (0, 3)})  # aiokafka's newest: v3
    assert request.API_VERSION == 3
    decoded = type(request).decode(request.encode())  # as the broker reads it
    ((name, partitions, replication, assignments, configs),) = decoded.create_topic_requests
    assert (name, partitions, replication, assignments, configs) == ("t", 12, -1, [], [])
