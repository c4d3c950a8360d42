"""``nova dashboard``: serve the dashboard over a task recorder's records.

    nova dashboard --recorder chdb:///var/lib/nova/records
    nova dashboard --recorder https://nova:pw@ch.example:8443/ops --broker kafka://k1:9092 --topic-prefix myapp
    nova dashboard --recorder ... --host 0.0.0.0 --port 8080 --auth admin:s3cret --read-only

This module imports nothing optional until the command runs, so ``nova --help`` works
without the ``dashboard`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from nova._cli_tasks import non_negative_int, recorder_url
from nova._errors import ConfigurationError, NovaError

__all__ = ["add_dashboard_parser", "run_dashboard"]

EXTRA_HINT = "pip install 'nova-taskqueue[dashboard]'"

_DESCRIPTION = """\
Serve a web page over the task records: per-queue counts now, completed and failed
tasks per minute, wait and duration percentiles, the oldest waiting task; a task list
with filters and id search; each task's timeline, headers and payload; dead letters
and failures with "run again" (with --broker) and "delete record". The same data is
served as JSON under /api/ (overview, tasks, tasks/ID, failures, meta).

Safety: it listens on 127.0.0.1 unless given --auth (another address without --auth
is refused); every action is a POST with a CSRF token; --read-only offers no action.
On chDB the dashboard opens the records directory itself: chDB opens a directory in
one process at a time, so run it when no worker records there (or record to a
ClickHouse server, which any number of processes share)."""

_EPILOG = """\
examples:
  nova demo --recorder chdb:///tmp/nova-demo && nova dashboard --recorder chdb:///tmp/nova-demo
  nova dashboard --recorder http://nova:pw@127.0.0.1:8123/ops --broker kafka://127.0.0.1:9092 --topic-prefix myapp
  NOVA_DASHBOARD_AUTH=admin:s3cret nova dashboard --recorder ... --host 0.0.0.0 --read-only"""


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError("must be between 1 and 65535")
    return value


def add_dashboard_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dashboard`` to the ``nova`` command."""
    parser = subparsers.add_parser(
        "dashboard", help="serve a web dashboard over the task records",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recorder", metavar="URL",
                        help="task records: chdb:///path or http(s)://user:pass@host:port/db "
                             "(default: $NOVA_RECORDER)")
    parser.add_argument("--table", default="nova_task_records", help="recorder table (default: nova_task_records)")
    parser.add_argument("--broker", metavar="URL",
                        help="broker your workers consume (kafka://, amqp://, rocketmq://): enables 'run again', "
                             "which re-enqueues a failed task there (default: no 'run again')")
    parser.add_argument("--topic-prefix", default=None, metavar="PREFIX",
                        help="the topic_prefix your TaskQueues use, for 'run again' (default: nova, or the "
                             "broker URL's topic_prefix)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; any other needs --auth)")
    parser.add_argument("--port", type=_port, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument("--read-only", action="store_true", help="offer no action: no 'run again', no 'delete'")
    parser.add_argument("--auth", metavar="USER:PASSWORD",
                        help="require HTTP Basic auth with this user and password on every request "
                             "(default: $NOVA_DASHBOARD_AUTH; needed to listen on a non-loopback address)")
    parser.add_argument("--refresh", type=non_negative_int, default=10, metavar="SECONDS",
                        help="overview refresh interval (default: 10; 0: never)")


def run_dashboard(args: argparse.Namespace) -> int:
    """Run ``nova dashboard``; returns the exit status (2: bad arguments, 1: the records cannot be read)."""
    url = recorder_url(args.recorder, "dashboard")
    if url is None:
        return 2
    try:
        import uvicorn

        from nova.dashboard._app import create_app
        from nova.dashboard._security import BasicAuth, check_bind, is_loopback
    except ImportError as exc:
        print(f"nova dashboard needs its extra ({exc.name} is missing): {EXTRA_HINT}", file=sys.stderr)
        return 2
    from nova._clickhouse import ClickHouseTaskRecorder

    auth_text = args.auth or os.environ.get("NOVA_DASHBOARD_AUTH")
    try:
        auth = BasicAuth.parse(auth_text) if auth_text else None
        check_bind(args.host, args.port, auth)
        recorder = ClickHouseTaskRecorder.from_url(url, args.table)
        queue = _queue(args.broker, args.topic_prefix) if args.broker and not args.read_only else None
    except (NovaError, ImportError) as exc:
        print(f"nova dashboard: {exc}", file=sys.stderr)
        return 2
    try:
        tasks = asyncio.run(_probe(recorder))
    except NovaError as exc:
        hint = ""
        if url.startswith("chdb:"):
            hint = (" (chDB opens a directory in one process at a time: if a worker is recording there now, "
                    "stop it first, or record to a ClickHouse server)")
        print(f"nova dashboard: cannot read the task records: {exc}{hint}", file=sys.stderr)
        return 1

    async def close() -> None:
        if queue is not None:
            await queue.stop()
        await recorder.close()

    source = _describe(recorder)
    app = create_app(recorder, queue=queue, read_only=args.read_only, auth=auth,
                     loopback_only_hosts=is_loopback(args.host), refresh_seconds=args.refresh,
                     source=source, on_shutdown=[close])
    shown = f"[{args.host}]" if ":" in args.host else args.host
    mode = "read-only" if args.read_only else ("run again: on" if queue is not None else "run again: needs --broker")
    print(f"nova dashboard on http://{shown}:{args.port}/ over {source} ({tasks} tasks; {mode}); Ctrl-C stops it",
          flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            server_header=False, proxy_headers=False, lifespan="on")
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops gracefully, then raises the signal again
        uvicorn.Server(config).run()
    return 0


async def _probe(recorder: Any) -> int:
    rows = await recorder.select("SELECT uniqExact(task_id) FROM {table}")
    return int(rows[0][0])


def _queue(url: str, topic_prefix: str | None) -> Any:
    if url.startswith("sim:"):
        raise ConfigurationError("--broker sim:// is an in-memory broker inside the dashboard's own process: no worker "
                        "would ever see a task run again there; give the broker your workers consume")
    from nova._queue import TaskQueue

    options = {"topic_prefix": topic_prefix} if topic_prefix else {}
    return TaskQueue.from_url(url, **options)


def _describe(recorder: Any) -> str:
    """The records' location for the page header (never a password)."""
    text = repr(recorder)
    return text.removeprefix("ClickHouseTaskRecorder(").rsplit(", store_payload", 1)[0]
