"""Memory over time: a worker's RSS under a full-rate stream, and a producer's over 1M tasks.

    python tools/bench_memory.py --broker kafka|rabbitmq|rocketmq|sim --soak-minutes 10
    python tools/bench_memory.py --broker kafka|rabbitmq|rocketmq --enqueue 1000000

``--soak-minutes``: a worker process (``start()``, concurrency 8, prefetch 512, no-op handler)
drains for that long while this process keeps it fed at full rate (``enqueue_batch`` of 500,
at most ``--backlog`` tasks ahead of the worker). The worker's RSS (VmRSS) is printed after a
warm-up of 30 s, every minute and at the end, with what it handled; the producer's too. On ``sim``
the worker runs in this process (SimBroker lives in it).

``--enqueue N``: this process enqueues N tasks of 100 bytes in ``enqueue_batch`` calls of 1000
and prints its RSS every tenth of the way. The topics are deleted afterwards (Kafka, RabbitMQ).

Nothing here is a test; figures print as lines. Brokers come from the ``NOVA_*`` variables
(``python tools/brokers.py env ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import nova
from nova.sim import SimBroker

PAYLOAD = b"x" * 100
REPORT_EVERY = 0.5  # seconds between the worker's reports (the producer paces itself by them)
WARM_UP = 30.0  # seconds of a soak before its "start" figure (buffers and caches fill first)


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size now (Linux VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def make_broker(name: str) -> Any:
    if name == "sim":
        return SimBroker(clock=nova.SystemClock())
    if name == "kafka":
        return nova.KafkaBroker(os.environ["NOVA_KAFKA_BOOTSTRAP"])
    if name == "rabbitmq":
        return nova.RabbitMQBroker(os.environ["NOVA_RABBITMQ_URL"])
    from bench_rocketmq import harness_options

    return nova.RocketMQBroker(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], **harness_options())


def make_queue(broker: Any, prefix: str) -> nova.TaskQueue:
    return nova.TaskQueue(broker, topic_prefix=prefix, group_id="memory", message_format=nova.MessageFormat.SONIC,
                          close_broker=True)


async def delete_topics(name: str, prefix: str) -> None:
    """Remove what a run left in the broker (its topics start with ``prefix``)."""
    if name == "kafka":
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=os.environ["NOVA_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(prefix + "_")]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()
    elif name == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(os.environ["NOVA_RABBITMQ_URL"])
        async with connection:
            for queue in ("default",):
                for level in ("high", "normal", "low"):
                    channel = await connection.channel()
                    await channel.queue_delete(f"{prefix}_{queue}_{level}")
                    await channel.close()


# --- the worker (its own process on a real broker) ---------------------------------------------------


async def run_worker(name: str, prefix: str, seconds: float, report: Any) -> None:
    """Drain ``prefix``'s default queue for ``seconds``, reporting (handled, RSS) every few seconds."""
    handled = 0

    async def handle(task: nova.Task) -> None:
        nonlocal handled
        handled += 1

    async with make_queue(make_broker(name), prefix) as queue:
        await queue.start(handle, concurrency=8, prefetch=512)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(min(REPORT_EVERY, max(end - time.monotonic(), 0)))
            report({"handled": handled, "rss_mib": rss_mib(), "at": time.monotonic()})


def worker_main(args: argparse.Namespace) -> int:
    def report(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)

    asyncio.run(run_worker(args.broker, args.prefix, args.seconds, report))
    return 0


