"""Benchmarks: nova side by side with the raw client, in one process and one run.

    python tools/bench.py --broker sim [--tasks 200000] [--recorder chdb [--pairs 3]]
    python tools/bench.py --broker sim --middleware metrics|tracing [--pairs 5]   # off/on pairs
    python tools/bench.py --broker kafka|rabbitmq|rocketmq   # needs the broker up (tools/brokers.py)
    python tools/bench.py --broker kafka --processes 2        # drain by `nova worker`, 1 and 2 processes

On ``sim`` the "raw" baseline drives SimBroker through the bare broker
contract (publish / subscribe / ack) with no engine, so the gap is the
engine's own cost. Figures print as a table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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


async def enqueue_each(queue: nova.TaskQueue, n: int, inflight: int = 500) -> None:
    """``n`` bench tasks, one ``enqueue`` call each, ``inflight`` calls awaited at a time (as
    many concurrent requests would call it)."""
    for i in range(0, n, inflight):
        await asyncio.gather(*(queue.enqueue(nova.Task("bench", PAYLOAD)) for _ in range(min(inflight, n - i))))


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


async def sim_nova(n: int, fmt: nova.MessageFormat, *, batch: bool, recorder: Any = None,
                   stats: dict[str, int] | None = None, middleware: list[Any] | None = None) -> float:
    broker = SimBroker(clock=nova.SystemClock())
    queue = nova.TaskQueue(broker, message_format=fmt, recorder=recorder, middleware=middleware)
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
    if stats is not None:
        stats.update(queue.recording_stats)
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


def _middleware(kind: str, sample: float = 1.0) -> tuple[list[Any], Callable[[], int]]:
    """The middleware of ``--middleware KIND`` and a count of what it saw (spans exported, tasks counted)."""
    if kind == "metrics":
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        metrics = nova.PrometheusMetrics(registry=registry)

        def counted() -> int:
            return int(registry.get_sample_value("nova_tasks_processed_total",
                                                 {"queue": "default", "type": "bench", "status": "completed"}) or 0)

        return [metrics], counted
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NoopExporter(SpanExporter):
        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    exporter = NoopExporter()
    if sample < 1:
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sample)))
    else:
        provider = TracerProvider()
    # Room for every span of a run: none dropped, so every run's spans are all made and exported.
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 17))

    def exported() -> int:
        provider.force_flush()
        return exporter.spans

    return [nova.OpenTelemetryTracing(tracer_provider=provider)], exported


async def bench_middleware(args: argparse.Namespace) -> None:
    """No middleware vs ``--middleware`` (metrics, or tracing with the SDK and a no-op exporter),
    in ``--pairs`` interleaved pairs, as ``bench_recorder``: wall time and event-loop thread CPU."""
    n = min(args.tasks, 50_000)
    fmt = nova.MessageFormat.SONIC
    offs: list[float] = []
    ons: list[float] = []
    cpu_offs: list[float] = []
    cpu_ons: list[float] = []
    loads = [os.getloadavg()[0]]
    for _ in range(args.pairs):
        gc.collect()
        cpu = time.thread_time()
        offs.append(await sim_nova(n, fmt, batch=False))
        cpu_offs.append((time.thread_time() - cpu) / n * 1e6)
        middleware, seen = _middleware(args.middleware, args.trace_sample)
        gc.collect()
        cpu = time.thread_time()
        ons.append(await sim_nova(n, fmt, batch=False, middleware=middleware))
        cpu_ons.append((time.thread_time() - cpu) / n * 1e6)
        expected = n if args.middleware == "metrics" else n + -(-n // 1000)  # a process span per task, a send per 1000
        if seen() != expected and args.trace_sample == 1:
            raise RuntimeError(f"{args.middleware} saw {seen()} of {expected}")
        loads.append(os.getloadavg()[0])
    sampled = f", {args.trace_sample:g} of traces sampled" if args.middleware == "tracing" else ""
    print(f"  --middleware {args.middleware}: {n:,} tasks ({fmt.name}, start(), concurrency 8), {args.pairs} pairs "
          f"(off, on){sampled}; load average {min(loads):.1f}-{max(loads):.1f}")
    _row(f"no middleware, median of {args.pairs}", statistics.median(offs),
         note=f"({min(offs):,.0f}-{max(offs):,.0f})")
    _row(f"{args.middleware}, median", statistics.median(ons), note=f"({min(ons):,.0f}-{max(ons):,.0f})")
    _pair_ratios(offs, ons, cpu_offs, cpu_ons)


def _pair_ratios(offs: list[float], ons: list[float], cpu_offs: list[float], cpu_ons: list[float],
                 cpu_note: str = "") -> None:
    """The rows of an off/on comparison in pairs: the median of the pairs' rates' ratios, and of the
    event loop's CPU per task."""
    ratios = [on / off for off, on in zip(offs, ons, strict=True)]
    label = "on / off, median of the pairs' ratios"
    print(f"  {label:<62}{statistics.median(ratios):>10.2f} x        "
          f"({min(ratios):.2f}-{max(ratios):.2f}; pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
    cpu_ratios = [off / on for off, on in zip(cpu_offs, cpu_ons, strict=True)]
    label = "event-loop thread CPU per task, off / on (us), median"
    print(f"  {label:<62}{statistics.median(cpu_offs):>5.2f} / {statistics.median(cpu_ons):.2f}  "
          f"ratio {statistics.median(cpu_ratios):.2f} ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}{cpu_note})")


async def bench_recorder(args: argparse.Namespace) -> None:
    """Recorder off vs on (every step recorded in chDB), in ``--pairs`` interleaved pairs.

    Each pair runs off then on, so a machine that slows down or speeds up moves both
    sides of a pair alike; the ratio printed is the median of the pairs' own ratios,
    with the lowest and highest. Every "on" run must write all its records, none dropped.
    """
    import tempfile

    n = min(args.tasks, 50_000)
    offs: list[float] = []
    ons: list[float] = []
    cpu_offs: list[float] = []  # CPU of the event loop's thread per task (us): what the recorder adds there
    cpu_ons: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        from nova._clickhouse import ClickHouseTaskRecorder

        recorder = ClickHouseTaskRecorder.from_url(f"chdb://{tmp}/bench")
        await recorder.counts()  # one-off engine start and CREATE TABLE stay out of the timing
        for _ in range(args.pairs):
            gc.collect()
            cpu = time.thread_time()
            offs.append(await sim_nova(n, nova.MessageFormat.SONIC, batch=False))
            cpu_offs.append((time.thread_time() - cpu) / n * 1e6)
            gc.collect()
            stats: dict[str, int] = {}
            cpu = time.thread_time()
            ons.append(await sim_nova(n, nova.MessageFormat.SONIC, batch=False, recorder=recorder, stats=stats))
            cpu_ons.append((time.thread_time() - cpu) / n * 1e6)
            if (stats["written"], stats["dropped"]) != (3 * n, 0):
                raise RuntimeError(f"the recorder lost records: {stats}")
        counts = await recorder.counts()
        await recorder.close()
    _row(f"recorder off ({n:,} tasks, SONIC), median of {args.pairs}", statistics.median(offs),
         note=f"({min(offs):,.0f}-{max(offs):,.0f})")
    _row("recorder on (ClickHouseTaskRecorder, chDB), median", statistics.median(ons),
         note=f"({min(ons):,.0f}-{max(ons):,.0f})")
    _pair_ratios(offs, ons, cpu_offs, cpu_ons, cpu_note="; steadier than wall time on a shared machine")
    print(f"  every on run wrote all {3 * n:,} records, none dropped; records by status after the runs: "
          f"{ {str(k): v for k, v in counts.items()} }")


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
    from bench_rocketmq import harness_options

    return nova.RocketMQBroker(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], **harness_options())


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


