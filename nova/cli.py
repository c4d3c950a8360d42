"""The ``nova`` command.

    nova demo                                   # SimBroker in real time, about 10 s
    nova demo --broker kafka://127.0.0.1:9092   # the same demo on a real broker
    nova demo --recorder chdb:///tmp/nova-demo  # record it in embedded ClickHouse
    nova tasks --recorder chdb:///tmp/nova-demo # look at recorded tasks
    nova worker shop.tasks:app                  # run a nova.App's handlers (see nova worker --help)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import nova

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nova", description="nova task queue")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a short demo: priorities, delays, a retry, a batch consumer")
    demo.add_argument("--broker", default="sim://", help="broker URL (default: sim://, in-memory, real time)")
    demo.add_argument("--recorder", default=None, help="task recorder URL, e.g. chdb:///tmp/nova-demo")
    demo.add_argument("--quiet", action="store_true", help="print only the summary")
    try:
        from nova._cli_tasks import add_tasks_parser
    except ImportError:  # the recorder CLI needs nothing optional to parse; be safe anyway
        pass
    else:
        add_tasks_parser(sub)
    from nova._runtime import add_worker_parser

    add_worker_parser(sub)
    from nova.dashboard._cli import add_dashboard_parser

    add_dashboard_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "worker":  # its own logging, signals and exit codes
        from nova._runtime import run_worker

        return run_worker(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        return asyncio.run(run_demo(args.broker, args.recorder, quiet=args.quiet))
    if args.command == "dashboard":
        from nova.dashboard._cli import run_dashboard

        return run_dashboard(args)
    from nova._cli_tasks import run_tasks

    return asyncio.run(run_tasks(args))


def _open_recorder(url: str | None) -> Any:
    if url is None:
        return nova.MemoryTaskRecorder()
    from nova._clickhouse import ClickHouseTaskRecorder

    return ClickHouseTaskRecorder.from_url(url)


async def run_demo(broker_url: str, recorder_url: str | None, *, quiet: bool = False) -> int:
    """Enqueue a small mixed workload, consume it, print progress and a summary."""
    started = time.monotonic()
    recorder = _open_recorder(recorder_url)
    prefix = "demo-" + uuid.uuid4().hex[:8]
    options: dict[str, Any] = {
        "topic_prefix": prefix,
        "group_id": "demo",
        "recorder": recorder,
        "retry": nova.RetryPolicy(max_retries=2, backoff=nova.ConstantBackoff(timedelta(seconds=1))),
        "delay_slots": (8, timedelta(seconds=4)),
    }

    def say(text: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - started:5.2f}s] {text}", flush=True)

    ids: list[str] = []
    handled: Counter[str] = Counter()
    batches: list[int] = []
    expected = Counter({"low": 3, "normal": 3, "high": 3, "delayed": 3, "flaky": 1})
    all_done = asyncio.Event()

    def check_done() -> None:
        if handled == expected and sum(batches) >= 7:
            all_done.set()

    async def handle(task: nova.Task) -> None:
        say(f"handled {task.type:<8} priority={task.priority.name:<6} attempt={task.attempt}")
        if task.type == "flaky" and task.attempt < 3:
            raise RuntimeError(f"flaky failure on attempt {task.attempt}")
        handled[task.type] += 1
        check_done()

    async def handle_batch(tasks: list[nova.Task]) -> None:
        batches.append(len(tasks))
        say(f"batch of {len(tasks)} report(s)")
        check_done()

    producer = nova.TaskQueue.from_url(broker_url, **options)
    worker = nova.TaskQueue(producer.broker, **options)
    batcher = nova.TaskQueue(producer.broker, **options)
    try:
        say(f"broker {type(producer.broker).__name__}, topic prefix {prefix}")
        for level in (nova.Priority.LOW, nova.Priority.NORMAL, nova.Priority.HIGH):
            results = await producer.enqueue_batch(
                [nova.Task(level.name.lower(), f"{level.name} #{i}".encode()) for i in range(3)], priority=level)
            ids += [r.id for r in results]
        say("enqueued 3 LOW, 3 NORMAL, 3 HIGH tasks")
        for seconds in (1, 2, 3):
            r = await producer.enqueue(nova.Task("delayed", f"in {seconds}s".encode()),
                                       process_in=timedelta(seconds=seconds))
            ids.append(r.id)
        say("enqueued 3 tasks delayed by 1, 2 and 3 s")
        ids.append((await producer.enqueue(nova.Task("flaky", b"fails twice"))).id)
        say("enqueued 1 task that fails twice and then succeeds")
        reports = await producer.enqueue_batch([nova.Task("report", f"r{i}".encode()) for i in range(7)],
                                               queue="reports")
        ids += [r.id for r in reports]
        say("enqueued 7 reports for the batch consumer (batches of 5, or every 2 s)")

        await worker.start(handle, concurrency=1)
        await batcher.start_batch(handle_batch, nova.TimeCountAggregator(5, timedelta(seconds=2)),
                                  queues=["reports"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), timeout=12)
    finally:
        await batcher.stop()
        await worker.stop()
        await producer.stop()
    rows = []
    for task_id in ids:
        record = await recorder.get(task_id)
        rows.append(record)
    await recorder.close()
    statuses = Counter(r.status.value if r else "missing" for r in rows)
    print("\nsummary (from the task recorder)")
    print(f"{'type':<10}{'tasks':>6}  statuses")
    by_type: dict[str, Counter[str]] = {}
    for r in rows:
        if r is not None:
            by_type.setdefault(r.type, Counter())[r.status.value] += 1
    for type_, counts in sorted(by_type.items()):
        print(f"{type_:<10}{sum(counts.values()):>6}  " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print(f"batches: {batches}; total {len(ids)} tasks: "
          + ", ".join(f"{k}={v}" for k, v in sorted(statuses.items()))
          + f"; {time.monotonic() - started:.1f} s")
    ok = statuses.get("completed", 0) == len(ids)
    if not ok:
        print("demo did not complete every task", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