# --- soak ----------------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> None:
    name, seconds = args.broker, args.soak_minutes * 60
    prefix = "mem-" + uuid.uuid4().hex[:8]
    print(f"{name}: worker soak, {args.soak_minutes:g} min at full rate (tasks of {len(PAYLOAD)} bytes, "
          f"at most {args.backlog:,} ahead of the worker); {load()}")
    reports: list[dict[str, Any]] = []
    broker = make_broker(name)
    producer = make_queue(broker, prefix)
    await producer.enqueue(nova.Task("warm-up", PAYLOAD))  # connects and makes the topics first
    worker_task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    if name == "sim":
        # SimBroker lives in this process: the worker runs here, on the producer's broker.
        async def in_process() -> None:
            handled = 0

            async def handle(task: nova.Task) -> None:
                nonlocal handled
                handled += 1

            consumer = nova.TaskQueue(broker, topic_prefix=prefix, group_id="memory")
            await consumer.start(handle, concurrency=8, prefetch=512)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await asyncio.sleep(min(REPORT_EVERY, max(end - time.monotonic(), 0)))
                reports.append({"handled": handled, "rss_mib": rss_mib(), "at": time.monotonic()})
            await consumer.stop()

        worker_task = asyncio.create_task(in_process())
    else:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "worker", "--broker", name, "--prefix", prefix, "--seconds", str(seconds),
            stdout=asyncio.subprocess.PIPE)

        async def read_reports() -> None:
            assert process is not None and process.stdout is not None
            async for line in process.stdout:
                reports.append(json.loads(line))

        worker_task = asyncio.create_task(read_reports())
    produced = 1
    producer_start = rss_mib()
    began = time.monotonic()
    start: dict[str, Any] | None = None
    next_mark = 0.0
    printed = 0
    try:
        while not worker_task.done():
            handled = reports[-1]["handled"] if reports else 0
            if produced - handled < args.backlog:
                await producer.enqueue_batch([nova.Task("soak", PAYLOAD) for _ in range(500)])
                produced += 500
            else:
                await asyncio.sleep(0.05)  # the worker is behind: let it catch up
            while printed < len(reports):
                r = reports[printed]
                printed += 1
                if start is None and (r["at"] - began >= WARM_UP or seconds < 2 * WARM_UP):
                    start, next_mark = r, r["at"] + 60
                    producer_start = rss_mib()
                    print(f"  start ({r['at'] - began:.0f} s in): worker RSS {r['rss_mib']:.1f} MiB, handled "
                          f"{r['handled']:,}; producer RSS {producer_start:.1f} MiB; {load()}", flush=True)
                elif start is not None and r["at"] >= next_mark:
                    next_mark += 60
                    print(f"  {r['at'] - began:>5.0f} s: worker RSS {r['rss_mib']:.1f} MiB, handled {r['handled']:,}; "
                          f"producer RSS {rss_mib():.1f} MiB; {load()}", flush=True)
        await worker_task
    finally:
        await producer.stop()
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()
        with contextlib.suppress(Exception):
            await delete_topics(name, prefix)
    first, last = start or reports[0], reports[-1]
    rate = (last["handled"] - first["handled"]) / max(last["at"] - first["at"], 1e-9)
    peak = max(r["rss_mib"] for r in reports if r["at"] >= first["at"])
    print(f"  end ({last['at'] - began:.0f} s): worker RSS {last['rss_mib']:.1f} MiB (start {first['rss_mib']:.1f}, "
          f"peak {peak:.1f}), {rate:,.0f} tasks/s since the start; producer RSS {rss_mib():.1f} MiB "
          f"(start {producer_start:.1f}); {load()}")


# --- enqueue 1M --------------------------------------------------------------------------------------------


async def enqueue_many(args: argparse.Namespace) -> None:
    name, n = args.broker, args.enqueue
    prefix = "mem-" + uuid.uuid4().hex[:8]
    print(f"{name}: enqueue {n:,} tasks of {len(PAYLOAD)} bytes in enqueue_batch calls of 1000; {load()}")
    if name == "sim":
        print("  (SimBroker keeps every task in this process: its RSS grows with them by design)")
    queue = make_queue(make_broker(name), prefix)
    try:
        await queue.enqueue(nova.Task("warm-up", PAYLOAD))
        start_rss = rss_mib()
        print(f"  start: RSS {start_rss:.1f} MiB", flush=True)
        step = max(n // 10, 1000)
        start = time.perf_counter()
        done = 0
        peak = start_rss
        while done < n:
            count = min(1000, n - done)
            await queue.enqueue_batch([nova.Task("many", PAYLOAD) for _ in range(count)])
            done += count
            peak = max(peak, rss_mib()) if done % 10_000 == 0 else peak
            if done % step == 0 or done == n:
                rate = done / (time.perf_counter() - start)
                print(f"  {done:>9,}: RSS {rss_mib():.1f} MiB, {rate:,.0f} tasks/s; {load()}", flush=True)
        print(f"  end: RSS {rss_mib():.1f} MiB (start {start_rss:.1f}, peak {peak:.1f})")
    finally:
        await queue.stop()
        with contextlib.suppress(Exception):
            await delete_topics(name, prefix)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("worker")
        parser.add_argument("--broker", required=True)
        parser.add_argument("--prefix", required=True)
        parser.add_argument("--seconds", type=float, required=True)
        return worker_main(parser.parse_args())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, choices=["sim", "kafka", "rabbitmq", "rocketmq"])
    parser.add_argument("--soak-minutes", type=float, default=None, help="worker soak length (the issue: 10)")
    parser.add_argument("--backlog", type=int, default=50_000, help="most tasks kept ahead of the soak's worker")
    parser.add_argument("--enqueue", type=int, default=None, help="enqueue this many tasks (the issue: 1000000)")
    args = parser.parse_args()
    if args.soak_minutes is None and args.enqueue is None:
        parser.error("give --soak-minutes and/or --enqueue")
    if args.soak_minutes is not None:
        asyncio.run(soak(args))
    if args.enqueue is not None:
        asyncio.run(enqueue_many(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
