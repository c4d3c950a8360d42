"""CPU per task of nova's Kafka drain without the network (a benchmark, not a test).

    python tools/kafka_drain_cpu.py [--tasks 200000] [--mode single|batch] [--partitions 1]

The records of ``--tasks`` enqueued tasks (built by a SimBroker TaskQueue, headers packed
as KafkaBroker writes them) are put straight into a KafkaSubscription's partition buffers
(spread round robin over ``--partitions`` partitions of the topic, as KafkaBroker publishes
them; every priority level has that many), and a TaskQueue drains them through the real
Worker, delivery and offset bookkeeping. No
broker runs: what it prints is nova's own share of a Kafka drain (``tools/bench.py
--broker kafka`` measures the whole).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiokafka.structs import ConsumerRecord, TopicPartition  # type: ignore[import-untyped]
from bench import enqueue_all

import nova
from nova._broker import Message
from nova.brokers.kafka import KafkaBroker
from nova.brokers.kafka._headers import _headers
from nova.brokers.kafka._subscription import KafkaSubscription
from nova.sim import SimBroker

PREFIX = "drain"


class _FetchState:
    """What backlog_nowait reads from aiokafka: a position at the end (nothing to fetch)."""

    has_valid_position = True
    highwater = 0
    position = 0


async def _records(n: int, partitions: int) -> list[list[Any]]:
    """The records of each partition, in offset order."""
    sim = SimBroker()
    await enqueue_all(nova.TaskQueue(sim, topic_prefix=PREFIX, message_format=nova.MessageFormat.SONIC), n)
    topic = f"{PREFIX}_default_normal"
    ready = list(sim._topics[topic].ready)
    # Made partition by partition, as aiokafka parses each partition's records of a fetch.
    return [
        [ConsumerRecord(topic, partition, offset, int(r.published_at * 1000), 0, r.key.encode(), r.body, None, 0,
                        len(r.body), _headers(Message(topic, r.body, r.headers)))
         for offset, r in enumerate(ready[partition::partitions])]
        for partition in range(partitions)
    ]


async def drain(n: int, mode: str, partitions: int = 1) -> float:
    """CPU seconds per task for draining ``n`` fetched records."""
    records = await _records(n, partitions)
    broker = KafkaBroker("127.0.0.1:1")  # never connected

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    async def subscribe(topics: list[str], *, group: str, window: int) -> KafkaSubscription:
        sub = KafkaSubscription(broker, list(topics), group, window)
        await sub._on_assigned([TopicPartition(t, p) for t in topics for p in range(partitions)])
        for state in sub._states:
            state.fetch = _FetchState()
        sub._end_offsets_at = float("inf")  # no end-offset refresh
        for partition, part in enumerate(records):
            ready = TopicPartition(part[0].topic, partition)
            if ready in sub._parts:
                sub._parts[ready].buffer.extend(part)
        return sub

    broker.connect = nothing  # type: ignore[method-assign]
    broker.ensure_topics = nothing  # type: ignore[method-assign]
    broker.subscribe = subscribe  # type: ignore[method-assign]
    queue = nova.TaskQueue(broker, topic_prefix=PREFIX, group_id="drain", message_format=nova.MessageFormat.SONIC)
    # Counted with an event, not bench.py's polling wait: its wake-ups every 2 ms add CPU to
    # what is measured here.
    done = asyncio.Event()
    handled = 0

    async def one(task: nova.Task) -> None:
        nonlocal handled
        handled += 1
        if handled >= n:
            done.set()

    async def many(tasks: list[nova.Task]) -> None:
        nonlocal handled
        handled += len(tasks)
        if handled >= n:
            done.set()

    gc.collect()
    started = time.process_time()
    if mode == "single":
        await queue.start(one, concurrency=8, prefetch=512)
    else:
        await queue.start_batch(many, nova.TimeCountAggregator(500, timedelta(milliseconds=200)))
    await done.wait()
    return (time.process_time() - started) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--mode", choices=("single", "batch"), default="single")
    parser.add_argument("--partitions", type=int, default=1, help="partitions per priority level (default 1)")
    args = parser.parse_args()
    per_task = asyncio.run(drain(args.tasks, args.mode, args.partitions))
    print(f"nova Kafka drain without the network, {args.mode}, {args.partitions} partition(s) per level: "
          f"{per_task * 1e6:.2f} us CPU per task")
    sys.stdout.flush()
    os._exit(0)  # the never-connected consumer has nothing to close


if __name__ == "__main__":
    raise SystemExit(main())