def _queue(broker: Any, prefix: str | None = None, group: str = "bench") -> nova.TaskQueue:
    return nova.TaskQueue(broker, topic_prefix=prefix or "bench-" + uuid.uuid4().hex[:8], group_id=group,
                          delay_slots=(8, timedelta(seconds=8)), message_format=nova.MessageFormat.SONIC)


async def _noop(task: nova.Task) -> None:
    pass


async def nova_throughput(name: str, n: int) -> dict[str, float]:
    """nova's TaskQueue on a real broker: produce, then drain, single-task and batch mode."""
    out: dict[str, float] = {}
    broker = _make_broker(name)
    try:
        for mode in ("single", "batch", "each"):
            q = _queue(broker)
            # Every topic of the queue (ready, dead-letter, delay tiers) exists before the timing,
            # as the raw client's topic does: a consumer starts and stops once on the empty queue
            # (on RabbitMQ and RocketMQ it would compete for tasks: it is gone before the first).
            warm = _queue(broker, q.prefix, group="bench-warm-up")
            await warm.start(_noop)
            await warm.stop()
            # The warm-up task is the first of the n drained: with n a multiple of the batch size
            # the last batch is full, and the drain never ends waiting out the time window for a
            # batch of one.
            await q.enqueue(nova.Task("warm-up", PAYLOAD))
            start = time.perf_counter()
            await (enqueue_each if mode == "each" else enqueue_all)(q, n - 1)
            out[f"produce_{mode}"] = (n - 1) / (time.perf_counter() - start)
            handled = Handled()
            start = time.perf_counter()
            if mode != "batch":
                await q.start(handled.one, concurrency=8, prefetch=512)
            else:
                await q.start_batch(handled.many, nova.TimeCountAggregator(500, timedelta(milliseconds=200)))
            await _wait_count(lambda: handled.count, n)  # noqa: B023 - awaited within this iteration
            out[f"drain_{mode}"] = n / (time.perf_counter() - start)
            _progress(f"{mode}: produce {out[f'produce_{mode}']:,.0f}/s, drain {out[f'drain_{mode}']:,.0f}/s")
            await q.stop()
    finally:
        await broker.close()
    return out


