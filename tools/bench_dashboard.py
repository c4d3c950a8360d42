"""The dashboard's queries over a large task-record table: fill it, then time them.

    python tools/bench_dashboard.py --url chdb:///tmp/nova-bench-dash --tasks 1000000 fill
    python tools/bench_dashboard.py --url chdb:///tmp/nova-bench-dash measure [--rounds 5]

``measure`` prints wall times and the CPU time of this process (chDB runs in it), which
the machine's load changes less than it changes wall times.

``--partition-by-day`` creates the table partitioned by day before filling it, to
compare that layout (not the recorder's) with the recorder's.

``fill`` writes ``--tasks`` tasks' lifecycles (about 3.2 events each: most complete at
once, some retry, some are dead-lettered, some are delayed, a few are still queued,
running or retrying) spread over the ``--span`` before now, through the recorder's own
insert path, in batches of ``--batch`` events, then merges the table (``OPTIMIZE ...
FINAL``, as ClickHouse's background merges would in time). ``measure`` times what each
dashboard page asks (median and worst of ``--rounds``, after one warm-up round): the
overview (counts per queue and status, oldest waiting task, per-minute series and
percentiles for the 1 h default window, and the 7-day widest one), the task list
unfiltered, filtered by status, by status and queue, by type, and the id search.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nova._clickhouse import _CREATE, ClickHouseTaskRecorder
from nova._recording import TaskStatus

QUEUES = ("default", "email", "reports", "billing")
TYPES = ("email.send", "email.digest", "report.build", "report.export", "invoice.create", "invoice.remind",
         "image.resize", "search.index", "webhook.deliver", "cleanup")
ERRORS = (
    "TimeoutError: smtp.example.com did not answer within 10 s",
    "ConnectionError: upstream refused the connection",
    "ValueError: invoice 4711 has no lines",
    "KeyError: 'customer_id'",
)


class _Columns:
    """EventColumns being built (the recorder's batch form)."""

    def __init__(self) -> None:
        self.columns: tuple[list[Any], ...] = tuple([] for _ in range(12))
        self.last_version = 0

    def add(self, task_id: str, type_: str, queue: str, priority: int, status: TaskStatus, at: float,
            attempt: int = 1, error: str | None = None, eta: float | None = None) -> None:
        version = max(int(at * 1_000_000), self.last_version + 1)
        self.last_version = version
        row = (task_id, type_, queue, priority, status, at, version, attempt, error,
               None if eta is None else datetime.fromtimestamp(eta, UTC), (), None)
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)

    def __len__(self) -> int:
        return len(self.columns[0])


def _task(out: _Columns, rng: random.Random, n: int, start: float, now: float) -> None:
    """One task's events (task ``n``), created at a uniform time in [start, now)."""
    t0 = start + (now - start) * rng.random()
    task_id = f"{rng.getrandbits(128):032x}"
    queue = QUEUES[n % len(QUEUES)] if rng.random() < 0.7 else "default"
    type_ = TYPES[rng.randrange(len(TYPES))]
    priority = rng.choice((1, 2, 2, 2, 3))
    add = out.add

    def run(at: float, attempt: int, eta: float | None, outcome: str) -> float:
        """One attempt from the moment it is due: processing after a wait, then the outcome."""
        started = at + rng.expovariate(1 / 0.15)
        if started >= now:
            return now
        add(task_id, type_, queue, priority, TaskStatus.PROCESSING, started, attempt, None, eta)
        ended = started + rng.lognormvariate(-3.2, 0.9)
        if ended >= now or outcome == "running":
            return now
        if outcome == "ok":
            add(task_id, type_, queue, priority, TaskStatus.COMPLETED, ended, attempt, None, eta)
        elif outcome == "retry":
            add(task_id, type_, queue, priority, TaskStatus.RETRYING, ended, attempt, rng.choice(ERRORS), eta)
        else:
            add(task_id, type_, queue, priority, TaskStatus.FAILED, ended, attempt, rng.choice(ERRORS), eta)
        return ended

    kind = rng.random()
    if kind < 0.02:  # delayed by 1 min to 2 h
        eta = t0 + rng.uniform(60, 7200)
        add(task_id, type_, queue, priority, TaskStatus.PENDING, t0, 1, None, eta)
        if eta < now:
            run(eta, 1, eta, "ok")
        return
    add(task_id, type_, queue, priority, TaskStatus.QUEUED, t0, 1)
    if kind < 0.90:
        run(t0, 1, None, "ok")
    elif kind < 0.97:  # retried: once then done, or dead-lettered after three attempts
        dead = kind >= 0.94
        at, eta = t0, None
        for attempt in (1, 2, 3):
            last = attempt == 3 or (not dead and attempt == 2)
            outcome = ("failed" if dead else "ok") if last else "retry"
            ended = run(at, attempt, eta, outcome)
            if ended >= now or last:
                break
            at = eta = ended + 2.0 ** attempt
            if at >= now:
                break
    elif kind < 0.98:  # still running
        run(t0, 1, None, "running")
    # else: still queued (never picked up)


