"""``nova tasks``: look at what a task recorder recorded.

    nova tasks --recorder chdb:///var/lib/nova/tasks --status failed --since 1h
    nova tasks show 3f1c... --recorder chdb:///var/lib/nova/tasks
    nova tasks stats --recorder https://nova:pw@ch.example:8443/ops

``--recorder`` defaults to ``$NOVA_RECORDER``. Output is plain-text tables, UTC times.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from nova._errors import NovaError
from nova._recording import QueryableTaskRecorder, TaskEvent, TaskRecord, TaskStatus

__all__ = ["add_tasks_parser", "non_negative_int", "recorder_url", "run_tasks"]

_DURATION = re.compile(r"(?:\d+[smhdw])+")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ERROR_WIDTH = 60


def parse_when(text: str) -> datetime | timedelta:
    """``1h``, ``30m``, ``2d12h``, ``90s``, ``1w`` (that long ago) or an ISO time (naive = UTC).

    >>> parse_when("1h30m")
    datetime.timedelta(seconds=5400)
    """
    text = text.strip()
    if _DURATION.fullmatch(text):
        total = timedelta()
        for amount, unit in re.findall(r"(\d+)([smhdw])", text):
            total += timedelta(**{_UNITS[unit]: int(amount)})
        return total
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 1h, 2d, 1w) nor an ISO time (2030-01-31T12:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _resolve(value: datetime | timedelta | None, now: datetime) -> datetime | None:
    return now - value if isinstance(value, timedelta) else value


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Sub-commands repeat these with SUPPRESS so `nova tasks show ID --recorder X`
    # works without clobbering a value given before the sub-command.
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--recorder", metavar="URL", default=default,
                        help="chdb:///path, chdb://memory or http(s)://user:pass@host:port/db "
                             "(default: $NOVA_RECORDER)")
    parser.add_argument("--table", default=argparse.SUPPRESS if suppress else "nova_task_records",
                        help="recorder table (default: nova_task_records)")


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number, 0 or more (``nova tasks --limit``, ``nova dashboard --refresh``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def recorder_url(given: str | None, command: str) -> str | None:
    """``--recorder``, else ``$NOVA_RECORDER``; None after telling the user on stderr how to give one."""
    url = given or os.environ.get("NOVA_RECORDER")
    if not url:
        print(f"nova {command}: pass --recorder URL (e.g. chdb:///var/lib/nova/records) or set NOVA_RECORDER",
              file=sys.stderr)
        return None
    return url


def add_tasks_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tasks`` (list), ``tasks show ID`` and ``tasks stats`` to the ``nova`` command."""
    parser = subparsers.add_parser(
        "tasks", help="list recorded tasks (and: show ID, stats)",
        description="List recorded tasks, newest first. `nova tasks show ID` prints one task's history; "
                    "`nova tasks stats` counts tasks per status and per queue.")
    _add_common(parser, suppress=False)
    parser.add_argument("--status", choices=[s.value for s in TaskStatus], help="current status")
    parser.add_argument("--queue", help="current queue")
    parser.add_argument("--type", help="task type")
    parser.add_argument("--since", type=parse_when, metavar="WHEN",
                        help="updated at or after: a duration ago (30m, 1h, 2d) or an ISO time")
    parser.add_argument("--until", type=parse_when, metavar="WHEN", help="updated before (same forms)")
    parser.add_argument("--limit", type=non_negative_int, default=50, help="rows to print (default: 50)")
    parser.add_argument("--offset", type=non_negative_int, default=0, help="rows to skip (default: 0)")
    commands = parser.add_subparsers(dest="tasks_command", metavar="{show,stats}")
    show = commands.add_parser("show", help="one task's state and history",
                               description="Print one task's latest state and every recorded event.")
    show.add_argument("task_id", metavar="ID")
    _add_common(show, suppress=True)
    stats = commands.add_parser("stats", help="tasks per status and per queue",
                                description="Count tasks per current status and per queue.")
    _add_common(stats, suppress=True)


async def run_tasks(args: argparse.Namespace) -> int:
    """Run ``nova tasks ...``; returns the exit status (0 ok, 1 not found or failed, 2 usage)."""
    url = recorder_url(args.recorder, "tasks")
    if url is None:
        return 2
    from nova._clickhouse import ClickHouseTaskRecorder

    try:
        recorder = ClickHouseTaskRecorder.from_url(url, args.table)
    except (NovaError, ImportError) as exc:
        print(f"nova tasks: {exc}", file=sys.stderr)
        return 2
    try:
        command = getattr(args, "tasks_command", None)
        if command == "show":
            return await _show(recorder, args.task_id)
        if command == "stats":
            return await _stats(recorder)
        return await _list(recorder, args)
    except NovaError as exc:
        print(f"nova tasks: {exc}", file=sys.stderr)
        return 1
    finally:
        await recorder.close()


