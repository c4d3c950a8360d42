"""Benchmarks: nova side by side with the raw client, in one process and one run.

    python tools/bench.py --broker sim [--tasks 200000] [--recorder chdb]
    python tools/bench.py --broker kafka|rabbitmq|rocketmq   # needs the broker up (tools/brokers.py)

On ``sim`` the "raw" baseline drives SimBroker through the bare broker
contract (publish / subscribe / ack) with no engine, so the gap is the
engine's own cost. Figures print as a table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nova
from nova._broker import Message
from nova.sim import SimBroker

PAYLOAD = b"x" * 100


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.python_implementation()} {platform.python_version()}, {cpu}, {os.cpu_count()} cores"


async def _wait_count(get: Callable[[], int], n: int, timeout: float = 600) -> None:
    deadline = time.perf_counter() + timeout
    while get() < n:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {get()} of {n} handled")
        await asyncio.sleep(0.002)


class Handled:
    """No-op handlers that count what they saw."""

    def __init__(self, start: int = 0) -> None:
        self.count = start

    async def one(self, task: nova.Task) -> None:
        self.count += 1

    async def many(self, tasks: list[nova.Task]) -> None:
        self.count += len(tasks)


async def enqueue_all(queue: nova.TaskQueue, n: int) -> None:
    """``n`` bench tasks in confirmed batches of 1000."""
    for i in range(0, n, 1000):
        await queue.enqueue_batch([nova.Task("bench", PAYLOAD) for _ in range(min(1000, n - i))])


async def sim_raw(n: int) -> float:
    """Bare contract: publish in chunks, consume with a window, ack each."""
    broker = SimBroker(clock=nova.SystemClock())
    topic = "raw_default_normal"
    start = time.perf_counter()
    for i in range(0, n, 1000):
        await broker.publish([Message(topic, PAYLOAD, {"i": str(j)}) for j in range(i, min(i + 1000, n))])
    sub = await broker.subscribe([topic], group="g", window=32)
    done = 0
    async for d in sub:
        await d.ack()
        done += 1
        if done == n:
            break
    elapsed = time.perf_counter() - start
    await broker.close()
    return n / elapsed


async def sim_nova(n: int, fmt: nova.MessageFormat, *, batch: bool, recorder: Any = None) -> float:
    broker = SimBroker(clock=nova.SystemClock())
    queue = nova.TaskQueue(broker, message_format=fmt, recorder=recorder)
    handled = Handled()
    start = time.perf_counter()
    await enqueue_all(queue, n)
    if batch:
        await queue.start_batch(handled.many, nova.CountAggregator(1000))
    else:
        await queue.start(handled.one, concurrency=8)
    await _wait_count(lambda: handled.count, n)
    elapsed = time.perf_counter() - start
    await queue.stop()
    await broker.close()
    return n / elapsed


def _row(name: str, value: float, unit: str = "tasks/s", note: str = "") -> None:
    print(f"  {name:<62}{value:>10,.0f} {unit:<8} {note}")


async def bench_sim(args: argparse.Namespace) -> None:
    n = args.tasks
    print(f"sim: {n:,} tasks of {len(PAYLOAD)} bytes, end to end (enqueue_batch + consume), no-op handler")
    raw = await sim_raw(n)
    _row("raw SimBroker contract (publish/subscribe/ack)", raw)
    for fmt in (nova.MessageFormat.JSON, nova.MessageFormat.SONIC):
        gc.collect()
        single = await sim_nova(n, fmt, batch=False)
        _row(f"nova start(), {fmt.name}, concurrency=8", single, note=f"{single / raw:.2f}x raw")
        gc.collect()
        batched = await sim_nova(n, fmt, batch=True)
        _row(f"nova start_batch(CountAggregator(1000)), {fmt.name}", batched, note=f"{batched / raw:.2f}x raw")
    if args.recorder:
        await bench_recorder(args)
    print(f"  peak RSS {peak_rss_mib():.0f} MiB")


async def bench_recorder(args: argparse.Namespace) -> None:
    import tempfile

    n = min(args.tasks, 50_000)
    with tempfile.TemporaryDirectory() as tmp:
        from nova._clickhouse import ClickHouseTaskRecorder

        recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp}/bench")
        await recorder.counts()  # one-off engine start and CREATE TABLE stay out of the timing
        off = await sim_nova(n, nova.MessageFormat.SONIC, batch=False)
        on = await sim_nova(n, nova.MessageFormat.SONIC, batch=False, recorder=recorder)
        counts = await recorder.counts()
        await recorder.close()
    _row(f"recorder off ({n:,} tasks, SONIC)", off)
    _row("recorder on (ClickHouseTaskRecorder, chDB)", on, note=f"{on / off:.2f}x off")
    print(f"  records by status after the run: { {str(k): v for k, v in counts.items()} }")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def _make_broker(name: str) -> Any:
    if name == "kafka":
        return nova.KafkaBroker(os.environ["NOVA_KAFKA_BOOTSTRAP"])
    if name == "rabbitmq":
        return nova.RabbitMQBroker(os.environ["NOVA_RABBITMQ_URL"])
    kwargs: dict[str, Any] = {}
    if os.environ.get("NOVA_ROCKETMQ_ACCESS_KEY"):
        kwargs["auth"] = (os.environ["NOVA_ROCKETMQ_ACCESS_KEY"], os.environ["NOVA_ROCKETMQ_SECRET_KEY"])
    return nova.RocketMQBroker(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], **kwargs)


async def _timings(
    q: nova.TaskQueue,
    count: int,
    send: Callable[[nova.TaskQueue, int], Awaitable[None]],
    reference: Callable[[nova.Task], datetime | None],
    *,
    timeout: float,
) -> list[float]:
    """Seconds from ``reference(task)`` to the handler call, for ``count`` tasks sent by ``send``."""
    delays: list[float] = []

    async def measure(task: nova.Task) -> None:
        at = reference(task)
        assert at is not None
        delays.append(time.time() - at.timestamp())

    await q.start(measure, concurrency=8)
    for i in range(count):
        await send(q, i)
    await _wait_count(lambda: len(delays), count, timeout=timeout)
    await q.stop()
    return delays


async def nova_real(name: str, n: int) -> dict[str, float]:
    """nova's TaskQueue on a real broker: produce, drain (single and batch), latency, delay lateness."""
    out: dict[str, float] = {}
    broker = _make_broker(name)
    slots = (8, timedelta(seconds=8))
    try:
        def queue(prefix: str | None = None, group: str = "bench") -> nova.TaskQueue:
            return nova.TaskQueue(broker, topic_prefix=prefix or "bench-" + uuid.uuid4().hex[:8], group_id=group,
                                  delay_slots=slots, message_format=nova.MessageFormat.SONIC)

        async def noop(task: nova.Task) -> None:
            pass

        for mode in ("single", "batch"):
            q = queue()
            # Every topic of the queue (ready, dead-letter, delay tiers) exists before the timing,
            # as the raw client's topic does: a consumer starts and stops once on the empty queue
            # (on RabbitMQ and RocketMQ it would compete for tasks: it is gone before the first).
            warm = queue(q.prefix, group="bench-warm-up")
            await warm.start(noop)
            await warm.stop()
            # The warm-up task is the first of the n drained: with n a multiple of the batch size
            # the last batch is full, and the drain never ends waiting out the time window for a
            # batch of one.
            await q.enqueue(nova.Task("warm-up", PAYLOAD))
            start = time.perf_counter()
            await enqueue_all(q, n - 1)
            out[f"produce_{mode}"] = (n - 1) / (time.perf_counter() - start)
            handled = Handled()
            start = time.perf_counter()
            if mode == "single":
                await q.start(handled.one, concurrency=8, prefetch=512)
            else:
                await q.start_batch(handled.many, nova.TimeCountAggregator(500, timedelta(milliseconds=200)))
            await _wait_count(lambda: handled.count, n)  # noqa: B023 - awaited within this iteration
            out[f"drain_{mode}"] = n / (time.perf_counter() - start)
            _progress(f"{mode}: produce {out[f'produce_{mode}']:,.0f}/s, drain {out[f'drain_{mode}']:,.0f}/s")
            await q.stop()

        # Latency at a moderate rate: 200 tasks/s for 5 s.
        async def send_paced(q: nova.TaskQueue, i: int) -> None:
            await q.enqueue(nova.Task("bench", PAYLOAD))
            await asyncio.sleep(0.005)

        latencies = await _timings(queue(), 1000, send_paced, lambda t: t.enqueued_at, timeout=60)
        out["latency_p50_ms"] = _pct(latencies, 0.5) * 1000
        out["latency_p99_ms"] = _pct(latencies, 0.99) * 1000
        _progress("latency measured")

        # Delay lateness: 300 tasks due 1-10 s from now.
        async def send_delayed(q: nova.TaskQueue, i: int) -> None:
            await q.enqueue(nova.Task("bench", PAYLOAD), process_in=timedelta(seconds=1 + (i * 9 / 300)))

        lateness = await _timings(queue(), 300, send_delayed, lambda t: t.eta, timeout=120)
        out["lateness_p50_ms"] = _pct(lateness, 0.5) * 1000
        out["lateness_p99_ms"] = _pct(lateness, 0.99) * 1000
        out["early"] = float(sum(1 for x in lateness if x < 0))
    finally:
        await broker.close()
    return out