async def nova_timings(name: str) -> dict[str, float]:
    """Latency at a moderate rate and delay lateness on a real broker."""
    out: dict[str, float] = {}
    broker = _make_broker(name)
    try:
        # Latency at a moderate rate: 200 tasks/s for 5 s.
        async def send_paced(q: nova.TaskQueue, i: int) -> None:
            await q.enqueue(nova.Task("bench", PAYLOAD))
            await asyncio.sleep(0.005)

        latencies = await _timings(_queue(broker), 1000, send_paced, lambda t: t.enqueued_at, timeout=60)
        out["latency_p50_ms"] = _pct(latencies, 0.5) * 1000
        out["latency_p99_ms"] = _pct(latencies, 0.99) * 1000
        _progress("latency measured")

        # Delay lateness: 300 tasks due 1-10 s from now.
        async def send_delayed(q: nova.TaskQueue, i: int) -> None:
            await q.enqueue(nova.Task("bench", PAYLOAD), process_in=timedelta(seconds=1 + (i * 9 / 300)))

        lateness = await _timings(_queue(broker), 300, send_delayed, lambda t: t.eta, timeout=120)
        out["lateness_p50_ms"] = _pct(lateness, 0.5) * 1000
        out["lateness_p99_ms"] = _pct(lateness, 0.99) * 1000
        out["early"] = float(sum(1 for x in lateness if x < 0))
    finally:
        await broker.close()
    return out


async def raw_client(name: str, n: int) -> dict[str, float]:
    """The raw client's produce and drain (and, for Kafka, a hand-rolled worker's drain)."""
    if name == "kafka":
        from bench_kafka import bench_raw_aiokafka

        r = await bench_raw_aiokafka(os.environ["NOVA_KAFKA_BOOTSTRAP"], n, len(PAYLOAD))
        return {"produce": r["produce_per_s"], "drain": r["consume_per_s"], "worker": r["worker_per_s"]}
    if name == "rabbitmq":
        from bench_rabbitmq import raw_aio_pika

        r = await raw_aio_pika(os.environ["NOVA_RABBITMQ_URL"], tasks=n, size=len(PAYLOAD))
        return {"produce": r["enqueue_tps"], "drain": r["drain_tps"]}
    from bench_rocketmq import raw_rocketmq

    r = await raw_rocketmq(os.environ["NOVA_ROCKETMQ_ENDPOINTS"], n)
    return {"produce": r["produce_per_s"], "drain": r["consume_per_s"]}


def e2e(produce: float, drain: float) -> float:
    """Tasks/s from the first enqueue to the last handled: produce, then drain."""
    return 1 / (1 / produce + 1 / drain)


