"""RabbitMQ baseline benchmarks: raw aio-pika, and nova's RabbitMQBroker contract.

    eval "$(python tools/brokers.py env rabbitmq)"
    python tools/bench_rabbitmq.py [--tasks 50000] [--size 100] [--prefetch 256]

Both sides use the same settings: durable queue, persistent messages,
publisher confirms with ``mandatory``, prefetch per consumer, manual acks.
Publishing sends ``publish_batch`` messages at once and waits for all their
confirms (nova's ``enqueue_batch`` / concurrent ``enqueue`` do the same).
One difference on the consuming side: raw acks every message with its own
``basic.ack`` (aio-pika's ``message.ack()``, as a plain aio-pika consumer
does), while nova's adapter writes the settles of one event-loop turn
together and acks a run of consecutive tags with one ``basic.ack(multiple)``.
Three phases per side, each on a fresh queue:

- enqueue: publish N with no consumer;
- drain: consume and ack the N enqueued;
- end to end: a consumer runs while N are published; time until the last ack,
  plus publish-to-handler latency p50/p99.

``tools/bench.py`` (nova's TaskQueue vs these) imports ``raw_aio_pika``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["nova_broker", "raw_aio_pika"]

Result = dict[str, float]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _phases(
    publish: Callable[[str, list[bytes]], Awaitable[None]],
    consume: Callable[[str, int, list[float]], Awaitable[None]],
    *,
    tasks: int,
    size: int,
    publish_batch: int,
) -> Result:
    def bodies(start: int, count: int) -> list[bytes]:
        return [str(time.time()).encode().ljust(size, b"x") for _ in range(start, start + count)]

    async def publish_all(queue: str) -> None:
        for start in range(0, tasks, publish_batch):
            await publish(queue, bodies(start, min(publish_batch, tasks - start)))

    queue = f"bench_{uuid.uuid4().hex[:8]}_q_normal"
    began = time.perf_counter()
    await publish_all(queue)
    enqueue_s = time.perf_counter() - began
    began = time.perf_counter()
    await consume(queue, tasks, [])
    drain_s = time.perf_counter() - began

    queue = f"bench_{uuid.uuid4().hex[:8]}_q_normal"
    await publish(queue, [])  # declare before consuming
    latencies: list[float] = []
    began = time.perf_counter()
    consumer = asyncio.create_task(consume(queue, tasks, latencies))
    await publish_all(queue)
    await consumer
    e2e_s = time.perf_counter() - began
    return {
        "enqueue_tps": tasks / enqueue_s,
        "drain_tps": tasks / drain_s,
        "e2e_tps": tasks / e2e_s,
        "latency_p50_ms": _percentile(latencies, 0.50) * 1000,
        "latency_p99_ms": _percentile(latencies, 0.99) * 1000,
    }


async def raw_aio_pika(
    url: str, *, tasks: int = 50_000, size: int = 100, prefetch: int = 256, publish_batch: int = 1000
) -> Result:
    """The same work with aio-pika alone: the baseline nova is measured against."""
    import aio_pika

    connection = await aio_pika.connect_robust(url)
    async with connection:
        pub_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await pub_channel.declare_exchange("bench", aio_pika.ExchangeType.DIRECT, durable=True)
        declared: set[str] = set()

        async def declare(queue: str) -> None:
            if queue not in declared:
                q = await pub_channel.declare_queue(queue, durable=True)
                await q.bind(exchange, routing_key=queue)
                declared.add(queue)

        async def publish(queue: str, bodies: list[bytes]) -> None:
            await declare(queue)
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(b, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue,
                        mandatory=True,
                    )
                    for b in bodies
                )
            )

        async def consume(queue: str, count: int, latencies: list[float]) -> None:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            q = await channel.declare_queue(queue, durable=True)
            done = asyncio.Event()
            seen = 0

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal seen
                latencies.append(time.time() - float(message.body[:20].rstrip(b"x")))
                await message.ack()
                seen += 1
                if seen == count:
                    done.set()

            tag = await q.consume(on_message)
            await done.wait()
            await q.cancel(tag)
            await q.delete()
            await channel.close()

        return await _phases(publish, consume, tasks=tasks, size=size, publish_batch=publish_batch)


async def nova_broker(
    url: str, *, tasks: int = 50_000, size: int = 100, prefetch: int = 256, publish_batch: int = 1000
) -> Result:
    """The same work through nova's broker contract (RabbitMQBroker), no engine."""
    from nova._broker import Message
    from nova.brokers.rabbitmq import RabbitMQBroker

    broker = RabbitMQBroker(url, exchange="bench")
    await broker.connect()
    try:

        async def publish(queue: str, bodies: list[bytes]) -> None:
            await broker.ensure_topics([queue])
            await broker.publish([Message(queue, b) for b in bodies])

        async def consume(queue: str, count: int, latencies: list[float]) -> None:
            sub = await broker.subscribe([queue], group="bench", window=prefetch)
            seen = 0
            async for delivery in sub:
                latencies.append(time.time() - float(delivery.body[:20].rstrip(b"x")))
                await delivery.ack()
                seen += 1
                if seen == count:
                    break
            await sub.close()

        return await _phases(publish, consume, tasks=tasks, size=size, publish_batch=publish_batch)
    finally:
        await broker.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--publish-batch", type=int, default=1000)
    args = parser.parse_args(argv)
    url = os.environ.get("NOVA_RABBITMQ_URL")
    if not url:
        print('NOVA_RABBITMQ_URL is not set: eval "$(python tools/brokers.py env rabbitmq)"', file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "tasks": args.tasks,
        "size": args.size,
        "prefetch": args.prefetch,
        "publish_batch": args.publish_batch,
    }
    print(f"{args.tasks} tasks x {args.size} B, prefetch {args.prefetch}, publish batch {args.publish_batch}")
    for name, bench in (("raw aio-pika", raw_aio_pika), ("nova RabbitMQBroker", nova_broker)):
        result = asyncio.run(bench(url, **options))
        print(
            f"{name:>20}: enqueue {result['enqueue_tps']:8.0f}/s  drain {result['drain_tps']:8.0f}/s  "
            f"end-to-end {result['e2e_tps']:8.0f}/s  latency p50 {result['latency_p50_ms']:.1f} ms "
            f"p99 {result['latency_p99_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
