"""nova beside its peers on the same broker, in one run: raw client, nova, FastStream, Taskiq,
Dramatiq and Celery (where each supports the broker).

    pip install -e '.[all,bench]'                 # the peers are in the optional `bench` extra
    python tools/bench_peers.py --broker rabbitmq [--tasks 20000] [--rounds 3]
    python tools/bench_peers.py --broker kafka [--tasks 100000] [--rounds 3]

The workload, the same for every system: ``--tasks`` tasks of 100 bytes published with the
system's own normal per-task publish API, ``--inflight`` (500) awaited at a time (blocking
APIs: one after the other, which is how their users call them), then drained by a no-op
handler in a separate consumer process (its peak RSS is reported). Each system runs once per
round, the rounds interleaved (raw, nova, ..., raw, nova, ...); every figure is the median
over rounds and every ratio the median of the rounds' own ratios to raw.

Durability is the same everywhere: RabbitMQ persistent messages with publisher confirms and
manual acks after the handler; Kafka ``acks=all`` and offsets committed as the consumer goes.
How each peer is configured is printed with the table (and is in ``SYSTEMS`` below).

``--kept`` also checks, per system, whether tasks published before any worker declared its
queue reach a worker started afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAYLOAD = b"x" * 100


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mib(pid: int) -> float:
    """Peak RSS of another process (Linux VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out += [int(child), *_children(int(child))]
    return out


async def _in_flight(calls: Iterator[Awaitable[Any]], inflight: int) -> None:
    """Await ``calls`` ``inflight`` at a time."""
    chunk: list[Awaitable[Any]] = []
    for call in calls:
        chunk.append(call)
        if len(chunk) == inflight:
            await asyncio.gather(*chunk)
            chunk = []
    if chunk:
        await asyncio.gather(*chunk)


# --- endpoints -------------------------------------------------------------------------------------


def kafka_bootstrap() -> str:
    return os.environ["NOVA_KAFKA_BOOTSTRAP"]


def rabbitmq_url() -> str:
    return os.environ["NOVA_RABBITMQ_URL"]


async def kafka_topic(name: str) -> None:
    """Topics exist before the timing for every system (the harness's Kafka does not auto-create)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


# --- the systems -------------------------------------------------------------------------------------
# Each has produce(broker, queue, n, inflight) in the bench process and consume(broker, queue, n) in a
# consumer process (returning the times of its first and last handled task). Dramatiq and Celery
# consume through their own worker CLI, counted through a file each handler appends one byte to.


@dataclass(frozen=True)
class System:
    name: str
    brokers: tuple[str, ...]
    config: str
    produce: Callable[[str, str, int, int], Awaitable[None]]
    consume: Callable[[str, str, int], Awaitable[_Count]] | None = None
    worker_cli: Callable[[str, str, Path], list[str]] | None = None


class _Count:
    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.first_batch = 0  # tasks handed over with the first one (a fetch of many counts from its end)
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self, k: int = 1) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
            self.first_batch = k
        self.count += k
        if self.count >= self.n:
            self.last = now
            self.done.set()


# raw clients ---------------------------------------------------------------------------------------


async def raw_produce(broker: str, queue: str, n: int, inflight: int) -> None:
    if broker == "kafka":
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await _in_flight((producer.send_and_wait(queue, PAYLOAD) for _ in range(n)), inflight)
        finally:
            await producer.stop()
        return
    import aio_pika

    connection = await aio_pika.connect(rabbitmq_url())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        exchange = channel.default_exchange
        await _in_flight((exchange.publish(aio_pika.Message(PAYLOAD, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                           routing_key=queue, mandatory=True) for _ in range(n)), inflight)


async def raw_consume(broker: str, queue: str, n: int) -> _Count:
    count = _Count(n)
    if broker == "kafka":
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(queue, bootstrap_servers=kafka_bootstrap(), group_id="bench-" + queue,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            while not count.done.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                for records in batches.values():
                    count.hit(len(records))
                if batches:
                    await consumer.commit()  # offsets committed as it goes
        finally:
            await consumer.stop()
        return count
    import aio_pika

    connection = await aio_pika.connect(rabbitmq_url())
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=32)
        q = await channel.declare_queue(queue, durable=True)

        async def on_message(message: Any) -> None:
            await message.ack()
            count.hit()

        await q.consume(on_message)
        await count.done.wait()
    return count


# nova -------------------------------------------------------------------------------------------------


def _nova_queue(broker: str, queue: str) -> Any:
    import nova

    url = f"kafka://{kafka_bootstrap()}" if broker == "kafka" else rabbitmq_url()
    return nova.TaskQueue.from_url(url, topic_prefix=queue.replace("_", "-"), group_id="bench",
                                   message_format=nova.MessageFormat.SONIC)


async def nova_produce(broker: str, queue: str, n: int, inflight: int) -> None:
    import nova

    async with _nova_queue(broker, queue) as q:
        await _in_flight((q.enqueue(nova.Task("bench", PAYLOAD)) for _ in range(n)), inflight)


async def nova_batch_produce(broker: str, queue: str, n: int, inflight: int) -> None:
    import nova

    async with _nova_queue(broker, queue) as q:
        for i in range(0, n, inflight):
            await q.enqueue_batch([nova.Task("bench", PAYLOAD) for _ in range(min(inflight, n - i))])


async def nova_consume(broker: str, queue: str, n: int) -> tuple[float, float]:
    import nova

    count = _Count(n)

    async def handle(task: nova.Task) -> None:
        count.hit()

    async with _nova_queue(broker, queue) as q:
        await q.start(handle, concurrency=8, prefetch=512)
        await count.done.wait()
    return count


# FastStream ---------------------------------------------------------------------------------------------


def _faststream(broker: str) -> Any:
    if broker == "kafka":
        from faststream.kafka import KafkaBroker

        return KafkaBroker(kafka_bootstrap(), acks="all", enable_idempotence=True, log_level=logging.DEBUG)
    from faststream.rabbit import RabbitBroker

    # log_level: FastStream logs two lines per message at INFO by default; here they are DEBUG (not shown).
    return RabbitBroker(rabbitmq_url(), log_level=logging.DEBUG)


async def faststream_produce(broker: str, queue: str, n: int, inflight: int) -> None:
    fs = _faststream(broker)
    async with fs:
        if broker == "kafka":
            await _in_flight((fs.publish(PAYLOAD, topic=queue) for _ in range(n)), inflight)
        else:
            from faststream.rabbit import RabbitQueue

            await fs.declare_queue(RabbitQueue(queue, durable=True))
            await _in_flight((fs.publish(PAYLOAD, queue=queue, persist=True) for _ in range(n)), inflight)


async def faststream_consume(broker: str, queue: str, n: int) -> _Count:
    count = _Count(n)
    fs = _faststream(broker)
    if broker == "kafka":
        from faststream import AckPolicy

        @fs.subscriber(queue, group_id="bench-" + queue, auto_offset_reset="earliest",
                       ack_policy=AckPolicy.ACK)
        async def handle(body: bytes) -> None:
            count.hit()
    else:
        from faststream.rabbit import RabbitQueue

        @fs.subscriber(RabbitQueue(queue, durable=True))
        async def handle(body: bytes) -> None:
            count.hit()

    async with fs:
        await fs.start()
        await count.done.wait()
    return count


# Taskiq ------------------------------------------------------------------------------------------------------


def _taskiq(broker: str, queue: str) -> Any:
    if broker == "kafka":
        from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
        from aiokafka.partitioner import DefaultPartitioner
        from taskiq_aio_kafka import AioKafkaBroker

        tb = AioKafkaBroker(bootstrap_servers=kafka_bootstrap(), kafka_topic=queue)
        # taskiq-aio-kafka's defaults for these two are kafka-python's classes, which aiokafka 0.14 cannot use.
        tb.configure_producer(acks="all", enable_idempotence=True, partitioner=DefaultPartitioner())
        tb.configure_consumer(group_id="bench-" + queue, auto_offset_reset="earliest",
                              partition_assignment_strategy=(RoundRobinPartitionAssignor,))
        return tb
    from taskiq_aio_pika import AioPikaBroker
    from taskiq_aio_pika.queue import Queue

    return AioPikaBroker(rabbitmq_url(), task_queues=[Queue(name=queue)])


def _taskiq_task(tb: Any, count: _Count | None) -> Any:
    @tb.task(task_name="bench")
    async def bench(payload: str) -> None:
        if count is not None:
            count.hit()

    return bench


async def taskiq_produce(broker: str, queue: str, n: int, inflight: int) -> None:
    tb = _taskiq(broker, queue)
    bench = _taskiq_task(tb, None)
    await tb.startup()
    try:
        text = PAYLOAD.decode()
        await _in_flight((bench.kiq(text) for _ in range(n)), inflight)
    finally:
        await tb.shutdown()


async def taskiq_consume(broker: str, queue: str, n: int) -> tuple[float, float]:
    from taskiq.api import run_receiver_task

    count = _Count(n)
    tb = _taskiq(broker, queue)
    _taskiq_task(tb, count)
    tb.is_worker_process = True  # what `taskiq worker` sets: the broker then opens its consumer side
    await tb.startup()
    receiver = asyncio.create_task(run_receiver_task(tb))
    try:
        await count.done.wait()
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        await tb.shutdown()
    return count


# Dramatiq and Celery (RabbitMQ; their workers are their CLIs, prefork) --------------------------------------

_COMMON = '''\
"""Written by tools/bench_peers.py for the {system} worker CLI."""
import os

QUEUE = os.environ["BENCH_QUEUE"]
URL = os.environ["BENCH_URL"]
COUNT_FILE = os.environ.get("BENCH_COUNT_FILE", "/dev/null")
_fd = None


def _hit():
    global _fd
    if _fd is None:
        _fd = os.open(COUNT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_fd, b".")
'''

TASK_MODULES = {
    "dramatiq": _COMMON.format(system="Dramatiq") + '''
import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(url=URL, confirm_delivery=True)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def bench(payload):
    _hit()
''',
    "celery": _COMMON.format(system="Celery") + '''
from celery import Celery

app = Celery("bench", broker=URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=32, task_default_queue=QUEUE,
                broker_transport_options={"confirm_publish": True}, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)


@app.task(name="bench")
def bench(payload):
    _hit()
''',
}
MODULES_DIR = Path(tempfile.gettempdir()) / "nova-bench-peers"


def _module_name(system: str) -> str:
    return f"bench_peers_{system}"


def _write_modules() -> None:
    MODULES_DIR.mkdir(exist_ok=True)
    for system, text in TASK_MODULES.items():
        (MODULES_DIR / f"{_module_name(system)}.py").write_text(text)


def _tasks_module(system: str, queue: str) -> Any:
    """Import ``system``'s generated tasks module in this process (a fresh import per queue)."""
    import importlib

    _write_modules()
    os.environ.update(BENCH_QUEUE=queue, BENCH_URL=rabbitmq_url(), BENCH_COUNT_FILE="/dev/null")
    if str(MODULES_DIR) not in sys.path:
        sys.path.insert(0, str(MODULES_DIR))
    name = _module_name(system)
    sys.modules.pop(name, None)
    return importlib.import_module(name)


async def dramatiq_produce(broker: str, queue: str, n: int, inflight: int) -> None:
    module = _tasks_module("dramatiq", queue)

    def send() -> None:
        text = PAYLOAD.decode()
        for _ in range(n):
            module.bench.send(text)
        module.broker.close()

    await asyncio.to_thread(send)


async def celery_produce(broker: str, queue: str, n: int, inflight: int) -> None:
    module = _tasks_module("celery", queue)

    def send() -> None:
        text = PAYLOAD.decode()
        for _ in range(n):
            module.bench.delay(text)

    await asyncio.to_thread(send)


def dramatiq_cli(broker: str, queue: str, folder: Path) -> list[str]:
    return [sys.executable, "-m", "dramatiq", _module_name("dramatiq"), "--processes", "2", "--threads", "8",
            "--path", str(folder)]


def celery_cli(broker: str, queue: str, folder: Path) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", f"{_module_name('celery')}:app", "worker", "--pool", "prefork",
            "--concurrency", "2", "--loglevel", "WARNING", "-Q", queue]


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("raw", ("kafka", "rabbitmq"),
               "aiokafka send_and_wait (acks=all, idempotent) / getmany(max_records=500), commit after each; "
               "aio-pika publish (persistent, confirms, mandatory) / consume, prefetch 32, ack each",
               raw_produce, raw_consume),
        System("nova enqueue", ("kafka", "rabbitmq"), "TaskQueue.enqueue per task (SONIC); worker start(), "
               "concurrency 8, prefetch 512", nova_produce, nova_consume),
        System("nova enqueue_batch", ("kafka", "rabbitmq"), f"TaskQueue.enqueue_batch of {500} tasks; same worker",
               nova_batch_produce, nova_consume),
        System("FastStream", ("kafka", "rabbitmq"), "broker.publish per task (RabbitMQ persist=True, confirms on; "
               "Kafka acks=all, idempotent); subscriber acks after the handler; per-message log lines at DEBUG",
               faststream_produce, faststream_consume),
        System("Taskiq", ("kafka", "rabbitmq"), "task.kiq per task (taskiq-aio-pika: persistent, confirms; "
               "taskiq-aio-kafka: acks=all, aiokafka's partitioner and assignor); run_receiver_task, default ack",
               taskiq_produce, taskiq_consume),
        System("Dramatiq", ("rabbitmq",), "actor.send per task (confirm_delivery=True); worker CLI, 2 processes "
               "x 8 threads", dramatiq_produce, worker_cli=dramatiq_cli),
        System("Celery", ("rabbitmq",), "task.delay per task (confirm_publish); worker CLI prefork, 2 processes, "
               "acks_late, prefetch multiplier 32", celery_produce, worker_cli=celery_cli),
    )
}