async def bench_real(args: argparse.Namespace) -> None:
    """Rounds of (raw client, then nova) one after the other; each figure is the median of the
    rounds and each ratio the median of the rounds' own ratios (a broker warming up moves
    both sides of a round alike)."""
    name, n, rounds = args.broker, args.tasks, args.rounds
    print(f"{name}: {n:,} tasks of {len(PAYLOAD)} bytes; {rounds} round(s) of raw client, then nova's TaskQueue")
    raws: list[dict[str, float]] = []
    novas: list[dict[str, float]] = []
    for i in range(rounds):
        raw = await raw_client(name, n)
        raw["e2e"] = e2e(raw["produce"], raw["drain"])
        raws.append(raw)
        _progress(f"round {i + 1}: raw produce {raw['produce']:,.0f}/s, drain {raw['drain']:,.0f}/s")
        out = await nova_throughput(name, n)
        for mode in ("single", "batch", "each"):
            out[f"e2e_{mode}"] = e2e(out[f"produce_{mode}"], out[f"drain_{mode}"])
        novas.append(out)
    timings = await nova_timings(name)

    def row(label: str, values: list[float], base: list[float] | None = None, note: str = "") -> None:
        text = ""
        if base is not None:
            ratios = [v / b for v, b in zip(values, base, strict=True)]
            text = f"{statistics.median(ratios):.2f}x raw"
            if len(ratios) > 1:
                text += " (rounds: " + " ".join(f"{r:.2f}" for r in ratios) + ")"
        _row(label, statistics.median(values), note=(text + " " + note).strip())

    def raw_of(key: str) -> list[float]:
        return [r[key] for r in raws]

    def nova_of(key: str) -> list[float]:
        return [o[key] for o in novas]

    row("raw client: produce (confirmed)", raw_of("produce"))
    row("raw client: consume + ack/commit", raw_of("drain"))
    row("raw client: end to end (produce, then consume)", raw_of("e2e"))
    if "worker" in raws[0]:
        row("raw hand-rolled worker: decode + await handler", raw_of("worker"))
    row("nova enqueue_batch (confirmed)", nova_of("produce_single"), raw_of("produce"))
    row("nova enqueue, one call per task, 500 at a time (confirmed)", nova_of("produce_each"), raw_of("produce"))
    modes = (("single", "start(), concurrency=8"), ("batch", "start_batch(TimeCountAggregator(500, 200ms))"))
    for mode, label in modes:
        row(f"nova {label}: drain", nova_of(f"drain_{mode}"), raw_of("drain"))
        row(f"nova {label}: end to end", nova_of(f"e2e_{mode}"), raw_of("e2e"))
    row("nova enqueue per task, then start(): end to end", nova_of("e2e_each"), raw_of("e2e"))
    _row("latency enqueue->handler p50 @200/s", timings["latency_p50_ms"], "ms")
    _row("latency enqueue->handler p99 @200/s", timings["latency_p99_ms"], "ms")
    _row("delay lateness p50 (1-10 s delays)", timings["lateness_p50_ms"], "ms")
    _row("delay lateness p99 (1-10 s delays)", timings["lateness_p99_ms"], "ms", note=f"early: {timings['early']:.0f}")


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _handled(out: Path) -> tuple[int, float]:
    """Tasks handled by every worker process so far, and when the last one was."""
    count, last = 0, 0.0
    for report in out.iterdir():
        parts = report.read_text().split()
        if len(parts) == 2:
            count += int(parts[0])
            last = max(last, float(parts[1]))
    return count, last


