"""Raw aiokafka vs nova's KafkaBroker adapter on the same Kafka (a benchmark, not a test).

    python tools/brokers.py up kafka && eval "$(python tools/brokers.py env kafka)"
    python tools/bench_kafka.py [--count 100000] [--size 100]

Both sides use acks=all with an idempotent producer and manual commits, one
partition, and fresh topics; the figures are tasks (records) per second.
``raw_aiokafka`` is the baseline ``tools/bench.py`` compares nova against.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

__all__ = ["bench_kafka_broker", "bench_raw_aiokafka"]

CHUNK = 1000  # records per produce call: what an enqueue_batch of 1000 tasks would send


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


async def _warm_up(bootstrap: str) -> None:
    """One group joins and commits once, untimed: a fresh broker creates its offsets topic
    (50 partitions) on the first group, which would otherwise land in whichever run is first."""
    topic = f"bench-warm-{uuid.uuid4().hex[:8]}"
    await _create_topic(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=topic, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = time.perf_counter() + 60
        while not await consumer.getmany(timeout_ms=500):
            if time.perf_counter() > deadline:
                raise TimeoutError("the warm-up record was not consumed within 60 s")
        await consumer.commit()
    finally:
        await consumer.stop()


async def bench_raw_aiokafka(bootstrap: str, count: int = 100_000, size: int = 100) -> dict[str, float]:
    """Produce ``count`` records, then consume them twice with manual commits.

    The records are nova-shaped JSON (``{"type": ..., "payload": <size chars>}``). The
    first consumer only counts them (the client's own speed); the second is the smallest
    hand-rolled worker: it decodes each record (orjson) and awaits a no-op handler per record.
    """
    import orjson

    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    await _create_topic(bootstrap, topic)
    await _warm_up(bootstrap)
    body = orjson.dumps({"type": "bench", "payload": "x" * size})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_batch_size=65536)
    await producer.start()
    started = time.perf_counter()
    try:
        for i in range(0, count, CHUNK):
            futures = [await producer.send(topic, body) for _ in range(min(CHUNK, count - i))]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    produce_s = time.perf_counter() - started

    async def handle(doc: Any) -> None:
        pass

    async def consume(group: str, per_record: bool) -> float:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        started = time.perf_counter()
        await consumer.start()
        seen = 0
        last_commit = started
        try:
            while seen < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    seen += len(records)
                    if per_record:
                        for record in records:
                            await handle(orjson.loads(record.value))
                if time.perf_counter() - last_commit > 0.2:  # batched commits, as the adapter does
                    await consumer.commit()
                    last_commit = time.perf_counter()
            await consumer.commit()
        finally:
            await consumer.stop()
        return time.perf_counter() - started

    consume_s = await consume(f"bench-{topic}", per_record=False)
    worker_s = await consume(f"bench-worker-{topic}", per_record=True)
    return {"produce_per_s": count / produce_s, "consume_per_s": count / consume_s,
            "worker_per_s": count / worker_s}


async def bench_kafka_broker(bootstrap: str, count: int = 100_000, size: int = 100) -> dict[str, float]:
    """The same through nova's adapter: ``publish`` chunks, then subscribe and ack each delivery."""
    from nova._broker import Message
    from nova.brokers.kafka import KafkaBroker

    topic = f"bench-nova-{uuid.uuid4().hex[:8]}"
    broker = KafkaBroker(bootstrap, partitions=1)  # as the raw side's topic
    body = b"x" * size
    try:
        await broker.ensure_topics([topic])
        started = time.perf_counter()
        for i in range(0, count, CHUNK):
            await broker.publish([Message(topic, body) for _ in range(min(CHUNK, count - i))])
        produce_s = time.perf_counter() - started
        started = time.perf_counter()
        sub = await broker.subscribe([topic], group=f"bench-{topic}", window=10_000)
        seen = 0
        async for delivery in sub:
            await delivery.ack()
            seen += 1
            if seen == count:
                break
        await sub.close()
        consume_s = time.perf_counter() - started
    finally:
        await broker.close()
    return {"produce_per_s": count / produce_s, "consume_per_s": count / consume_s}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("NOVA_KAFKA_BOOTSTRAP")
    if not bootstrap:
        print('NOVA_KAFKA_BOOTSTRAP is not set: eval "$(python tools/brokers.py env kafka)"', file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    results["raw_aiokafka"] = asyncio.run(bench_raw_aiokafka(bootstrap, args.count, args.size))
    results["nova_kafka_broker"] = asyncio.run(bench_kafka_broker(bootstrap, args.count, args.size))
    print(f"{args.count} records x {args.size} B, acks=all, idempotent, manual commits, 1 partition")
    for name, figures in results.items():
        print(
            f"  {name:18s} produce {figures['produce_per_s']:>9,.0f} /s   "
            f"consume+ack {figures['consume_per_s']:>9,.0f} /s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
