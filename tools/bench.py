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
from datetime import timedelta
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
    handled = 0

    async def handle(task: nova.Task) -> None:
        nonlocal handled
        handled += 1

    async def handle_batch(tasks: list[nova.Task]) -> None:
        nonlocal handled
        handled += len(tasks)

    start = time.perf_counter()
    for i in range(0, n, 1000):
        await queue.enqueue_batch([nova.Task("bench", PAYLOAD) for _ in range(min(1000, n - i))])
    if batch:
        await queue.start_batch(handle_batch, nova.CountAggregator(1000))
    else:
        await queue.start(handle, concurrency=8)
    await _wait_count(lambda: handled, n)
    elapsed = time.perf_counter() - start
    await queue.stop()
    await broker.close()
    return n / elapsed


def _row(name: str, value: float, unit: str = "tasks/s", note: str = "") -> None:
    print(f"  {name:<48}{value:>12,.0f} {unit:<8} {note}")


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
        off = await sim_nova(n, nova.MessageFormat.SONIC, batch=False)
        on = await sim_nova(n, nova.MessageFormat.SONIC, batch=False, recorder=recorder)
        counts = await recorder.counts()
        await recorder.close()
    _row(f"recorder off ({n:,} tasks, SONIC)", off)
    _row("recorder on (ClickHouseTaskRecorder, chDB)", on, note=f"{on / off:.2f}x off")
    print(f"  records by status after the run: { {str(k): v for k, v in counts.items()} }")


REAL: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {}


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
    module = __import__(f"bench_{args.broker}")
    asyncio.run(module.bench(args))
    print(f"  peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _ = uuid, timedelta
    sys.exit(main())