async def worker_drain(name: str, n: int, processes: int, concurrency: int) -> float:
    """Fill a queue with ``n`` tasks, start ``nova worker`` with ``processes`` processes, wait until
    every process is consuming, then time the drain (tasks/s)."""
    prefix = "bench-" + uuid.uuid4().hex[:8]
    tools = Path(__file__).resolve().parent  # noqa: ASYNC240 - once, before any timing
    with tempfile.TemporaryDirectory() as tmp:
        out, go = Path(tmp) / "out", Path(tmp) / "go"
        out.mkdir()
        env = {**os.environ, "NOVA_BENCH_BROKER": name, "NOVA_BENCH_PREFIX": prefix, "NOVA_BENCH_OUT": str(out),
               "NOVA_BENCH_GO": str(go), "NOVA_BENCH_PARTITIONS": str(processes),
               "PYTHONPATH": os.pathsep.join([str(tools.parent), str(tools)])}
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            from bench_worker_app import _broker

            broker = _broker()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        q = nova.TaskQueue(broker, topic_prefix=prefix, group_id="bench", message_format=nova.MessageFormat.SONIC,
                           close_broker=True)
        await enqueue_all(q, n)
        await q.stop()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        worker = subprocess.Popen(  # noqa: ASYNC220 - started before the timing
            [sys.executable, "-m", "nova.cli", "worker", "bench_worker_app:app", "--processes", str(processes),
             "--concurrency", str(concurrency), "--prefetch", "512", "--health-port", str(port),
             "--health-host", "127.0.0.1", "--log-level", "warning"], cwd=tools, env=env)
        try:
            deadline = time.monotonic() + 120
            while not _ready(port):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nova worker ({processes} process(es)) never got ready")
                await asyncio.sleep(0.05)
            started = time.time()
            go.touch()
            deadline = time.monotonic() + 600
            while (handled := _handled(out))[0] < n:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"only {handled[0]} of {n} handled")
                await asyncio.sleep(0.05)
            return n / (handled[1] - started)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


async def bench_processes(args: argparse.Namespace) -> None:
    """The raw client's drain, then `nova worker` draining with 1 and with N processes."""
    name, n, processes = args.broker, args.tasks, args.processes
    print(f"{name}: {n:,} tasks of {len(PAYLOAD)} bytes; drain of a filled queue by `nova worker` "
          f"(concurrency 8, prefetch 512) with 1 and {processes} processes, and by the raw client")
    if name == "kafka":
        print(f"  (nova's Kafka topics made here have {processes} partitions per priority level)")
    raws, ones, manys = [], [], []
    for i in range(args.rounds):
        raws.append((await raw_client(name, n))["drain"])
        ones.append(await worker_drain(name, n, 1, 8))
        manys.append(await worker_drain(name, n, processes, 8))
        _progress(f"round {i + 1}: raw {raws[-1]:,.0f}/s, 1 process {ones[-1]:,.0f}/s, "
                  f"{processes} processes {manys[-1]:,.0f}/s")
    one, many = statistics.median(ones), statistics.median(manys)
    _row("raw client: consume + ack/commit (one consumer)", statistics.median(raws))
    _row("nova worker, 1 process: drain", one, note=f"{one / statistics.median(raws):.2f}x raw")
    _row(f"nova worker, {processes} processes: drain", many,
         note=f"{statistics.median([m / o for m, o in zip(manys, ones, strict=True)]):.2f}x 1 process")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="sim", choices=["sim", "kafka", "rabbitmq", "rocketmq"])
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--recorder", choices=["chdb"], default=None)
    parser.add_argument("--pairs", type=int, default=3,
                        help="with --recorder or --middleware: interleaved (off, on) pairs to run (default 3)")
    parser.add_argument("--middleware", choices=["metrics", "tracing"], default=None,
                        help="sim: no middleware vs nova.PrometheusMetrics, or nova.OpenTelemetryTracing with the "
                             "SDK and a no-op exporter, side by side (only that)")
    parser.add_argument("--trace-sample", type=float, default=1.0, metavar="RATIO",
                        help="with --middleware tracing: the SDK samples this ratio of traces (default 1: all)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of raw client then nova on a real broker (default: 3 on Kafka, else 1)")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="instead: drain by `nova worker` with 1 and N processes (real brokers)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.broker == "sim":
        args.tasks = args.tasks or 200_000
        asyncio.run(bench_middleware(args) if args.middleware else bench_sim(args))
        return 0
    args.tasks = args.tasks or {"kafka": 100_000, "rabbitmq": 50_000, "rocketmq": 20_000}[args.broker]
    args.rounds = args.rounds or (3 if args.broker == "kafka" else 1)
    if args.processes:
        asyncio.run(bench_processes(args))
        return 0
    asyncio.run(bench_real(args))
    print(f"  peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