# --- one measurement ---------------------------------------------------------------------------------------


def _rate(count: int, first: float, last: float) -> float:
    return count / (last - first) if count > 0 and last > first else float("nan")


def _consumer_process(system: System, broker: str, queue: str, n: int) -> tuple[float, float]:
    """Drain ``n`` tasks in another process: (tasks/s from the first handed over to the last, peak RSS MiB).

    The clock starts at the first task (not at the process's start: joining a group or declaring
    queues is not draining); tasks handed over together with the first one are not counted."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        if system.worker_cli is None:
            cmd = [sys.executable, __file__, "consume", "--system", system.name, "--broker", broker,
                   "--queue", queue, "--tasks", str(n), "--out", str(out)]
            subprocess.run(cmd, check=True, timeout=1800)
            result = json.loads(out.read_text())
            return _rate(n - result["first_batch"], result["first"], result["last"]), result["rss_mib"]
        count_file = Path(tmp) / "count"
        count_file.touch()
        _write_modules()
        folder = MODULES_DIR
        env = {**os.environ, "BENCH_QUEUE": queue, "BENCH_URL": rabbitmq_url(),
               "BENCH_COUNT_FILE": str(count_file), "PYTHONPATH": str(folder)}
        worker = subprocess.Popen(system.worker_cli(broker, queue, folder), env=env, cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            first = last = 0.0
            first_batch = 0
            deadline = time.monotonic() + 1800
            rss = 0.0
            while True:
                size = count_file.stat().st_size
                now = time.perf_counter()
                if size and not first:
                    first, first_batch = now, size
                if size >= n:
                    last = now
                    break
                if worker.poll() is not None:
                    raise RuntimeError(f"{system.name} worker exited with {worker.returncode} after {size} tasks")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{system.name}: {size} of {n} in 30 min")
                time.sleep(0.002)
            for pid in [worker.pid, *_children(worker.pid)]:
                rss = max(rss, _vm_hwm_mib(pid))
            return _rate(n - first_batch, first, last), rss
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


async def measure(system: System, broker: str, n: int, inflight: int) -> dict[str, float]:
    queue = f"peers_{system.name.split()[0].lower()}_{uuid.uuid4().hex[:8]}"
    if broker == "kafka" and not system.name.startswith("nova"):
        await kafka_topic(queue)
    if system.name.startswith("nova"):
        # nova's topics (ready, dead-letter, delay tiers) exist before the timing, as the others' do.
        async with _nova_queue(broker, queue) as q:
            await q._ensure(q.router.tier_topics)
    start = time.perf_counter()
    await system.produce(broker, queue, n, inflight)
    produce = n / (time.perf_counter() - start)
    drain, rss = await asyncio.to_thread(_consumer_process, system, broker, queue, n)
    return {"produce": produce, "drain": drain, "e2e": 1 / (1 / produce + 1 / drain), "rss": rss}


async def kept_before_any_worker(system: System, broker: str) -> str:
    """Publish 10 tasks before any worker declared the queue; does a worker started after get them?"""
    queue = f"peers_kept_{uuid.uuid4().hex[:8]}"
    if broker == "kafka" and not system.name.startswith("nova"):
        await kafka_topic(queue)  # without it nothing can be published at all (no auto-creation)
    try:
        await asyncio.wait_for(system.produce(broker, queue, 10, 10), 60)
    except Exception as exc:  # noqa: BLE001 - reported as measured
        return f"publish failed: {type(exc).__name__}"
    try:
        await asyncio.wait_for(asyncio.to_thread(_consumer_process, system, broker, queue, 10), 60)
    except Exception:  # noqa: BLE001 - reported as measured
        return "no (not delivered within 60 s)"
    return "yes"


async def bench(args: argparse.Namespace) -> None:
    names = [s for s in SYSTEMS.values() if args.broker in s.brokers and (not args.systems
                                                                            or s.name.split()[0] in args.systems)]
    print(f"{args.broker}: {args.tasks:,} tasks of {len(PAYLOAD)} bytes, {args.inflight} in flight, "
          f"{args.rounds} interleaved round(s)")
    results: dict[str, list[dict[str, float]]] = {s.name: [] for s in names}
    for r in range(args.rounds):
        for system in names:
            results[system.name].append(await measure(system, args.broker, args.tasks, args.inflight))
            got = results[system.name][-1]
            print(f"  .. round {r + 1} {system.name}: produce {got['produce']:,.0f}/s, drain {got['drain']:,.0f}/s, "
                  f"e2e {got['e2e']:,.0f}/s", file=sys.stderr, flush=True)
    raw = results.get("raw")
    print("\n| system | produce/s | drain/s | end to end/s | e2e vs raw (rounds) | consumer peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for system in names:
        rows = results[system.name]

        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(x[key] for x in rows)

        ratio = ""
        if raw is not None:
            ratios = [x["e2e"] / b["e2e"] for x, b in zip(rows, raw, strict=True)]
            ratio = f"{statistics.median(ratios):.2f} ({' '.join(f'{v:.2f}' for v in ratios)})"
        print(f"| {system.name} | {med('produce'):,.0f} | {med('drain'):,.0f} | {med('e2e'):,.0f} | {ratio} | "
              f"{med('rss'):.0f} |")
    print("\nConfiguration:")
    for system in names:
        print(f"- {system.name}: {system.config}")
    if args.kept:
        print("\nKept when published before any worker declared the queue:")
        for system in names:
            print(f"- {system.name}: {await kept_before_any_worker(system, args.broker)}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "consume":
        parser = argparse.ArgumentParser()
        parser.add_argument("consume")
        parser.add_argument("--system", required=True)
        parser.add_argument("--broker", required=True)
        parser.add_argument("--queue", required=True)
        parser.add_argument("--tasks", type=int, required=True)
        parser.add_argument("--out", required=True)
        args = parser.parse_args()
        system = SYSTEMS[args.system]
        assert system.consume is not None
        count = asyncio.run(system.consume(args.broker, args.queue, args.tasks))
        Path(args.out).write_text(json.dumps({"first": count.first, "last": count.last,
                                              "first_batch": count.first_batch, "rss_mib": _rss_mib()}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", required=True, choices=["kafka", "rabbitmq"])
    parser.add_argument("--tasks", type=int, default=None, help="default: kafka 100000, rabbitmq 20000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=500)
    parser.add_argument("--systems", nargs="*", help="e.g. raw nova FastStream (default: all for the broker)")
    parser.add_argument("--kept", action="store_true", help="also check tasks published before any worker")
    args = parser.parse_args()
    args.tasks = args.tasks or (100_000 if args.broker == "kafka" else 20_000)
    asyncio.run(bench(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