async def bench_real(args: argparse.Namespace) -> None:
    name, n = args.broker, args.tasks
    print(f"{name}: {n:,} tasks of {len(PAYLOAD)} bytes; raw client first, then nova's TaskQueue")
    raw: dict[str, float] = {}
    if name == "kafka":
        from bench_kafka import bench_raw_aiokafka

        r = await bench_raw_aiokafka(os.environ["NOVA_KAFKA_BOOTSTRAP"], n, len(PAYLOAD))
        raw = {"produce": r["produce_per_s"], "drain": r["consume_per_s"], "worker": r["worker_per_s"]}
    elif name == "rabbitmq":
        from bench_rabbitmq import raw_aio_pika

        r = await raw_aio_pika(os.environ["NOVA_RABBITMQ_URL"], tasks=n, size=len(PAYLOAD))
        raw = {"produce": r["enqueue_tps"], "drain": r["drain_tps"]}
    elif name == "rocketmq":
        try:
            from bench_rocketmq import raw_rocketmq  # type: ignore[import-not-found]
        except ImportError:
            print("  (no raw RocketMQ baseline in tools/bench_rocketmq.py)")
        else:
            r = await raw_rocketmq(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], n)
            raw = {"produce": r["produce_per_s"], "drain": r["consume_per_s"]}
    _progress("raw client done")
    out = await nova_real(name, n)
    def e2e(produce: float, drain: float) -> float:
        """Tasks/s from the first enqueue to the last handled: produce, then drain."""
        return 1 / (1 / produce + 1 / drain)

    def versus(value: float, key: str) -> str:
        return f"{value / raw[key]:.2f}x raw" if raw.get(key) else ""

    if raw:
        raw["e2e"] = e2e(raw["produce"], raw["drain"])
        _row("raw client: produce (confirmed)", raw["produce"])
        _row("raw client: consume + ack/commit", raw["drain"])
        _row("raw client: end to end (produce, then consume)", raw["e2e"])
        if "worker" in raw:
            _row("raw hand-rolled worker: decode + await handler", raw["worker"],
                 note=f"end to end {e2e(raw['produce'], raw['worker']):,.0f}/s")
    _row("nova enqueue_batch (confirmed)", out["produce_single"], note=versus(out["produce_single"], "produce"))
    modes = (("single", "start(), concurrency=8"), ("batch", "start_batch(TimeCountAggregator(500, 200ms))"))
    for mode, label in modes:
        drain, whole = out[f"drain_{mode}"], e2e(out[f"produce_{mode}"], out[f"drain_{mode}"])
        _row(f"nova {label}: drain", drain, note=versus(drain, "drain"))
        _row(f"nova {label}: end to end", whole, note=versus(whole, "e2e"))
    _row("latency enqueue->handler p50 @200/s", out["latency_p50_ms"], "ms")
    _row("latency enqueue->handler p99 @200/s", out["latency_p99_ms"], "ms")
    _row("delay lateness p50 (1-10 s delays)", out["lateness_p50_ms"], "ms")
    _row("delay lateness p99 (1-10 s delays)", out["lateness_p99_ms"], "ms", note=f"early: {out['early']:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="sim", choices=["sim", "kafka", "rabbitmq", "rocketmq"])
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--recorder", choices=["chdb"], default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.broker == "sim":
        args.tasks = args.tasks or 200_000
        asyncio.run(bench_sim(args))
        return 0
    args.tasks = args.tasks or {"kafka": 100_000, "rabbitmq": 50_000, "rocketmq": 20_000}[args.broker]
    asyncio.run(bench_real(args))
    print(f"  peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
