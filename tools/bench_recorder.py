"""ClickHouseTaskRecorder throughput on chDB (or a server), and the cost of its queries.

    python tools/bench_recorder.py [--events 100000] [--batch 1000] [--url chdb:///tmp/x]

Phases, on a fresh table:

- record: ``record()`` batches of ``--batch`` events (a task = queued, processing,
  completed), one INSERT each, awaited one after another; rows/s;
- sink: the same events emitted through ``RecordingSink.emit_step`` with its default
  batching (what the engine does): the hot-path cost per event, the time until
  ``close()`` has flushed them, and how many were dropped;
- queries: ``get`` (p50/p99 over 200 ids), ``list(limit=50)``, ``list(status=...)``,
  ``counts`` and ``counts_by_queue`` over the whole table.

``tools/bench.py`` imports :func:`recorder_throughput`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nova._clickhouse import ClickHouseTaskRecorder
from nova._clock import SystemClock
from nova._recording import TaskEvent, TaskStatus
from nova._sink import RecordingSink

__all__ = ["recorder_throughput"]

Result = dict[str, float]
_LIFECYCLE = (TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.COMPLETED)


def _events(count: int, prefix: str) -> list[TaskEvent]:
    start = datetime.now(UTC)
    out: list[TaskEvent] = []
    task = 0
    while len(out) < count:
        task_id = f"{prefix}-{task}"
        for step, status in enumerate(_LIFECYCLE):
            at = start + timedelta(milliseconds=task * 3 + step)
            out.append(TaskEvent(
                task_id=task_id, type="email", queue=f"q{task % 4}", priority=2, status=status,
                at=at, version=int(at.timestamp() * 1_000_000), headers={"tenant": "bench"},
            ))
        task += 1
    return out[:count]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(coro: object) -> float:
    started = time.perf_counter()
    await coro  # type: ignore[misc]
    return time.perf_counter() - started


async def recorder_throughput(url: str | None = None, *, events: int = 100_000, batch: int = 1000) -> Result:
    """Run the phases above; returns figures (rows/s, seconds, counts). ``url`` None: a temp chDB dir."""
    with tempfile.TemporaryDirectory(prefix="nova-bench-recorder-") as tmp:
        url = url or f"chdb://{tmp}"
        table = f"nova_bench_{uuid.uuid4().hex[:8]}"
        recorder = ClickHouseTaskRecorder.from_url(url, table)
        try:
            await recorder.counts()  # connect and create the table outside the timings
            result: Result = {"events": float(events), "batch": float(batch)}

            data = _events(events, "rec")
            started = time.perf_counter()
            for i in range(0, len(data), batch):
                await recorder.record(data[i:i + batch])
            elapsed = time.perf_counter() - started
            result["record_s"] = elapsed
            result["record_rows_per_s"] = events / elapsed

            sink = RecordingSink(recorder, SystemClock())
            data = _events(events, "sink")
            started = time.perf_counter()
            for e in data:
                sink.emit_step(e.task_id, e.type, e.queue, e.priority, e.status, e.attempt, e.error, e.eta,
                               e.headers, e.payload)
            result["sink_emit_us_per_event"] = (time.perf_counter() - started) / events * 1e6
            await sink.close()
            elapsed = time.perf_counter() - started
            result["sink_s"] = elapsed
            result["sink_rows_per_s"] = sink.written / elapsed
            result["sink_dropped"] = float(sink.dropped)

            ids = [f"rec-{i}" for i in range(0, events // len(_LIFECYCLE), max(1, events // 600))][:200]
            gets = [await _timed(recorder.get(i)) for i in ids]
            result["get_p50_ms"] = _percentile(gets, 0.5) * 1000
            result["get_p99_ms"] = _percentile(gets, 0.99) * 1000
            result["list_50_ms"] = await _timed(recorder.list(limit=50)) * 1000
            result["list_status_ms"] = await _timed(recorder.list(status=TaskStatus.COMPLETED, limit=50)) * 1000
            result["counts_ms"] = await _timed(recorder.counts()) * 1000
            result["counts_by_queue_ms"] = await _timed(recorder.counts_by_queue()) * 1000
            result["tasks"] = float(sum((await recorder.counts()).values()))
            return result
        finally:
            await recorder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--url", help="recorder URL (default: a temporary chDB directory)")
    args = parser.parse_args()
    result = asyncio.run(recorder_throughput(args.url, events=args.events, batch=args.batch))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value:,.1f}")


if __name__ == "__main__":
    main()
