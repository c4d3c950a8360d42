"""RocketMQ throughput: the raw ``rocketmq-python-client`` against nova's adapter.

    python tools/brokers.py up rocketmq && eval "$(python tools/brokers.py env rocketmq)"
    python tools/bench_rocketmq.py [--tasks 20000]

Both sides send N small messages to a fresh topic, then receive and ack them
all (window 256). Prints tasks/s for publish and for receive+ack. ``raw(n)`` and
``adapter(n)`` return the figures; ``raw_rocketmq(endpoints, n)`` is the raw
baseline ``tools/bench.py --broker rocketmq`` uses: the client's public API,
one AckMessage request per message. ``raw(n, batched_acks=True)`` (printed
here, not used by bench.py) acks each received batch in one request, as nova's
adapter does, through the client's internal ``rpc_client``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nova._broker import Message
from nova.brokers.rocketmq import RocketMQAdmin, RocketMQBroker
from nova.brokers.rocketmq._client_patches import client, wait_for_settings


def _env_auth(prefix: str = "NOVA_ROCKETMQ_") -> tuple[str, str] | None:
    ak = os.environ.get(prefix + "ACCESS_KEY")
    return (ak, os.environ.get(prefix + "SECRET_KEY", "")) if ak else None


def harness_options() -> dict[str, Any]:
    """RocketMQBroker's options for the harness's broker (``tools/brokers.py env rocketmq``):
    its name server (nova creates topics and groups, and reads offsets), admin user and timer precision."""
    options: dict[str, Any] = {"auth": _env_auth(), "namesrv": os.environ["NOVA_ROCKETMQ_NAMESRV"]}
    if _env_auth("NOVA_ROCKETMQ_ADMIN_"):
        options["admin_auth"] = _env_auth("NOVA_ROCKETMQ_ADMIN_")
    if os.environ.get("NOVA_ROCKETMQ_TIMER_PRECISION_MS"):
        options["timer_precision"] = timedelta(milliseconds=int(os.environ["NOVA_ROCKETMQ_TIMER_PRECISION_MS"]))
    return options


async def _make_topic(topic: str, group: str) -> None:
    admin = RocketMQAdmin(os.environ["NOVA_ROCKETMQ_NAMESRV"], auth=_env_auth("NOVA_ROCKETMQ_ADMIN_") or _env_auth())
    await admin.create_topics([topic])
    await admin.create_groups([group])
    await admin.aclose()


def raw(n: int, endpoints: str | None = None, *, batched_acks: bool = False) -> dict[str, float]:
    """The raw client: send_async for all, then receive and ack (acks from 16 threads,
    or one AckMessage request per received batch)."""
    rmq = client()
    topic, group = f"bench{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}"
    asyncio.run(_make_topic(topic, group))
    ak, sk = _env_auth() or ("", "")
    endpoints = endpoints or os.environ["NOVA_ROCKETMQ_ENDPOINTS"]
    config = rmq.ClientConfiguration(endpoints, rmq.Credentials(ak, sk), "", 5)
    producer = rmq.Producer(config, (topic,))
    producer.startup()
    t0 = time.perf_counter()
    futures = []
    for i in range(n):
        m = rmq.Message()
        m.topic = topic
        m.body = b"x" * 64 + str(i).encode()
        futures.append(producer.send_async(m))
    wait(futures)
    publish = n / (time.perf_counter() - t0)
    consumer = rmq.SimpleConsumer(config, group, {topic: rmq.FilterExpression()}, await_duration=2)
    consumer.startup()
    wait_for_settings(consumer, 5)  # the proxy refuses receives before the settings arrive
    t0 = time.perf_counter()
    got = 0
    with ThreadPoolExecutor(16) as pool:
        while got < n:
            batch = consumer.receive(32, 60)
            if batched_acks and batch:
                _ack_all(consumer, group, topic, batch)
            else:
                list(pool.map(consumer.ack, batch))
            got += len(batch)
    consume = n / (time.perf_counter() - t0)
    consumer.shutdown()
    producer.shutdown()
    return {"publish_per_s": publish, "consume_per_s": consume}


def _ack_all(consumer: Any, group: str, topic: str, batch: list[Any]) -> None:
    from rocketmq.grpc_protocol import AckMessageRequest  # type: ignore[import-untyped]

    req = AckMessageRequest()
    req.group.name = group
    req.topic.name = topic
    for m in batch:
        entry = req.entries.add()
        entry.message_id = m.message_id
        entry.receipt_handle = m.receipt_handle
    res = consumer.rpc_client.ack_message_async(batch[0].endpoints, req, metadata=consumer.sign(), timeout=5).result()
    assert res.status.code == 20000, res.status  # OK: every entry acked


async def _adapter(n: int) -> dict[str, float]:
    broker = RocketMQBroker(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], **harness_options())
    topic, group = f"bench{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}"
    await broker.ensure_topics([topic])
    t0 = time.perf_counter()
    for start in range(0, n, 500):
        await broker.publish([Message(topic, b"x" * 64 + str(i).encode()) for i in range(start, min(n, start + 500))])
    publish = n / (time.perf_counter() - t0)
    sub = await broker.subscribe([topic], group=group, window=256)
    t0 = time.perf_counter()
    got = 0
    acks: set[asyncio.Task[None]] = set()
    async for d in sub:
        task = asyncio.create_task(d.ack())
        acks.add(task)
        task.add_done_callback(acks.discard)
        got += 1
        if got == n:
            break
    await asyncio.gather(*acks)
    consume = n / (time.perf_counter() - t0)
    await sub.close()
    await broker.close()
    return {"publish_per_s": publish, "consume_per_s": consume}


async def raw_rocketmq(endpoints: str, n: int) -> dict[str, float]:
    """For ``tools/bench.py``: the raw client's figures (``produce_per_s``, ``consume_per_s``)."""
    figures = await asyncio.to_thread(raw, n, endpoints)
    return {"produce_per_s": figures["publish_per_s"], "consume_per_s": figures["consume_per_s"]}


def adapter(n: int) -> dict[str, float]:
    """nova's RocketMQBroker: publish in batches of 500, consume with window 256."""
    return asyncio.run(_adapter(n))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    args = parser.parse_args()
    runs: tuple[tuple[str, Callable[[int], dict[str, float]]], ...] = (
        ("raw client", raw),
        ("raw, acks/batch", lambda n: raw(n, batched_acks=True)),
        ("nova adapter", adapter),
    )
    for name, fn in runs:
        figures = fn(args.tasks)
        print(f"{name:15} publish {figures['publish_per_s']:8.0f}/s   receive+ack {figures['consume_per_s']:8.0f}/s")


if __name__ == "__main__":
    main()