async def _list(recorder: QueryableTaskRecorder, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    records = await recorder.list(
        status=TaskStatus(args.status) if args.status else None,
        queue=args.queue,
        type=args.type,
        since=_resolve(args.since, now),
        until=_resolve(args.until, now),
        limit=args.limit,
        offset=args.offset,
    )
    if not records:
        print("no tasks match")
        return 0
    _table(
        ["ID", "TYPE", "QUEUE", "STATUS", "RETRIES", "UPDATED (UTC)", "ERROR"],
        [[r.task_id, r.type, r.queue, r.status.value, str(r.retry_count), _time(r.updated_at),
          _short(r.error)] for r in records],
    )
    more = "; --offset/--limit for more" if len(records) == args.limit else ""
    print(f"({len(records)} task{'s' if len(records) != 1 else ''}{more})")
    return 0


async def _show(recorder: QueryableTaskRecorder, task_id: str) -> int:
    record = await recorder.get(task_id)
    if record is None:
        print(f"nova tasks: no recorded task {task_id!r}", file=sys.stderr)
        return 1
    history = await recorder.history(task_id)
    _pairs(_describe(record))
    print()
    _history(history)
    return 0


async def _stats(recorder: QueryableTaskRecorder) -> int:
    by_queue = await recorder.counts_by_queue()
    totals: dict[TaskStatus, int] = {}
    for per_status in by_queue.values():
        for status, n in per_status.items():
            totals[status] = totals.get(status, 0) + n
    if not totals:
        print("no tasks recorded")
        return 0
    statuses = [s for s in TaskStatus if s in totals]
    _table(["STATUS", "TASKS"],
           [[s.value, str(totals[s])] for s in statuses] + [["total", str(sum(totals.values()))]],
           right={1})
    print()
    _table(
        ["QUEUE", *(s.value.upper() for s in statuses), "TOTAL"],
        [[queue, *(str(by_queue[queue].get(s, 0)) for s in statuses), str(sum(by_queue[queue].values()))]
         for queue in sorted(by_queue)],
        right=set(range(1, len(statuses) + 2)),
    )
    return 0


# -- formatting -------------------------------------------------------------------
def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(text: str | None, width: int = _ERROR_WIDTH) -> str:
    """One line of an error: the last, which for a traceback is the exception itself."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _describe(record: TaskRecord) -> list[tuple[str, str]]:
    return [
        ("task", record.task_id),
        ("type", record.type),
        ("queue", record.queue),
        ("priority", str(record.priority)),
        ("status", record.status.value),
        ("retries", str(record.retry_count)),
        ("created", _time(record.created_at)),
        ("started", _time(record.started_at)),
        ("completed", _time(record.completed_at)),
        ("updated", _time(record.updated_at)),
        ("eta", _time(record.eta)),
        ("error", (record.error or "").strip() or "-"),
        ("headers", ", ".join(f"{k}={v}" for k, v in sorted(record.headers.items())) or "-"),
    ]


def _history(events: Sequence[TaskEvent]) -> None:
    if any(e.eta is not None for e in events):  # a column for when retries / delayed tasks were due
        _table(["AT (UTC)", "STATUS", "ATTEMPT", "QUEUE", "DUE (UTC)", "ERROR"],
               [[_time(e.at), e.status.value, str(e.attempt), e.queue, _time(e.eta) if e.eta else "",
                 _short(e.error)] for e in events],
               right={2})
        return
    _table(["AT (UTC)", "STATUS", "ATTEMPT", "QUEUE", "ERROR"],
           [[_time(e.at), e.status.value, str(e.attempt), e.queue, _short(e.error)] for e in events],
           right={2})


def _pairs(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        lines = value.splitlines() or [""]
        print(f"{key.ljust(width)}  {lines[0]}")
        for more in lines[1:]:
            print(f"{' ' * width}  {more}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None) -> None:
    """Print aligned columns, two spaces apart; columns in ``right`` are right-aligned."""
    right = right or set()
    cells = [[_cell(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        pairs = enumerate(zip(row, widths, strict=True))
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs]
        print("  ".join(out).rstrip())


def _cell(text: str) -> str:
    # one line per row, whatever the task put in its type or queue
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