async def fill(url: str, table: str, tasks: int, span: timedelta, batch: int, seed: int, by_day: bool) -> None:
    recorder = ClickHouseTaskRecorder.from_url(url, table)
    if by_day:  # the same table, partitioned by day (a layout to compare, not the recorder's)
        create = _CREATE.replace("ORDER BY", "PARTITION BY toYYYYMMDD(at)\nORDER BY").format(table=recorder._quoted)
        await recorder._run("create", lambda c: c.command(create))
    rng = random.Random(seed)
    now = time.time()
    start = now - span.total_seconds()
    started = time.perf_counter()
    events = 0
    try:
        out = _Columns()
        for n in range(tasks):
            _task(out, rng, n, start, now)
            if len(out) >= batch:
                events += len(out)
                await recorder.record_columns(out.columns)
                out = _Columns()
        if len(out):
            events += len(out)
            await recorder.record_columns(out.columns)
        print(f"filled {tasks} tasks, {events} events in {time.perf_counter() - started:.1f} s", flush=True)
        merged = time.perf_counter()
        await recorder._run("optimize", lambda c: c.command(f"OPTIMIZE TABLE {recorder._quoted} FINAL"))
        print(f"merged in {time.perf_counter() - merged:.1f} s")
    finally:
        await recorder.close()


async def _time(rounds: int, fn: Callable[[], Awaitable[object]]) -> tuple[float, float, float]:
    """Median and worst wall time, and median CPU time of this process (every thread: chDB's too)."""
    await fn()
    times, cpu = [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        await fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), max(times), statistics.median(cpu)


async def measure(url: str, table: str, rounds: int) -> None:
    from nova.dashboard._queries import DashboardQueries, ListFilter

    recorder = ClickHouseTaskRecorder.from_url(url, table)
    queries = DashboardQueries(recorder)
    try:
        rows = await recorder._run("count", lambda c: c.query(
            f"SELECT count(), uniqExact(task_id) FROM {recorder._quoted}").result_rows[0])
        print(f"table: {rows[0]} events, {rows[1]} tasks")
        some = await recorder.list(status=TaskStatus.FAILED, limit=1)
        prefix = some[0].task_id[:6] if some else "00"
        cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("overview (1 h window)", lambda: queries.overview(window=timedelta(hours=1))),
            ("overview (7 d window)", lambda: queries.overview(window=timedelta(days=7))),
            ("list, no filter", lambda: queries.tasks(ListFilter(), limit=50)),
            ("list, status=failed", lambda: queries.tasks(ListFilter.of(TaskStatus.FAILED), limit=50)),
            ("list, status=completed", lambda: queries.tasks(ListFilter.of(TaskStatus.COMPLETED), limit=50)),
            ("list, status=failed queue=email",
             lambda: queries.tasks(ListFilter.of(TaskStatus.FAILED, queue="email"), limit=50)),
            ("list, type=cleanup page 5",
             lambda: queries.tasks(ListFilter(type="cleanup"), limit=50, offset=200)),
            ("list, status=queued since 1d",
             lambda: queries.tasks(ListFilter.of(TaskStatus.QUEUED,
                                              since=datetime.now(UTC) - timedelta(days=1)), limit=50)),
            (f"list, id prefix {prefix!r}", lambda: queries.tasks(ListFilter(id_prefix=prefix), limit=50)),
            ("task page", lambda: queries.task(some[0].task_id if some else "x")),
        ]
        print(f"load average {' '.join(os.getloadavg().__repr__().strip('()').split(', '))}")
        for name, fn in cases:
            median, worst, cpu = await _time(rounds, fn)
            print(f"{name:<34} median {median * 1000:7.1f} ms   worst {worst * 1000:7.1f} ms   "
                  f"CPU {cpu * 1000:7.1f} ms", flush=True)
    finally:
        await recorder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="chdb:///tmp/nova-bench-dashboard", help="recorder URL")
    parser.add_argument("--table", default="nova_task_records", help="recorder table")
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fill")
    f.add_argument("--tasks", type=int, default=1_000_000)
    f.add_argument("--span", type=float, default=24.0, help="hours before now the tasks are spread over")
    f.add_argument("--batch", type=int, default=200_000, help="events per insert")
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--partition-by-day", action="store_true",
                   help="create the table PARTITION BY toYYYYMMDD(at) first (to compare layouts)")
    m = sub.add_parser("measure")
    m.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.command == "fill":
        asyncio.run(fill(args.url, args.table, args.tasks, timedelta(hours=args.span), args.batch, args.seed,
                         args.partition_by_day))
    else:
        asyncio.run(measure(args.url, args.table, args.rounds))


if __name__ == "__main__":
    main()
